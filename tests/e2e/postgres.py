"""A PostgreSQL server of the tests' own (Debian's, installed by scripts/setup.sh): the Airflow deployment's
database, as users run Airflow, started on 127.0.0.1 and thrown away afterwards."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType

from llm_etl_provider.backends.llama_server import free_port

DATABASE = "airflow"


def _bin_dir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    assert initdb, (
        "PostgreSQL's server is not installed: run scripts/setup.sh (Debian: apt-get install postgresql)"
    )
    return Path(initdb).parent


class PostgresServer:
    """``with PostgresServer() as db: db.url``. The server refuses to run as root, so as root it runs as
    Debian's ``postgres`` user, in a folder of its own outside pytest's (owner-only) temporary folders."""

    def __init__(self) -> None:
        self.bin = _bin_dir()
        self.port = free_port()
        self.folder = Path(tempfile.mkdtemp(prefix="llm-etl-postgres-"))
        self.data = self.folder / "data"
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres", "postgres")
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self.url = f"postgresql+psycopg2://{DATABASE}@127.0.0.1:{self.port}/{DATABASE}"

    def _run(self, program: str, *args: str) -> None:
        command = [*self.as_user, str(self.bin / program), *args]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        assert done.returncode == 0, f"{program} failed: {done.stdout}{done.stderr}"

    def __enter__(self) -> PostgresServer:
        self._run("initdb", "-D", str(self.data), "-U", DATABASE, "--auth=trust", "-E", "UTF8", "--no-sync")
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.folder} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.folder / "server.log"),
            "-o",
            options,
            "-w",
            "start",
        )
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", DATABASE, DATABASE)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
        shutil.rmtree(self.folder, ignore_errors=True)
