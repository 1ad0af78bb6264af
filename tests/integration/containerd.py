"""A private containerd (Debian's, with runc) for the image tests: its own root, state and socket under a test
folder, images loaded from OCI archives (no registry), containers run with ``ctr`` on the host's network and a
read-only root filesystem, as the pod's security context asks."""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from llm_etl_dev.cluster.real_node import load_images, remove_empty_cgroups, stop_containers
from llm_etl_provider.processes import stop_process

NAMESPACE = "llm-etl-test"


@dataclass
class Containerd:
    socket: Path
    logs_dir: Path

    def ctr(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            ["ctr", "--address", str(self.socket), "--namespace", NAMESPACE, *args],
            capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip
        if check and done.returncode != 0:
            raise RuntimeError(f"ctr {' '.join(args[:3])} failed: {done.stderr[-2000:]}")
        return done

    def load(self, archive: Path) -> None:
        load_images(self.socket, [archive], NAMESPACE)

    def image(self, name: str) -> str:
        """The loaded image whose reference starts with ``name:``."""
        found = [ref for ref in self.ctr("images", "ls", "-q").stdout.split() if ref.startswith(f"{name}:")]
        if len(found) != 1:
            raise LookupError(f"{len(found)} images named {name}")
        return found[0]

    def _run_args(self, mounts: Mapping[str, Path]) -> list[str]:
        args = ["--net-host", "--read-only", "--mount", "type=tmpfs,src=tmpfs,dst=/tmp,options=mode=1777"]
        for destination, source in mounts.items():
            args += ["--mount", f"type=bind,src={source},dst={destination},options=rbind:ro"]
        return args

    def start(self, name: str, image: str, args: list[str], read_only_mounts: Mapping[str, Path]) -> str:
        """Start a container in the background; its output goes to a log file (:meth:`logs`)."""
        log = self.logs_dir / f"{name}.log"
        options = ["-d", "--log-uri", f"file://{log}", *self._run_args(read_only_mounts)]
        self.ctr("run", *options, self.image(image), name, *args)
        return name

    def run(
        self, name: str, image: str, args: list[str], read_only_mounts: Mapping[str, Path]
    ) -> subprocess.CompletedProcess[str]:
        """Run a container to its end; its exit code, stdout and stderr."""
        return self.ctr(
            "run", "--rm", *self._run_args(read_only_mounts), self.image(image), name, *args, check=False
        )

    def running(self, name: str) -> bool:
        listed = self.ctr("tasks", "ls").stdout.splitlines()[1:]
        return any(line.split()[0] == name and "RUNNING" in line for line in listed if line.split())

    def logs(self, name: str) -> str:
        path = self.logs_dir / f"{name}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""


@contextlib.contextmanager
def running_containerd(folder: Path) -> Iterator[Containerd]:
    """containerd with its root, state and socket in ``folder`` (CRI off: ``ctr`` only), stopped on exit with
    every container it ran."""
    config = folder / "config.toml"
    config.write_text(
        "version = 2\n"
        f'root = "{folder / "root"}"\n'
        f'state = "{folder / "state"}"\n'
        'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
        f'[grpc]\n  address = "{folder / "containerd.sock"}"\n'
    )
    logs = folder / "logs"
    logs.mkdir()
    with (logs / "containerd.log").open("wb") as log:
        process = subprocess.Popen(
            ["containerd", "--config", str(config)], stdout=log, stderr=subprocess.STDOUT
        )
    containerd = Containerd(folder / "containerd.sock", logs)
    try:
        deadline = time.monotonic() + 30
        while containerd.ctr("version", check=False).returncode != 0:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"containerd did not start: {(logs / 'containerd.log').read_text()[-2000:]}"
                )
            time.sleep(0.2)
        yield containerd
    finally:
        with contextlib.suppress(Exception):
            stop_containers(containerd.socket, NAMESPACE)
        stop_process(process, 20)
        remove_empty_cgroups(NAMESPACE)  # runc's, under each controller
