"""How the dev node runs one pod bound to it, as local processes.

What it does as a kubelet does: init containers in order, each to completion; native sidecars (init containers
with ``restartPolicy: Always``) gated on their startupProbe and restarted when they exit later; liveness
probes, a failing one restarts its container; the regular containers after that; sidecars stopped once the
regular containers end; the phase, conditions, container states (exit codes, reasons, restart counts, times)
and events; ``activeDeadlineSeconds``; graceful deletion (SIGTERM, the grace period, SIGKILL, then the final
delete). Logs are written per container and restart in the CRI format (``<RFC3339Nano> <stream> F <line>``),
so ``previous`` works.

What it maps, because a pod here has neither images nor a filesystem and network namespace of its own:
``command[0]`` to a local program (an unknown one is an image that cannot be pulled: the container waits),
every volume to a folder (Secret volumes hold the Secret's keys as files; a claim is a folder per
PersistentVolumeClaim, removed with it, or a folder the node is configured with; image volumes from the
configuration), mount paths in arguments and environment values to those folders, and each loopback port the
pod uses to a free port of its own, so that pods run side by side. Not enforced: resource limits, security
contexts, readiness after start-up.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import httpx

from llm_etl_provider.dev.cluster.api import ApiError, KubeApi, rfc3339, rfc3339_nano
from llm_etl_provider.dev.cluster.layout import (
    CONTAINER_VARIABLE,
    NODE_ADDRESS,
    NodeConfig,
    claim_dir,
    pod_dir,
    pod_volume_dir,
)
from llm_etl_provider.dev.llama_server import free_port

LOOPBACK_PORT = re.compile(r"(?P<host>127\.0\.0\.1|localhost|\[::1\]):(?P<port>\d+)")
FOREVER = 3600 * 24 * 365


class PodStopped(Exception):
    """The pod was deleted or ran past its deadline: stop working on it."""


def _all_containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return list(spec.get("initContainers", [])) + list(spec["containers"])


def _pod_strings(spec: dict[str, Any]) -> Iterable[str]:
    for container in _all_containers(spec):
        yield from container.get("command", [])
        yield from container.get("args", [])
        yield from (env.get("value", "") for env in container.get("env", []))
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            yield from container.get(probe, {}).get("exec", {}).get("command", [])


def loopback_ports(spec: dict[str, Any]) -> set[int]:
    """The loopback ports a pod's containers talk on: ``127.0.0.1:N`` anywhere, ``--port N``, probe ports."""
    ports: set[int] = set()
    previous = ""
    for value in _pod_strings(spec):
        ports.update(int(m["port"]) for m in LOOPBACK_PORT.finditer(value))
        if previous == "--port" and value.isdigit():
            ports.add(int(value))
        previous = value
    for container in _all_containers(spec):
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            for action in ("httpGet", "tcpSocket"):
                port = container.get(probe, {}).get(action, {}).get("port")
                if isinstance(port, int):
                    ports.add(port)
    return ports


class ContainerProcess:
    """One run of a container: its process and the threads that copy its output into its log."""

    def __init__(
        self, argv: list[str], env: dict[str, str], cwd: Path, log_path: Path, max_log_bytes: int | None
    ) -> None:
        self.log_path = log_path
        self.max_log_bytes = max_log_bytes
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

    @property
    def done(self) -> bool:
        return self.finished_at is not None

    def wait(self, timeout: float | None = None) -> int | None:
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        for reader in self._readers:
            reader.join()
        with self._lock:
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
    """Drives one pod bound to the node from start to a terminal phase, and tears it down on deletion."""

    def __init__(self, api: KubeApi, pod: dict[str, Any], config: NodeConfig) -> None:
        meta = pod["metadata"]
        super().__init__(name=f"node-{meta['name']}", daemon=True)
        self.api = api
        self.config = config
        self.namespace = meta["namespace"]
        self.name = meta["name"]
        self.uid = meta["uid"]
        self.spec = pod["spec"]
        self.path = f"/api/v1/namespaces/{self.namespace}/pods/{self.name}"
        self.pod_dir = pod_dir(config.root, self.uid)
        self.ports = {port: free_port() for port in loopback_ports(self.spec)}
        self.processes: dict[str, ContainerProcess] = {}
        self.restarts: dict[str, int] = {}
        self.volumes: dict[str, Path] = {}
        self.status: dict[str, Any] = {}
        self.deleting = threading.Event()
        self.grace = self._grace(self.spec.get("terminationGracePeriodSeconds", 30))
        self.removed = threading.Event()
        self.started = time.monotonic()
        self._status_lock = threading.Lock()
        self._push_lock = threading.Lock()
        self.stopping_sidecars = False
        self.abandoned = False  # the node is shutting down: leave the pod in the API

    def _grace(self, seconds: float) -> float:
        return min(float(seconds), self.config.max_grace_seconds)

    # -- status and events ---------------------------------------------------------------------------

    def _push(self) -> None:
        """Send the whole status. One push at a time, each with the status as it is when it is sent: two
        threads (the pod's and a sidecar's watcher) pushing side by side could otherwise land an older
        status after a newer one, and the API server accepts a terminal phase turned back to Running."""
        with self._push_lock:
            with self._status_lock:
                body = {"metadata": {"uid": self.uid}, "status": json.loads(json.dumps(self.status))}
            try:
                self.api.patch(self.path + "/status", body)
            except ApiError as exc:
                if exc.code in (404, 409):  # gone, or a pod of the same name that is not this one
                    raise PodStopped from None
                raise

    def _container_status(self, name: str) -> dict[str, Any]:
        for key in ("initContainerStatuses", "containerStatuses"):
            for status in self.status.get(key, []):
                if status["name"] == name:
                    return dict(status)
        raise KeyError(name)

    def _set_container(self, name: str, state: dict[str, Any], **fields: Any) -> None:
        with self._status_lock:
            for key in ("initContainerStatuses", "containerStatuses"):
                for status in self.status.get(key, []):
                    if status["name"] == name:
                        if "terminated" in status["state"] and "terminated" not in state:
                            status["lastState"] = status["state"]
                        status["state"] = state
                        status.update(fields)
        self._push()

    def _set_condition(self, kind: str, value: bool, reason: str | None = None) -> None:
        with self._status_lock:
            conditions = [c for c in self.status.setdefault("conditions", []) if c["type"] != kind]
            condition = {"type": kind, "status": str(value), "lastTransitionTime": rfc3339()}
            if reason:
                condition["reason"] = reason
            self.status["conditions"] = [*conditions, condition]

    def _event(self, reason: str, message: str, kind: str = "Normal") -> None:
        record_event(
            self.api,
            self.config.name,
            pod_reference({"metadata": {"namespace": self.namespace, "name": self.name, "uid": self.uid}}),
            reason,
            message,
            kind,
        )

    def _check(self) -> None:
        if self.deleting.is_set():
            raise PodStopped
        deadline = self.spec.get("activeDeadlineSeconds")
        if deadline is not None and time.monotonic() - self.started > deadline:
            self._fail_deadline()

    def _wait(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self._check()
            self.deleting.wait(min(0.2, max(0.0, end - time.monotonic())))
        self._check()

    # -- the pod's life ------------------------------------------------------------------------------

    def run(self) -> None:
        try:
            self._start_pod()
            self._prepare_volumes()
            if self._run_init_containers():
                self._run_containers()
        except PodStopped:
            pass
        except Exception as exc:  # noqa: BLE001 - the node must say what went wrong, not leave the pod Pending
            print(f"dev node: pod {self.namespace}/{self.name}: {exc!r}", flush=True)
            self._stop_all(0)
            with contextlib.suppress(PodStopped, ApiError, httpx.HTTPError):
                self._finish("Failed", reason="NodeAgentError", message=f"llm-etl dev node: {exc!r}")
        finally:
            self._stop_all(self.grace)
            self.deleting.wait()
            self._remove()

    def _start_pod(self) -> None:
        waiting = {"waiting": {"reason": "PodInitializing"}}
        self.status = {
            "phase": "Pending",
            "hostIP": NODE_ADDRESS,
            "hostIPs": [{"ip": NODE_ADDRESS}],
            "podIP": NODE_ADDRESS,
            "podIPs": [{"ip": NODE_ADDRESS}],
            "startTime": rfc3339(),
            "initContainerStatuses": [self._initial(c, waiting) for c in self.spec.get("initContainers", [])],
            "containerStatuses": [self._initial(c, waiting) for c in self.spec["containers"]],
        }
        self._set_condition("PodReadyToStartContainers", True)
        self._set_condition("Initialized", False, "ContainersNotInitialized")
        self._set_condition("Ready", False, "ContainersNotReady")
        self._set_condition("ContainersReady", False, "ContainersNotReady")
        self._set_condition("PodScheduled", True)
        self._push()

    @staticmethod
    def _initial(container: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
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
        for volume in self.spec.get("volumes", []):
            name = volume["name"]
            if "emptyDir" in volume:
                path = pod_volume_dir(self.config.root, self.uid, name)
                path.mkdir(parents=True)
            elif "secret" in volume:
                path = pod_volume_dir(self.config.root, self.uid, name)
                path.mkdir(parents=True)
                self._mount_secret(volume["secret"], path)
            elif "persistentVolumeClaim" in volume:
                path = self._claim(volume["persistentVolumeClaim"]["claimName"])
            elif "image" in volume:
                reference = volume["image"]["reference"]
                while reference not in self.config.image_volumes:
                    self._event("FailedMount", f'image "{reference}" is not on this node', "Warning")
                    self._wait(5)
                path = self.config.image_volumes[reference]
            else:
                raise ValueError(
                    f"volume {name}: the dev node mounts emptyDir, secret, PVC and image volumes"
                )
            self.volumes[name] = path

    def _claim(self, name: str) -> Path:
        """A configured folder for the claim, or a folder of its own while the claim exists in the API."""
        configured = self.config.claims.get(f"{self.namespace}/{name}")
        while True:
            try:
                self._read_related(f"/api/v1/namespaces/{self.namespace}/persistentvolumeclaims/{name}")
            except ApiError as exc:
                if exc.code != 404:
                    raise
                self._event("FailedMount", f'persistentvolumeclaim "{name}" not found', "Warning")
                self._wait(2)
                continue
            if configured is not None:
                return configured
            path = claim_dir(self.config.root, self.namespace, name)
            path.mkdir(parents=True, exist_ok=True)
            return path

    def _read_related(self, path: str) -> Any:
        """GET an object the pod refers to; the Node authorizer learns of the binding a moment after it."""
        for _ in range(50):
            try:
                return self.api.get(path)
            except ApiError as exc:
                if exc.code != 403:
                    raise
                self._wait(0.1)
        return self.api.get(path)

    def _mount_secret(self, source: dict[str, Any], path: Path) -> None:
        name = source["secretName"]
        while True:
            try:
                secret = self._read_related(f"/api/v1/namespaces/{self.namespace}/secrets/{name}")
                break
            except ApiError as exc:
                if exc.code != 404:
                    raise
                if source.get("optional"):
                    return
                self._event("FailedMount", f'MountVolume.SetUp failed: secret "{name}" not found', "Warning")
                self._wait(2)
        mode = source.get("defaultMode", 0o644)
        for key, value in (secret.get("data") or {}).items():
            file = path / key
            file.write_bytes(base64.b64decode(value))
            file.chmod(mode)

    def _run_init_containers(self) -> bool:
        for container in self.spec.get("initContainers", []):
            if container.get("restartPolicy") == "Always":
                self._start_sidecar(container)
                continue
            process = self._start(container)
            code = self._await_exit(container["name"], process)
            if code != 0:
                self._event("Failed", f"init container {container['name']} exited with {code}", "Warning")
                self._finish("Failed")
                return False
        self._set_condition("Initialized", True)
        self._push()
        return True

    def _run_containers(self) -> None:
        started: list[tuple[str, ContainerProcess]] = []
        for container in self.spec["containers"]:
            process = self._start(container, ready=True)
            if not started:  # as a kubelet: Running once a main container runs, so its log can be read
                with self._status_lock:
                    self.status["phase"] = "Running"
            started.append((container["name"], process))
        self._set_condition("ContainersReady", True)
        self._set_condition("Ready", True)
        self._push()
        codes = [self._await_exit(name, process) for name, process in started]
        self._stop_sidecars()
        self._finish("Failed" if any(code != 0 for code in codes) else "Succeeded")

    def _start(self, container: dict[str, Any], *, ready: bool = False) -> ContainerProcess:
        """Start a container; leave it waiting (an image that cannot be pulled) for an unknown program."""
        self._check()
        name = container["name"]
        command = container.get("command") or []
        if not command or command[0] not in self.config.commands:
            message = f"the dev node has no program for {command[:1]!r} (image {container.get('image')!r})"
            self._set_container(name, {"waiting": {"reason": "ErrImageNeverPull", "message": message}})
            self._event("ErrImageNeverPull", message, "Warning")
            self._wait(FOREVER)  # like a kubelet: stay Pending until deleted or past the deadline
        mounts = self._mounts(container)
        argv = self.config.commands[command[0]] + [
            self._map(a, mounts) for a in command[1:] + container.get("args", [])
        ]
        root = self.pod_dir / "containers" / name
        root.mkdir(parents=True, exist_ok=True)
        process = ContainerProcess(
            argv,
            self._environment(container, mounts),
            root,
            self.log_path(name, self.restarts.get(name, 0)),
            self.config.max_log_bytes,
        )
        self.processes[name] = process
        self._set_container(
            name, {"running": {"startedAt": rfc3339(process.started_at)}}, started=True, ready=ready
        )
        self._event("Started", f"Started container {name}")
        return process

    def _await_exit(self, name: str, process: ContainerProcess) -> int:
        code = self._watch(name, process, self._check)
        assert code is not None
        return code

    def _watch(self, name: str, process: ContainerProcess, check: Callable[[], bool | None]) -> int | None:
        """Wait for the container to exit, running its liveness probe (a failed one stops it); ``None`` when
        ``check`` says to stop watching first. Records the exit in the pod's status."""
        container = next(c for c in _all_containers(self.spec) if c["name"] == name)
        liveness = container.get("livenessProbe")
        next_probe = time.monotonic() + (liveness or {}).get("initialDelaySeconds", 0)
        failures = 0
        while (code := process.wait(0.2)) is None:
            if check():
                return None
            if liveness is not None and time.monotonic() >= next_probe:
                next_probe = time.monotonic() + liveness.get("periodSeconds", 10)
                failures = 0 if self._probe(container, liveness) else failures + 1
                if failures >= liveness.get("failureThreshold", 3):
                    self._event("Unhealthy", f"Liveness probe failed for {name}; restarting", "Warning")
                    code = process.stop(self.grace)
                    break
        self._terminated(name, process, code)
        return code

    def _terminated(self, name: str, process: ContainerProcess, code: int, reason: str | None = None) -> None:
        process.wait()
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
        """Start a native sidecar, wait for its startupProbe, and watch it: restarted whenever it exits."""
        name = container["name"]
        probe = container.get("startupProbe")
        while True:
            process = self._start(container)
            if probe is None or self._probe_until_started(container, probe, process):
                self._set_container(name, {"running": {"startedAt": rfc3339(process.started_at)}},
                                    started=True, ready=True)  # fmt: skip
                threading.Thread(target=self._keep_sidecar, args=(container,), daemon=True).start()
                return
            code = process.stop(self._grace(self.spec.get("terminationGracePeriodSeconds", 30)))
            self._back_off(name, process, code)

    def _back_off(self, name: str, process: ContainerProcess, code: int) -> None:
        self._terminated(name, process, code)
        self.restarts[name] = self.restarts.get(name, 0) + 1
        self._set_container(
            name,
            {"waiting": {"reason": "CrashLoopBackOff", "message": f"exited with {code}"}},
            restartCount=self.restarts[name],
        )
        self._event("BackOff", f"Back-off restarting failed container {name}", "Warning")
        self._wait(min(10 * 2 ** (self.restarts[name] - 1), 300))

    def _keep_sidecar(self, container: dict[str, Any]) -> None:
        """A started sidecar that exits (or fails its liveness probe) is restarted until the pod ends."""
        name = container["name"]

        def ending() -> bool:
            return self.deleting.is_set() or self.stopping_sidecars

        try:
            while (code := self._watch(name, self.processes[name], ending)) is not None and not ending():
                self.restarts[name] = self.restarts.get(name, 0) + 1
                self._set_container(
                    name,
                    {"waiting": {"reason": "CrashLoopBackOff", "message": f"exited with {code}"}},
                    restartCount=self.restarts[name],
                    ready=False,
                    started=False,
                )
                self._event("BackOff", f"Back-off restarting failed container {name}", "Warning")
                self.deleting.wait(min(10 * 2 ** (self.restarts[name] - 1), 300))
                if ending():
                    return
                self._start(container)
                self._set_container(name, self._container_status(name)["state"], ready=True)
        except PodStopped:
            return
        except (ApiError, httpx.HTTPError) as exc:
            print(f"dev node: pod {self.namespace}/{self.name}, sidecar {name}: {exc!r}", flush=True)

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
            port = self.ports.get(action["port"], action["port"])
            try:
                return httpx.get(
                    f"http://127.0.0.1:{port}{action.get('path', '/')}", timeout=timeout
                ).is_success
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
        self.stopping_sidecars = True
        for container in reversed(self.spec.get("initContainers", [])):
            process = self.processes.get(container["name"])
            if container.get("restartPolicy") == "Always" and process is not None:
                self._event("Killing", f"Stopping container {container['name']}")
                code = process.stop(self.grace)
                self._terminated(container["name"], process, code)

    def _stop_all(self, grace: float) -> None:
        """The main containers first, then the sidecars in the reverse order of their start."""
        self.stopping_sidecars = True
        for process in reversed(list(self.processes.values())):
            process.stop(grace)

    def _finish(self, phase: str, reason: str | None = None, message: str | None = None) -> None:
        with self._status_lock:
            self.status["phase"] = phase
            if reason:
                self.status["reason"] = reason
            if message:
                self.status["message"] = message
        self._set_condition("Ready", False, "PodCompleted")
        self._set_condition("ContainersReady", False, "PodCompleted")
        self._push()

    def _fail_deadline(self) -> None:
        message = "Pod was active on the node longer than the specified deadline"
        self._event("DeadlineExceeded", message, "Warning")
        self._stop_all(self.grace)
        for name, process in self.processes.items():
            code = process.wait()
            assert code is not None
            self._terminated(name, process, code, reason="DeadlineExceeded")
        self._finish("Failed", reason="DeadlineExceeded", message=message)
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
        env = {
            "PATH": os.environ["PATH"],
            "LANG": "C.UTF-8",
            CONTAINER_VARIABLE: f"{self.name}/{container['name']}",
        }
        for item in container.get("env", []):
            if "value" in item:
                env[item["name"]] = self._map(item["value"], mounts)
            elif "secretKeyRef" in item.get("valueFrom", {}):
                ref = item["valueFrom"]["secretKeyRef"]
                try:
                    secret = self._read_related(f"/api/v1/namespaces/{self.namespace}/secrets/{ref['name']}")
                    env[item["name"]] = base64.b64decode((secret.get("data") or {})[ref["key"]]).decode()
                except (ApiError, KeyError):
                    if not ref.get("optional"):
                        raise ValueError(
                            f"container {container['name']}: secret {ref['name']} key {ref['key']} not found"
                        ) from None
            elif "fieldRef" in item.get("valueFrom", {}):
                path = item["valueFrom"]["fieldRef"]["fieldPath"]
                fields = {
                    "metadata.name": self.name,
                    "metadata.namespace": self.namespace,
                    "metadata.uid": self.uid,
                }
                env[item["name"]] = fields[path]
        return env

    # -- deletion and logs ---------------------------------------------------------------------------

    def delete(self, grace_seconds: float | None) -> None:
        """Graceful deletion: stop the containers (the runner's thread does), then delete the pod for good."""
        if grace_seconds is not None:
            self.grace = self._grace(grace_seconds)
        self.deleting.set()

    def _remove(self) -> None:
        shutil.rmtree(self.pod_dir, ignore_errors=True)
        if not self.abandoned:
            with contextlib.suppress(ApiError, httpx.HTTPError):
                self.api.delete(self.path, {"gracePeriodSeconds": 0, "preconditions": {"uid": self.uid}})
        self.removed.set()

    def log_path(self, container: str, restart: int) -> Path:
        return Path(self.pod_dir, "logs", container, f"{restart}.log")

    def container_log(self, container: str, *, previous: bool) -> tuple[Path | None, str]:
        """The log file of ``container`` (or of its previous run) and, when there is none, the kubelet's
        message."""
        names = [c["name"] for c in _all_containers(self.spec)]
        if container not in names:
            return None, f'container "{container}" in pod "{self.name}" is not available'
        restart = self.restarts.get(container, 0) - (1 if previous else 0)
        path = self.log_path(container, restart)
        if previous and (restart < 0 or not path.exists()):
            return None, f'previous terminated container "{container}" in pod "{self.name}" not found'
        if container not in self.processes or not path.exists():
            return None, f'container "{container}" in pod "{self.name}" is waiting to start: PodInitializing'
        return path, ""

    def container_done(self, container: str, path: Path) -> bool:
        process = self.processes.get(container)
        return process is None or process.done or process.log_path != path or self.removed.is_set()


def pod_reference(pod: dict[str, Any]) -> dict[str, Any]:
    """An event's ``involvedObject`` for ``pod``."""
    meta = pod["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "namespace": meta["namespace"],
        "name": meta["name"],
        "uid": meta["uid"],
    }


def record_event(
    api: KubeApi, node: str, reference: dict[str, Any], reason: str, message: str, kind: str = "Normal"
) -> None:
    """A core/v1 Event about ``reference``, as the kubelet reports one."""
    now = rfc3339()
    event = {
        "metadata": {"generateName": f"{reference['name']}."},
        "involvedObject": reference,
        "reason": reason,
        "message": message,
        "type": kind,
        "source": {"component": "kubelet", "host": node},
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
        "reportingComponent": "kubelet",
        "reportingInstance": node,
    }
    with contextlib.suppress(ApiError, httpx.HTTPError):  # an event is best effort, as in a kubelet
        api.post(f"/api/v1/namespaces/{reference['namespace']}/events", event)
