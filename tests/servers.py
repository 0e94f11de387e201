"""Real servers for the scale-out tests, on loopback: PostgreSQL and an MLflow tracking server on it.

    with Postgres() as pg:                       # initdb + pg_ctl start on a free port
        url = pg.database("mlflow")              # postgresql://finalbn@127.0.0.1:PORT/mlflow
        with MlflowServer(url, tmp / "artifacts") as server:
            os.environ["MLFLOW_TRACKING_URI"] = server.uri
            server.stop(); server.start()        # an outage
        assert not server.problems() and not pg.problems()   # their logs: no error, no failed request

PostgreSQL is Debian's `postgresql` package (.ci/run installs it where it is missing): the real
server the deploy examples run, started here in a throwaway folder with trust authentication on
127.0.0.1 only and fsync off. The server refuses to run as root; as root (CI) it runs as the
`postgres` user the package creates. `postgres_bin()` is None where it is not installed, and the
tests that need it are skipped with that reason.
"""

from __future__ import annotations

import glob
import os
import re
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
        self.log = self.root / "log"  # the server's own log (pg_ctl -l): its errors, with the statement
        self.as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def _run(self, *argv: str) -> None:
        out = subprocess.run([*self.as_postgres, *argv], capture_output=True, text=True, timeout=120)
        if out.returncode:
            raise RuntimeError(f"{argv[0]} failed: {out.stdout}{out.stderr}")

    def start(self) -> Postgres:
        if self.as_postgres:
            self.root.chmod(0o755)
            shutil.chown(self.root, "postgres", "postgres")
        if not self.data.exists():
            self._run(
                str(self.bin / "initdb"),
                "-D",
                str(self.data),
                "-U",
                self.user,
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            )
        self._run(
            str(self.bin / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-w",
            "-t",
            "60",
            "-o",
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c max_connections=200 -c log_line_prefix='%m [%p] %q%d '",
            "start",
        )  # %d: the database
        return self

    def stop(self) -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def problems(self) -> list[str]:
        """The lines of the server's log that say something went wrong: ERROR (a unique violation, a
        deadlock, a failed statement), FATAL, PANIC, WARNING, each with the statement it names."""
        return [
            line
            for line in self.log.read_text(errors="replace").splitlines()
            if re.search(r"\b(ERROR|FATAL|PANIC|WARNING):|deadlock", line)
            and not any(re.search(pattern, line) for pattern in self.ALLOWED)
        ]

    ALLOWED = (
        # Optuna's create_study(load_if_exists=True) inserts the study first and loads it when the
        # insert breaks the name's unique index (RDBStorage.create_new_study: IntegrityError ->
        # DuplicatedStudyError -> load): once for every process that opens an existing study (the
        # search's workers, a retried one, the comparison), in an Optuna database only
        r"^\S+ \S+ \S+ \[\d+\] optuna\w* ERROR:  duplicate key value violates unique constraint "
        r'"ix_studies_study_name"$',
    )

    def url(self, db: str) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{db}"

    def database(self, name: str) -> str:
        """Create database `name`; its URL."""
        import psycopg  # here: optional (the cluster extra), SQLAlchemy's postgresql:// driver

        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def __enter__(self) -> Postgres:
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

    def start(self, timeout_s: float = 120) -> MlflowServer:
        mlflow = Path(sys.executable).with_name("mlflow")
        self.proc = subprocess.Popen(
            [
                str(mlflow),
                "server",
                "--backend-store-uri",
                self.backend,
                "--artifacts-destination",
                str(self.artifacts),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                "1",
            ],
            stdout=open(self.log, "a"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # no job runner: seven huey processes of MLflow's GenAI jobs, each importing MLflow (~250 MB)
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        )
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

    def problems(self) -> list[str]:
        """The lines of the server's log that say something went wrong, and only those: a traceback,
        an ERROR / CRITICAL / WARNING line, a database error (psycopg, SQLAlchemy: a unique violation,
        a deadlock), an answer of 4xx/5xx to a request, except those of ALLOWED."""
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            if any(re.search(pattern, line) for pattern in self.ALLOWED):
                continue
            answer = re.search(r'"[A-Z]+ \S+ HTTP/[\d.]+" (\d{3})', line)  # uvicorn's access line
            if answer and int(answer[1]) >= 400 or not answer and re.search(self.WRONG, line):
                out.append(line)
        return out

    WRONG = (
        r"Traceback|\b(ERROR|CRITICAL|WARNING|FATAL)\b|Exception|Error\b|[Ww]arning\b|psycopg|sqlalchemy"
        r"|duplicate key|deadlock|violat"
    )
    ALLOWED = (
        # a lookup of an experiment by name before it exists is answered 404 (RESOURCE_DOES_NOT_EXIST):
        # each stage looks its experiment up before creating it, and the store's old single experiment
        r'"GET /api/2\.0/mlflow/experiments/get-by-name\?\S* HTTP/[\d.]+" 404 ',
        # printed at each start by MLflow 3.17's own import of starlette (fastapi_app.py), not a failure
        r"StarletteDeprecationWarning: starlette\.middleware\.wsgi is deprecated",
    )

    def stop(self) -> None:
        """Kill the server (its whole process group: uvicorn and its worker)."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, 9)
            self.proc.wait(timeout=30)

    def __enter__(self) -> MlflowServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
