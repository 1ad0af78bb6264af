"""Checkpoints: how many input records are done, and where the outputs stood at that moment."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from llm_etl_provider.worker.exceptions import ConfigurationError

CHECKPOINT_VERSION = 1


@dataclass
class CheckpointState:
    """The state a restarted worker resumes from.

    :param records_done: input records (malformed ones included) fully written, in input order
    :param sink: the output sink's position after those records
    :param counts: the run's counters at that point
    """

    records_done: int
    sink: dict[str, Any]
    counts: dict[str, Any] = field(default_factory=dict)


class Checkpoint:
    """A checkpoint file, written atomically (temp file, fsync, rename), bound to one input and task.

    :param path: the checkpoint file
    :param fingerprint: what identifies the run (input and task); a checkpoint of another run is refused
    """

    def __init__(self, path: Path, fingerprint: dict[str, Any]) -> None:
        self.path = path
        self.fingerprint = fingerprint

    def load(self) -> CheckpointState | None:
        """Return the saved state, or None when there is no checkpoint yet."""
        try:
            text = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ConfigurationError(
                f"checkpoint {self.path} cannot be read ({exc}); delete it to start the run over"
            ) from None
        return self.parse(text, f"checkpoint {self.path}")

    def parse(self, text: bytes, where: str) -> CheckpointState:
        """The state in a saved checkpoint; ConfigurationError if it is not this run's."""
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ConfigurationError(
                f"{where} cannot be read ({exc}); delete it to start the run over"
            ) from None
        if (
            not isinstance(data, dict)
            or data.get("version") != CHECKPOINT_VERSION
            or data.get("fingerprint") != self.fingerprint
        ):
            raise ConfigurationError(
                f"{where} belongs to another input, task or version; "
                "delete it to start over, or give this run its own --checkpoint path"
            )
        try:
            return CheckpointState(**data["state"])
        except (KeyError, TypeError):
            raise ConfigurationError(f"{where} is incomplete; delete it to start over") from None

    def serialize(self, state: CheckpointState) -> bytes:
        """The saved form of ``state``, which :meth:`parse` reads back."""
        payload = {"version": CHECKPOINT_VERSION, "fingerprint": self.fingerprint, "state": asdict(state)}
        return json.dumps(payload).encode()

    def save(self, state: CheckpointState) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(self.path.name + ".tmp")
        with temporary.open("wb") as handle:
            handle.write(self.serialize(state))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, self.path)
        directory = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


def run_fingerprint(input_path: Path, task_fingerprint: str, id_field: str) -> dict[str, Any]:
    """Identify a run by its input's content (size, first MiB) and task: a checkpoint fits only its run.

    Not by the input's path: a pod's Secret files resolve to a folder named after the moment they were
    mounted, so the same shard has another real path in the retry's pod.
    """
    with input_path.open("rb") as handle:
        head = hashlib.sha256(handle.read(1 << 20)).hexdigest()
    return {
        "input_size": input_path.stat().st_size,
        "input_head_sha256": head,
        "task": task_fingerprint,
        "id_field": id_field,
    }
