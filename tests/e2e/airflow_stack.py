"""A real Airflow deployment for the tests: api-server, scheduler (LocalExecutor), dag-processor and
optionally a triggerer, as separate processes over a PostgreSQL database of their own, driven through the
public REST API as the UI drives it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from llm_etl_dev.processes import stop_processes
from llm_etl_provider.backends.llama_server import free_port
from tests.e2e.postgres import PostgresServer


class AirflowStack:
    """``with AirflowStack(home, dags_folder, env) as airflow: airflow.trigger(...)``.

    The components' output goes to ``home/<component>.log``; ``logs()`` reads it and the task logs back.
    """

    def __init__(
        self, home: Path, dags_folder: Path, env: dict[str, str], *, triggerer: bool = False
    ) -> None:
        self.home = home
        self.database = PostgresServer()
        self.components = ["api-server", "scheduler", "dag-processor"] + (["triggerer"] if triggerer else [])
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.env = {
            **os.environ,
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.database.url,
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.url}/execution/",
            "AIRFLOW__API_AUTH__JWT_SECRET": "tests-only-jwt-secret-0123456789abcdef",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
            **env,
        }
        self.processes: list[subprocess.Popen[bytes]] = []
        self.client = httpx.Client(base_url=f"{self.url}/api/v2", timeout=30)

    def __enter__(self) -> AirflowStack:
        self.home.mkdir(parents=True, exist_ok=True)
        self.database.__enter__()
        try:
            airflow = [sys.executable, "-m", "airflow"]
            migrate = subprocess.run(
                [*airflow, "db", "migrate"], env=self.env, capture_output=True, check=False
            )
            assert migrate.returncode == 0, f"airflow db migrate failed: {migrate.stderr[-3000:]!r}"
            for component in self.components:
                with (self.home / f"{component}.log").open("wb") as log:
                    self.processes.append(
                        subprocess.Popen(
                            [*airflow, component], env=self.env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True,
                        )
                    )  # fmt: skip
            self.wait_for(self._healthy, 120, "the api-server to answer")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.client.close()
        stop_processes(self.processes, 30, group=True)
        self.database.__exit__(kind, error, trace)

    def _healthy(self) -> bool:
        try:
            return self.client.get("/monitor/health").status_code == 200
        except httpx.TransportError:
            return False

    def wait_for(self, condition: Callable[[], Any], timeout: float, what: str) -> Any:
        """Poll ``condition`` until it returns something truthy; fail naming ``what`` or a dead component."""
        deadline = time.monotonic() + timeout
        while not (result := condition()):
            for component, process in zip(self.components, self.processes, strict=True):
                assert process.poll() is None, f"the {component} died:\n{self.logs()[-3000:]}"
            assert time.monotonic() < deadline, f"waited {timeout:.0f} s for {what}\n{self.logs()[-3000:]}"
            time.sleep(0.5)
        return result

    def logs(self) -> str:
        """The components' output and every task log, concatenated."""
        files = sorted(self.home.glob("*.log")) + sorted((self.home / "logs").rglob("*.log"))
        return "".join(f"==> {path} <==\n{path.read_text(errors='replace')}\n" for path in files)

    def logs_showing(self, pattern: str, timeout: float = 30) -> str:
        """The logs once ``pattern`` shows in them, or after ``timeout``: a task's supervisor can report its
        state before it has written the task's last log lines."""
        deadline = time.monotonic() + timeout
        while not re.search(pattern, logs := self.logs()) and time.monotonic() < deadline:
            time.sleep(0.5)
        return logs

    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.client.request(method, path, **kwargs)
        assert response.is_success, f"{method} {path}: {response.status_code} {response.text}"
        return response.json()

    def trigger(self, dag_id: str, conf: dict[str, Any]) -> str:
        """Unpause ``dag_id`` once the dag-processor has parsed it, trigger a run, return its run id."""
        self.wait_for(lambda: self.client.get(f"/dags/{dag_id}").is_success, 120, f"{dag_id} to be parsed")
        self.api("PATCH", f"/dags/{dag_id}", json={"is_paused": False})
        return str(
            self.api("POST", f"/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": conf})[
                "dag_run_id"
            ]
        )

    def dag_run_state(self, dag_id: str, run_id: str) -> str:
        return str(self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}")["state"])

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str | None]:
        """``{"task_id[map_index]": state}`` for every task instance of the run."""
        instances = self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")["task_instances"]
        return {_instance_name(ti): ti["state"] for ti in instances}

    def stored_surfaces(self, dag_id: str, run_id: str) -> dict[str, list[Any]]:
        """The run's XCom values and rendered template fields, as the UI shows them."""
        run = f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances"
        entries = self.api("GET", f"{run}/~/xcomEntries")["xcom_entries"]
        values = [
            self.api(
                "GET", f"{run}/{entry['task_id']}/xcomEntries/{entry['key']}",
                params={"map_index": entry["map_index"], "stringify": True},
            )["value"]
            for entry in entries
        ]  # fmt: skip
        instances = self.api("GET", run)["task_instances"]
        return {"xcom": values, "rendered": [ti.get("rendered_fields") for ti in instances]}

    def clear(
        self, dag_id: str, run_id: str, task_ids: list[Any] | None = None, *, downstream: bool = True
    ) -> set[str]:
        """What a user does with the UI's "Clear" on tasks of a run (``[task_id, map_index]`` for one mapped
        instance; None: the whole run), with its "Downstream" option; return the task instances cleared."""
        body = {
            "dry_run": False,
            "only_failed": False,
            "dag_run_id": run_id,
            "task_ids": task_ids,
            "include_downstream": downstream,
        }
        cleared = self.api("POST", f"/dags/{dag_id}/clearTaskInstances", json=body)["task_instances"]
        return {
            f"{ti['task_id']}[{ti['map_index']}]" if ti["map_index"] >= 0 else ti["task_id"] for ti in cleared
        }

    def wait_until_ended(self, dag_id: str, run_id: str, timeout: float = 600) -> str:
        """Wait for the run to end; return its state."""
        return str(
            self.wait_for(
                lambda: (state := self.dag_run_state(dag_id, run_id)) not in ("queued", "running") and state,
                timeout,
                f"run {run_id} to end",
            )
        )

    def mark_failed(self, dag_id: str, run_id: str) -> None:
        """What a user does with the UI's "Mark as failed" on a running DAG run."""
        self.api("PATCH", f"/dags/{dag_id}/dagRuns/{run_id}", json={"state": "failed"})


def _instance_name(instance: dict[str, Any]) -> str:
    """``task_id[map_index]`` for a mapped task instance, ``task_id`` for another."""
    index = instance["map_index"]
    return f"{instance['task_id']}[{index}]" if index >= 0 else str(instance["task_id"])
