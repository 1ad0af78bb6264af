"""The pod's other command lines: what the pod builder writes is what ``llm-etl`` parses."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from llm_etl_provider.contract.pod_commands import (
    PROGRAM,
    add_pod_command_parsers,
    check_heartbeat_command,
    load_model_args,
    load_model_command,
)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROGRAM)
    add_pod_command_parsers(parser.add_subparsers(dest="command", required=True))
    assert argv[0] == PROGRAM
    return parser.parse_args(argv[1:])


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            load_model_args(url_file="/secrets/url", sha256="ab"),
            {"url_file": Path("/secrets/url"), "sha256": "ab"},
        ),
        (load_model_args(sha256="ab"), {"verify": True, "sha256": "ab", "url_file": None}),
        (load_model_args(), {"verify": True, "sha256": None}),
    ],
)
def test_the_model_loader_command_parses_back(args, expected):
    parsed = parse([*load_model_command("/models/m.gguf"), *args])
    assert parsed.command == "load-model"
    assert parsed.dest == Path("/models/m.gguf")
    assert {name: getattr(parsed, name) for name in expected} == expected


def test_the_heartbeat_probe_parses_back():
    parsed = parse(check_heartbeat_command("/work/heartbeat", 300))
    assert (parsed.command, parsed.file, parsed.max_age) == (
        "check-heartbeat",
        Path("/work/heartbeat"),
        300.0,
    )
