"""A real distributed Airflow deployment on this machine, the way docs/airflow.md ("Without
Docker") sets one up: an ``api-server``, a ``scheduler``, a ``dag-processor`` and Celery
``worker``s, each its own process group, with Redis as the broker and a throwaway PostgreSQL
database for Airflow's metadata.

The workers name themselves (``[core] hostname_callable``) so that the task instances'
``hostname`` tells which worker ran each try. Everything started here is stopped in
:meth:`CeleryDeployment.stop` (SIGTERM, then SIGKILL of each process group).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from tests.conftest import PG_ADMIN_URL

REPO = Path(__file__).resolve().parents[2]
DAG_ID = "invoice_dispatch"
POOLS_FILE = REPO / "include" / "airflow" / "pools.json"
#: Redis database of this test's broker (the brief of issue 9 gives it its own number)
BROKER_URL = os.environ.get("DISPATCH_TEST_CELERY_BROKER", "redis://127.0.0.1:6379/7")

_WORKER_NAME_MODULE = '''"""The Celery worker's name as the task instances' hostname (tests only)."""
import os


def worker_name() -> str:
    return os.environ["DISPATCH_TEST_WORKER_NAME"]
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def broker_reachable(url: str = BROKER_URL) -> bool:
    host_port = url.split("//", 1)[1].split("/", 1)[0]
    host, _, port = host_port.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=2) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@dataclass
class CeleryDeployment:
    """Airflow 3 with the CeleryExecutor, its processes and its metadata database."""

    root: Path
    dispatch_env: dict[str, str]
    worker_concurrency: int = 3
    heartbeat_timeout: int = 30
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    metadata_url: str = ""
    queue: str = ""
    _db_name: str = ""
    _admin: sa.Engine | None = None
    _meta: sa.Engine | None = None
    _api_port: int = 0

    # --- set-up -------------------------------------------------------------------------------

    def start(self, workers: tuple[str, ...] = ("worker1", "worker2"), timeout: float = 240) -> None:
        self._db_name = f"af_celery_{uuid.uuid4().hex[:10]}"
        self._admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with self._admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{self._db_name}"'))
        self.metadata_url = PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + self._db_name
        # one queue of its own: a second deployment on the same Redis never takes its tasks
        self.queue = f"dispatch-{uuid.uuid4().hex[:8]}"
        self._api_port = free_port()
        (self.root / "airflow").mkdir(parents=True, exist_ok=True)
        (self.root / "names").mkdir(exist_ok=True)
        (self.root / "names" / "dispatch_test_worker_name.py").write_text(_WORKER_NAME_MODULE)
        self.airflow("db", "migrate", timeout=300)
        self.airflow("pools", "import", str(POOLS_FILE))
        self._spawn("api-server", ["api-server", "--port", str(self._api_port)])
        self._spawn("scheduler", ["scheduler"])
        self._spawn("dag-processor", ["dag-processor"])
        for name in workers:
            self.start_worker(name)
        self.wait_for(self._dag_parsed, timeout, "the DAG parsed by the dag-processor")
        self.wait_for(lambda: self._workers_ready(workers), timeout, "the Celery workers ready")
        self.airflow("dags", "unpause", DAG_ID)

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of every Airflow process: docs/airflow.md's recipe, on free ports."""
        env = {k: v for k, v in self.dispatch_env.items() if not k.startswith("AIRFLOW")}
        url = self.metadata_url
        env.update(
            {
                "AIRFLOW_HOME": str(self.root / "airflow"),
                "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": url,
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC": url,
                "AIRFLOW__CELERY__BROKER_URL": BROKER_URL,
                "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + url,
                "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(self.worker_concurrency),
                "AIRFLOW__OPERATORS__DEFAULT_QUEUE": self.queue,
                "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
                "AIRFLOW__API__PORT": str(self._api_port),
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{self._api_port}/execution/",
                "AIRFLOW__API_AUTH__JWT_SECRET": "dispatch-celery-test-" + self._db_name,
                "AIRFLOW__API__SECRET_KEY": "dispatch-celery-test-" + self._db_name,
                # only the runs the test creates: no scheduled run of "today" beside them
                "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
                # a killed worker's task is found dead after this many seconds, then retried
                "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(self.heartbeat_timeout),
                "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
                "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
                "DISPATCH_RETRY_DELAY_SECONDS": "1",
                "DISPATCH_MAX_RETRY_DELAY_SECONDS": "2",
            }
        )
        env.update(extra)
        return env

    def _spawn(self, name: str, args: list[str], **extra: str) -> subprocess.Popen:
        log = (self.root / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "airflow", *args],
            cwd=self.root,
            env=self.env(**extra),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopped (or killed) whole
        )
        self.procs[name] = proc
        return proc

    def start_worker(self, name: str) -> subprocess.Popen:
        pythonpath = os.pathsep.join([str(self.root / "names"), self.dispatch_env.get("PYTHONPATH", "")])
        return self._spawn(
            name,
            [
                "celery",
                "worker",
                "--celery-hostname",
                f"{name}@%h",
                "--queues",
                self.queue,
                "--without-mingle",
                "--without-gossip",
            ],
            PYTHONPATH=pythonpath,
            DISPATCH_TEST_WORKER_NAME=name,
            AIRFLOW__CORE__HOSTNAME_CALLABLE="dispatch_test_worker_name.worker_name",
        )

    def kill9(self, name: str) -> None:
        """SIGKILL a worker and everything it started (its task supervisors and tasks): a
        machine that dies in the middle of a batch."""
        proc = self.procs.pop(name)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        end = time.monotonic() + 20
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, end - time.monotonic()))
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # and any task process left in the group
            proc.wait()
        self.procs.clear()
        if self._meta is not None:
            self._meta.dispose()
        if self._admin is not None and self._db_name:
            with self._admin.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{self._db_name}" WITH (FORCE)'))
            self._admin.dispose()

    # --- commands -----------------------------------------------------------------------------

    def airflow(self, *args: str, timeout: float = 180) -> str:
        """One ``airflow`` CLI command against this deployment; its output."""
        done = subprocess.run(
            [sys.executable, "-m", "airflow", *args],
            cwd=self.root,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if done.returncode != 0:
            raise AssertionError(
                f"airflow {' '.join(args)} → {done.returncode}\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
            )
        return done.stdout

    def trigger(self, logical_date: dt.datetime) -> str:
        """``airflow dags trigger -l``; the run id."""
        out = self.airflow("dags", "trigger", DAG_ID, "-l", logical_date.isoformat(), "-o", "json")
        return str(json.loads(out[out.rindex("[{") :])[0]["dag_run_id"])

    # --- the metadata database ------------------------------------------------------------------

    @property
    def meta(self) -> sa.Engine:
        if self._meta is None:
            self._meta = sa.create_engine(self.metadata_url, pool_pre_ping=True)
        return self._meta

    def query(self, sql: str, **params: Any) -> list[Any]:
        with self.meta.connect() as conn:
            return list(conn.execute(sa.text(sql), params).all())

    def _dag_parsed(self) -> bool:
        try:
            return bool(self.query("SELECT 1 FROM serialized_dag WHERE dag_id = :d", d=DAG_ID))
        except sa.exc.ProgrammingError:
            return False

    def _workers_ready(self, names: tuple[str, ...]) -> bool:
        return all(
            f"{name}@" in log and " ready." in log
            for name in names
            for log in [(self.root / f"{name}.log").read_text(errors="replace")]
        )

    def dag_runs(self) -> list[Any]:
        return self.query(
            "SELECT run_id, logical_date, run_type, state FROM dag_run WHERE dag_id = :d "
            "ORDER BY logical_date",
            d=DAG_ID,
        )

    def tries(self, task_id: str = "dispatch_batch") -> list[Any]:
        """Every try of ``task_id``, once each: earlier tries are in task_instance_history, and
        a try that a cleared run found no longer mapped stays in task_instance as ``removed``
        beside its copy in the history."""
        cols = "run_id, map_index, try_number, state, hostname, pool, start_date, end_date"
        rows = self.query(
            f"SELECT {cols} FROM task_instance_history WHERE dag_id = :d AND task_id = :t "
            f"UNION ALL SELECT {cols} FROM task_instance WHERE dag_id = :d AND task_id = :t",
            d=DAG_ID,
            t=task_id,
        )
        once: dict[tuple, Any] = {}
        for row in rows:
            once.setdefault((row.run_id, row.map_index, row.try_number), row)
        return list(once.values())

    def running_batches(self) -> list[Any]:
        return self.query(
            "SELECT run_id, map_index, hostname FROM task_instance "
            "WHERE dag_id = :d AND task_id = 'dispatch_batch' AND state = 'running'",
            d=DAG_ID,
        )

    def wait_for(self, cond: Callable[[], bool], timeout: float, what: str, step: float = 1.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise AssertionError(f"{name} exited ({proc.returncode}):\n{self.log_tail(name)}")
            if cond():
                return
            time.sleep(step)
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")

    def runs_finished(self, run_ids: list[str]) -> bool:
        states = {r.run_id: r.state for r in self.dag_runs()}
        return all(states.get(r) in ("success", "failed") for r in run_ids)

    def log_tail(self, name: str, chars: int = 3000) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""


def max_overlap(intervals: list[tuple[dt.datetime, dt.datetime]]) -> tuple[int, dt.datetime | None]:
    """The most intervals open at one instant (an interval ends before one that starts then),
    and that instant."""
    points = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    best, at, current = 0, None, 0
    for moment, delta in points:
        current += delta
        if current > best:
            best, at = current, moment
    return best, at
