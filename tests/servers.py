"""Real servers for the scale-out tests, on loopback: PostgreSQL and an MLflow tracking server on it.

    with Postgres() as pg:                       # initdb + pg_ctl start on a free port
        url = pg.database("mlflow")              # postgresql://finalbn@127.0.0.1:PORT/mlflow
        with MlflowServer(url, tmp / "artifacts") as server:
            os.environ["MLFLOW_TRACKING_URI"] = server.uri
            server.stop(); server.start()        # an outage

PostgreSQL is Debian's `postgresql` package (.ci/run installs it where it is missing): the real
server the deploy examples run, started here in a throwaway folder with trust authentication on
127.0.0.1 only and fsync off. The server refuses to run as root; as root (CI) it runs as the
`postgres` user the package creates. `postgres_bin()` is None where it is not installed, and the
tests that need it are skipped with that reason.
"""
from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def postgres_bin() -> Path | None:
    """The folder of PostgreSQL's server programs (initdb, pg_ctl), or None."""
    found = shutil.which("pg_ctl")
    if found and Path(found).resolve().with_name("initdb").exists():
        return Path(found).resolve().parent
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: int(Path(d).parent.name))
    return Path(dirs[-1]) if dirs else None


class Postgres:
    """A PostgreSQL server of its own: `database(name)` creates a database and gives its URL."""

    def __init__(self) -> None:
        self.bin = postgres_bin()
        if self.bin is None:
            raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql)")
        self.port = free_port()
        self.user = "finalbn"
        self.root = Path(tempfile.mkdtemp(prefix="finalbn-pg-"))
        self.data = self.root / "data"
        self.as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def _run(self, *argv: str) -> None:
        out = subprocess.run([*self.as_postgres, *argv], capture_output=True, text=True, timeout=120)
        if out.returncode:
            raise RuntimeError(f"{argv[0]} failed: {out.stdout}{out.stderr}")

    def start(self) -> "Postgres":
        if self.as_postgres:
            self.root.chmod(0o755)
            shutil.chown(self.root, "postgres", "postgres")
        if not self.data.exists():
            self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", self.user, "--auth=trust", "-E", "UTF8",
                      "--no-sync")
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "log"), "-w", "-t", "60",
                  "-o", f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
                        "-c max_connections=200", "start")
        return self

    def stop(self) -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def url(self, db: str) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{db}"

    def database(self, name: str) -> str:
        """Create database `name`; its URL."""
        import psycopg  # the driver of SQLAlchemy 2.1 for postgresql:// (MLflow and Optuna)

        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def __enter__(self) -> "Postgres":
        return self.start()

    def __exit__(self, *exc) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


class MlflowServer:
    """`mlflow server` on a backend store URI, serving artifacts from a folder, on a free port."""

    def __init__(self, backend: str, artifacts: Path, log: Path) -> None:
        self.backend, self.artifacts, self.log = backend, artifacts, log
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 120) -> "MlflowServer":
        mlflow = Path(sys.executable).with_name("mlflow")
        self.proc = subprocess.Popen(
            [str(mlflow), "server", "--backend-store-uri", self.backend, "--artifacts-destination", str(self.artifacts),
             "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"],
            stdout=open(self.log, "a"), stderr=subprocess.STDOUT, start_new_session=True,
            # no job runner: seven huey processes of MLflow's GenAI jobs, each importing MLflow (~250 MB)
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.3)
        raise RuntimeError(f"mlflow server did not answer in {timeout_s} s: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        """Kill the server (its whole process group: uvicorn and its worker)."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, 9)
            self.proc.wait(timeout=30)

    def __enter__(self) -> "MlflowServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
