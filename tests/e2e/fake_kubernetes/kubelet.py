"""A kubelet that runs a pod's containers as local processes.

What it does as a kubelet does: init containers in order, each to completion; native sidecars (init
containers with ``restartPolicy: Always``) started and gated on their startupProbe, restarted when they
exit; the regular containers after that; sidecars stopped once the regular containers end; the pod's
phase, conditions, container states (exit codes, reasons, times), events and ``activeDeadlineSeconds``;
graceful deletion (SIGTERM, grace period, SIGKILL). Logs are written per container in the CRI format
(``<RFC3339Nano> <stream> F <line>``), stdout and stderr interleaved as they arrive.

What it maps, because a pod here has neither images nor its own filesystem and network namespace:
``command[0]`` to a local program (an unknown one is an image that cannot be pulled), every volume to a
folder of its own (Secret volumes hold the Secret's keys as files, mode as given; PVCs and image volumes
come from the cluster's configuration), mount paths in arguments and environment values to those
folders, and each loopback port the pod uses to a free port of its own so that pods can run side by side.
Not faked: liveness and readiness probes after startup, restarting a sidecar that exits after it started,
restart policies other than ``Never`` for regular containers, resources and security contexts.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import httpx

from tests.e2e.fake_kubernetes.store import ApiError, Store, rfc3339, rfc3339_nano

LOOPBACK_PORT = re.compile(r"(?P<host>127\.0\.0\.1|localhost|\[::1\]):(?P<port>\d+)")


@dataclass
class KubeletConfig:
    """How the fake node turns containers and volumes into local things."""

    root: Path
    commands: dict[str, list[str]]
    claims: dict[str, Path] = field(default_factory=dict)
    image_volumes: dict[str, Path] = field(default_factory=dict)
    max_grace_seconds: float = 10.0
    max_log_bytes: int | None = None  # rotate a container's log past this size, as containerLogMaxSize does


class PodStopped(Exception):
    """The pod was deleted or ran past its deadline: stop working on it."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _pod_strings(pod: dict[str, Any]) -> Iterable[str]:
    for container in pod["spec"].get("initContainers", []) + pod["spec"]["containers"]:
        yield from container.get("command", [])
        yield from container.get("args", [])
        yield from (env.get("value", "") for env in container.get("env", []))
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            yield from container.get(probe, {}).get("exec", {}).get("command", [])


def loopback_ports(pod: dict[str, Any]) -> set[int]:
    """The loopback ports a pod's containers talk on: ``127.0.0.1:N`` anywhere, or ``--port N``."""
    ports: set[int] = set()
    previous = ""
    for value in _pod_strings(pod):
        ports.update(int(m["port"]) for m in LOOPBACK_PORT.finditer(value))
        if previous == "--port" and value.isdigit():
            ports.add(int(value))
        previous = value
    for container in pod["spec"].get("initContainers", []) + pod["spec"]["containers"]:
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            spec = container.get(probe, {})
            for action in ("httpGet", "tcpSocket"):
                if isinstance(spec.get(action, {}).get("port"), int):
                    ports.add(spec[action]["port"])
    return ports


class ContainerProcess:
    """One running container: its process and the threads that copy its output into its log."""

    def __init__(
        self,
        argv: list[str],
        env: dict[str, str],
        cwd: Path,
        log_path: Path,
        max_log_bytes: int | None = None,
    ) -> None:
        self.log_path = log_path
        self.max_log_bytes = max_log_bytes
        self.rotations = 0
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = log_path.open("ab", buffering=0)
        self._lock = threading.Lock()
        self.started_at = datetime.now(UTC)
        self.finished_at: datetime | None = None
        self.process = subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        self._readers = [
            threading.Thread(target=self._copy, args=(stream, name), daemon=True)
            for stream, name in ((self.process.stdout, "stdout"), (self.process.stderr, "stderr"))
        ]
        for reader in self._readers:
            reader.start()

    def _copy(self, stream: IO[bytes] | None, name: str) -> None:
        assert stream is not None
        for line in iter(stream.readline, b""):
            stamp = rfc3339_nano(datetime.now(UTC)).encode()
            tag = b"F" if line.endswith(b"\n") else b"P"
            with self._lock:
                self._log.write(b"%s %s %s %s\n" % (stamp, name.encode(), tag, line.rstrip(b"\n")))
                if self.max_log_bytes is not None and self._log.tell() > self.max_log_bytes:
                    self._rotate()
        stream.close()

    def _rotate(self) -> None:
        """Keep one rotated file, as the kubelet does by default; the API serves the current one only."""
        self._log.close()
        self.log_path.replace(self.log_path.with_name(self.log_path.name + ".1"))
        self._log = self.log_path.open("ab", buffering=0)
        self.rotations += 1

    def wait(self, timeout: float | None = None) -> int | None:
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        for reader in self._readers:
            reader.join()
        if self.finished_at is None:
            self.finished_at = datetime.now(UTC)
            self._log.close()
        return code

    def stop(self, grace: float) -> int:
        """SIGTERM, then SIGKILL after ``grace`` seconds, to the container's whole process group."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            if self.wait(grace) is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
        code = self.wait()
        assert code is not None
        return code


class PodRunner(threading.Thread):
    """Drives one pod from scheduling to a terminal phase, and tears it down on deletion."""

    def __init__(
        self,
        store: Store,
        pod: dict[str, Any],
        config: KubeletConfig,
        on_removed: Callable[[PodRunner], None],
    ) -> None:
        meta = pod["metadata"]
        super().__init__(name=f"kubelet-{meta['name']}", daemon=True)
        self.store = store
        self.config = config
        self.namespace = meta["namespace"]
        self.name = meta["name"]
        self.spec = pod["spec"]
        self.pod_dir = config.root / meta["uid"]
        self.ports = {port: _free_port() for port in loopback_ports(pod)}
        self.processes: dict[str, ContainerProcess] = {}
        self.deleting = threading.Event()
        self._removal = threading.Lock()  # a delete and the runner's end may meet: one of them removes
        self._ended = False
        self.started = time.monotonic()
        self.on_removed = on_removed

    # -- status ------------------------------------------------------------------------------------------

    def _update(self, change: Callable[[dict[str, Any]], None]) -> None:
        try:
            self.store.update("pods", self.namespace, self.name, change)
        except ApiError:
            raise PodStopped from None

    def _set_container(self, name: str, state: dict[str, Any], **fields: Any) -> None:
        def change(pod: dict[str, Any]) -> None:
            for key in ("initContainerStatuses", "containerStatuses"):
                for status in pod["status"].get(key, []):
                    if status["name"] == name:
                        status["state"] = state
                        status.update(fields)

        self._update(change)

    def _set_condition(self, pod: dict[str, Any], kind: str, value: bool, reason: str | None = None) -> None:
        conditions = [c for c in pod["status"].setdefault("conditions", []) if c["type"] != kind]
        condition = {"type": kind, "status": str(value), "lastTransitionTime": rfc3339()}
        if reason:
            condition["reason"] = reason
        pod["status"]["conditions"] = conditions + [condition]

    def _event(self, reason: str, message: str, kind: str = "Normal") -> None:
        try:
            pod = self.store.get("pods", self.namespace, self.name)
        except ApiError:
            raise PodStopped from None
        self.store.record_event(pod, reason, message, kind)

    def _check(self) -> None:
        if self.deleting.is_set():
            raise PodStopped
        deadline = self.spec.get("activeDeadlineSeconds")
        if deadline is not None and time.monotonic() - self.started > deadline:
            self._fail_deadline()

    # -- the pod's life ----------------------------------------------------------------------------------

    def run(self) -> None:
        try:
            self._schedule()
            self._prepare_volumes()
            if self._run_init_containers():
                self._run_containers()
        except PodStopped:
            pass
        except Exception as exc:  # the fake must say what went wrong, not hang the test
            self._stop_all(0)
            with contextlib.suppress(PodStopped):
                self._finish("Failed", reason="KubeletError", message=f"fake kubelet: {exc!r}")
        finally:
            self._stop_all(self._grace())
            with self._removal:
                self._ended = True
                if self.deleting.is_set():
                    self._remove()

    def _grace(self) -> float:
        return min(float(self.spec.get("terminationGracePeriodSeconds", 30)), self.config.max_grace_seconds)

    def _schedule(self) -> None:
        def change(pod: dict[str, Any]) -> None:
            waiting = {"waiting": {"reason": "PodInitializing"}}
            pod["spec"]["nodeName"] = "fake-node"
            pod["status"] = {
                "phase": "Pending",
                "hostIP": "127.0.0.1",
                "podIP": "127.0.0.1",
                "startTime": rfc3339(),
                "qosClass": "Burstable",
                "initContainerStatuses": [
                    self._status(c, waiting) for c in self.spec.get("initContainers", [])
                ],
                "containerStatuses": [self._status(c, waiting) for c in self.spec["containers"]],
            }
            self._set_condition(pod, "PodScheduled", True)
            self._set_condition(pod, "Initialized", False, "ContainersNotInitialized")
            self._set_condition(pod, "Ready", False, "ContainersNotReady")
            self._set_condition(pod, "ContainersReady", False, "ContainersNotReady")

        self._update(change)
        self._event("Scheduled", f"Successfully assigned {self.namespace}/{self.name} to fake-node")

    @staticmethod
    def _status(container: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
        return {
            "name": container["name"],
            "image": container.get("image", ""),
            "imageID": "",
            "ready": False,
            "started": False,
            "restartCount": 0,
            "state": state,
            "lastState": {},
        }

    def _prepare_volumes(self) -> None:
        self.volumes: dict[str, Path] = {}
        for volume in self.spec.get("volumes", []):
            name = volume["name"]
            if "emptyDir" in volume:
                path = self.pod_dir / "volumes" / name
                path.mkdir(parents=True)
            elif "secret" in volume:
                path = self.pod_dir / "volumes" / name
                path.mkdir(parents=True)
                self._mount_secret(volume["secret"], path)
            elif "persistentVolumeClaim" in volume:
                path = self._claim(volume["persistentVolumeClaim"]["claimName"])
            elif "image" in volume:
                reference = volume["image"]["reference"]
                path = self._configured(self.config.image_volumes, reference, "image")
            else:
                raise ValueError(f"volume {name}: only emptyDir, secret, PVC and image volumes are faked")
            self.volumes[name] = path

    def _claim(self, name: str) -> Path:
        """A claim from the cluster's configuration (a pre-filled volume), or one created through the API."""
        while name not in self.config.claims:
            try:
                self.store.get("persistentvolumeclaims", self.namespace, name)
            except ApiError:
                self._event("FailedMount", f'persistentvolumeclaim "{name}" not found', "Warning")
                self._wait(2)
                continue
            path = claim_dir(self.config.root, self.namespace, name)
            path.mkdir(parents=True, exist_ok=True)
            return path
        return self.config.claims[name]

    def _configured(self, table: dict[str, Path], key: str, what: str) -> Path:
        while key not in table:
            self._event("FailedMount", f'{what} "{key}" not found', "Warning")
            self._wait(5)
        return table[key]

    def _mount_secret(self, source: dict[str, Any], path: Path) -> None:
        name = source["secretName"]
        while True:
            try:
                secret = self.store.get("secrets", self.namespace, name)
                break
            except ApiError:
                if source.get("optional"):
                    return
                self._event("FailedMount", f'MountVolume.SetUp failed: secret "{name}" not found', "Warning")
                self._wait(2)
        mode = source.get("defaultMode", 0o644)
        for key, value in (secret.get("data") or {}).items():
            file = path / key
            file.write_bytes(base64.b64decode(value))
            file.chmod(mode)
        for key, value in (secret.get("stringData") or {}).items():
            (path / key).write_text(value)
            (path / key).chmod(mode)

    def _wait(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self._check()
            self.deleting.wait(min(0.2, end - time.monotonic()))
        self._check()

    def _run_init_containers(self) -> bool:
        for container in self.spec.get("initContainers", []):
            if container.get("restartPolicy") == "Always":
                self._start_sidecar(container)
                continue
            process = self._start(container)
            if process is None:
                return False
            code = self._await_exit(container["name"], process)
            if code != 0:
                self._finish("Failed", message=f"init container {container['name']} exited with {code}")
                return False

        self._update(lambda pod: self._set_condition(pod, "Initialized", True))
        return True

    def _run_containers(self) -> None:
        def running(pod: dict[str, Any]) -> None:
            pod["status"]["phase"] = "Running"

        started: list[tuple[str, ContainerProcess]] = []
        for container in self.spec["containers"]:
            process = self._start(container, ready=True)
            if process is None:
                return
            if not started:  # as a kubelet: Running once a main container runs, so its log can be read
                self._update(running)
            started.append((container["name"], process))

        def ready(pod: dict[str, Any]) -> None:
            self._set_condition(pod, "ContainersReady", True)
            self._set_condition(pod, "Ready", True)

        self._update(ready)
        codes = [self._await_exit(name, process) for name, process in started]
        self._stop_sidecars()
        failed = any(code != 0 for code in codes)
        self._finish("Failed" if failed else "Succeeded")

    def _start(self, container: dict[str, Any], *, ready: bool = False) -> ContainerProcess | None:
        """Start a container; leave it waiting (an unpullable image) when its program is unknown."""
        self._check()
        name = container["name"]
        command = container.get("command") or []
        if not command or command[0] not in self.config.commands:
            message = f"the fake node has no program for {command!r}"
            self._set_container(name, {"waiting": {"reason": "ErrImageNeverPull", "message": message}})
            self._event("ErrImageNeverPull", message, "Warning")
            self._wait(3600 * 24)  # like a kubelet: stay Pending until deleted or past the deadline
            return None
        mounts = self._mounts(container)
        argv = self.config.commands[command[0]] + [
            self._map(a, mounts) for a in command[1:] + container.get("args", [])
        ]
        root = self.pod_dir / "containers" / name
        root.mkdir(parents=True, exist_ok=True)
        process = ContainerProcess(
            argv, self._environment(container, mounts), root, self.log_path(name), self.config.max_log_bytes
        )
        self.processes[name] = process
        self._set_container(
            name, {"running": {"startedAt": rfc3339(process.started_at)}}, started=True, ready=ready
        )
        self._event("Started", f"Started container {name}")
        return process

    def _await_exit(self, name: str, process: ContainerProcess) -> int:
        while (code := process.wait(0.2)) is None:
            self._check()
        self._terminated(name, process, code)
        return code

    def _terminated(self, name: str, process: ContainerProcess, code: int, reason: str | None = None) -> None:
        assert process.finished_at is not None
        state = {
            "terminated": {
                "exitCode": code,
                "reason": reason or ("Completed" if code == 0 else "Error"),
                "startedAt": rfc3339(process.started_at),
                "finishedAt": rfc3339(process.finished_at),
            }
        }
        self._set_container(name, state, ready=False, started=False)

    def _start_sidecar(self, container: dict[str, Any]) -> None:
        """Start a native sidecar and wait for its startupProbe; restart it while it fails (Always)."""
        name = container["name"]
        probe = container.get("startupProbe")
        restarts = 0
        while True:
            process = self._start(container)
            if process is None:
                raise PodStopped
            if probe is None or self._probe_until_started(container, probe, process):
                self._set_container(name, {"running": {"startedAt": rfc3339(process.started_at)}},
                                    started=True, ready=True)  # fmt: skip
                return
            code = process.stop(self._grace())
            restarts += 1
            self._set_container(
                name,
                {"waiting": {"reason": "CrashLoopBackOff", "message": f"exited with {code}"}},
                restartCount=restarts,
            )
            self._event("BackOff", f"Back-off restarting failed container {name}", "Warning")
            self._wait(min(10 * restarts, 300))

    def _probe_until_started(
        self, container: dict[str, Any], probe: dict[str, Any], process: ContainerProcess
    ) -> bool:
        self._wait(probe.get("initialDelaySeconds", 0))
        failures = 0
        while failures < probe.get("failureThreshold", 3):
            if process.process.poll() is not None:
                return False
            if self._probe(container, probe):
                return True
            failures += 1
            self._wait(probe.get("periodSeconds", 10))
        self._event("Unhealthy", f"Startup probe failed for {container['name']}", "Warning")
        return False

    def _probe(self, container: dict[str, Any], probe: dict[str, Any]) -> bool:
        timeout = probe.get("timeoutSeconds", 1)
        if "exec" in probe:
            command = [self._map(a, self._mounts(container)) for a in probe["exec"]["command"]]
            try:
                run = subprocess.run(command, capture_output=True, timeout=timeout, check=False)
            except (subprocess.TimeoutExpired, FileNotFoundError):
                return False
            return run.returncode == 0
        if "httpGet" in probe:
            action = probe["httpGet"]
            url = (
                f"http://127.0.0.1:{self.ports.get(action['port'], action['port'])}{action.get('path', '/')}"
            )
            try:
                return httpx.get(url, timeout=timeout).status_code < 400
            except httpx.HTTPError:
                return False
        if "tcpSocket" in probe:
            port = probe["tcpSocket"]["port"]
            try:
                socket.create_connection(("127.0.0.1", self.ports.get(port, port)), timeout).close()
            except OSError:
                return False
            return True
        raise ValueError(f"container {container['name']}: unsupported probe {sorted(probe)}")

    def _stop_sidecars(self) -> None:
        for container in reversed(self.spec.get("initContainers", [])):
            process = self.processes.get(container["name"])
            if container.get("restartPolicy") == "Always" and process is not None:
                self._event("Killing", f"Stopping container {container['name']}")
                code = process.stop(self._grace())
                self._terminated(container["name"], process, code)

    def _stop_all(self, grace: float) -> None:
        # as a kubelet: the main containers first, then the sidecars in reverse order of their start
        for process in reversed(list(self.processes.values())):
            process.stop(grace)

    def _finish(self, phase: str, reason: str | None = None, message: str | None = None) -> None:
        def change(pod: dict[str, Any]) -> None:
            pod["status"]["phase"] = phase
            if reason:
                pod["status"]["reason"] = reason
            if message:
                pod["status"]["message"] = message
            self._set_condition(pod, "Ready", False, "PodCompleted")
            self._set_condition(pod, "ContainersReady", False, "PodCompleted")

        self._update(change)

    def _fail_deadline(self) -> None:
        self._event(
            "DeadlineExceeded", "Pod was active on the node longer than the specified deadline", "Warning"
        )
        self._stop_all(self._grace())
        for name, process in self.processes.items():
            code = process.wait()
            assert code is not None
            self._terminated(name, process, code, reason="DeadlineExceeded")
        self._finish(
            "Failed",
            reason="DeadlineExceeded",
            message="Pod was active on the node longer than the specified deadline",
        )
        raise PodStopped

    # -- mapping a container onto this machine -------------------------------------------------------

    def _mounts(self, container: dict[str, Any]) -> list[tuple[str, Path]]:
        mounts = [
            (m["mountPath"].rstrip("/"), self.volumes[m["name"]] / m.get("subPath", ""))
            for m in container.get("volumeMounts", [])
        ]
        return sorted(mounts, key=lambda m: len(m[0]), reverse=True)

    def _map(self, value: str, mounts: list[tuple[str, Path]]) -> str:
        """A container's path or loopback address as this machine sees it."""
        value = LOOPBACK_PORT.sub(lambda m: f"{m['host']}:{self.ports.get(int(m['port']), m['port'])}", value)
        if value.isdigit() and int(value) in self.ports:
            return str(self.ports[int(value)])
        prefix, sep, path = value.partition("=") if value.startswith("--") else ("", "", value)
        for mount_path, host in mounts:
            if path == mount_path or path.startswith(mount_path + "/"):
                return f"{prefix}{sep}{host}{path[len(mount_path) :]}"
        return value

    def _environment(self, container: dict[str, Any], mounts: list[tuple[str, Path]]) -> dict[str, str]:
        env = {"PATH": os.environ["PATH"], "LANG": "C.UTF-8"}
        for item in container.get("env", []):
            if "value" in item:
                env[item["name"]] = self._map(item["value"], mounts)
            elif "secretKeyRef" in item.get("valueFrom", {}):
                ref = item["valueFrom"]["secretKeyRef"]
                try:
                    data = self.store.get("secrets", self.namespace, ref["name"]).get("data") or {}
                    env[item["name"]] = base64.b64decode(data[ref["key"]]).decode()
                except (ApiError, KeyError):
                    if not ref.get("optional"):
                        raise ValueError(
                            f"container {container['name']}: secret {ref['name']} key {ref['key']} not found"
                        ) from None
            elif "fieldRef" in item.get("valueFrom", {}):
                path = item["valueFrom"]["fieldRef"]["fieldPath"]
                env[item["name"]] = {"metadata.name": self.name, "metadata.namespace": self.namespace}[path]
        return env

    # -- deletion ------------------------------------------------------------------------------------

    def delete(self) -> None:
        """Graceful deletion: stop the containers (the runner thread does), then remove the pod."""
        with self._removal:
            self.deleting.set()
            if self._ended:
                self._remove()

    def _remove(self) -> None:
        self.on_removed(self)
        shutil.rmtree(self.pod_dir, ignore_errors=True)
        with contextlib.suppress(ApiError):
            self.store.delete("pods", self.namespace, self.name)

    def log_path(self, container: str) -> Path:
        return Path(self.pod_dir, "logs", f"{container}.log")

    def container_done(self, container: str) -> bool:
        process = self.processes.get(container)
        return process is None or process.finished_at is not None


def claim_dir(root: Path, namespace: str, name: str) -> Path:
    return root / "claims" / namespace / name


class Kubelet:
    """The node: one :class:`PodRunner` per pod created through the API."""

    def __init__(self, store: Store, config: KubeletConfig) -> None:
        self.store = store
        self.config = config
        self.pods: dict[tuple[str, str], PodRunner] = {}
        self._lock = threading.Lock()
        store.on_pod_created = self.admit

    def admit(self, pod: dict[str, Any]) -> None:
        runner = PodRunner(self.store, pod, self.config, self._forget)
        with self._lock:
            self.pods[(runner.namespace, runner.name)] = runner
        runner.start()

    def _forget(self, runner: PodRunner) -> None:
        with self._lock:
            self.pods.pop((runner.namespace, runner.name), None)

    def runner(self, namespace: str, name: str) -> PodRunner | None:
        with self._lock:
            return self.pods.get((namespace, name))

    def delete(self, namespace: str, name: str) -> None:
        runner = self.runner(namespace, name)
        if runner is None:
            self.store.delete("pods", namespace, name)
            return
        runner.delete()

    def release_claim(self, namespace: str, name: str) -> None:
        """A deleted claim's volume goes with it."""
        shutil.rmtree(claim_dir(self.config.root, namespace, name), ignore_errors=True)

    def running_processes(self) -> list[str]:
        """Containers whose process is still alive, as ``pod/container``."""
        with self._lock:
            runners = list(self.pods.values())
        return [
            f"{runner.name}/{name}"
            for runner in runners
            for name, process in list(runner.processes.items())  # the runner's thread adds to it
            if process.process.poll() is None
        ]

    def shutdown(self) -> None:
        with self._lock:
            runners = list(self.pods.values())
        for runner in runners:
            runner.deleting.set()
        for runner in runners:
            runner.join(timeout=self.config.max_grace_seconds + 5)
