"""Every DAG file loads, cheaply, and every DAG carries what operators rely on: tags, an
owner, retries with back-off, and only pools the set-up creates (include/airflow/pools.json)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from tests.dags.conftest import DAGS_DIR, POOLS_FILE, REPO

DECLARED_POOLS = set(json.loads(POOLS_FILE.read_text()))
#: what the tasks import and the parse must not (Airflow itself brings Jinja and SQLAlchemy)
HEAVY_MODULES = (
    "pandas",
    "numpy",
    "holidays",
    "fpdf",
    "babel.numbers",
    "dispatch.runtime.pipeline",
    "dispatch.storage.engine",
)


@pytest.fixture(scope="module")
def bag():  # type: ignore[no-untyped-def]
    from airflow.models import DagBag

    return DagBag(dag_folder=str(DAGS_DIR), known_pools=DECLARED_POOLS | {"default_pool"})


def test_every_dag_file_loads_without_import_errors(bag) -> None:  # type: ignore[no-untyped-def]
    assert bag.import_errors == {}
    parsed = {stat.file.lstrip("/") for stat in bag.dagbag_stats}
    on_disk = {p.name for p in DAGS_DIR.glob("*.py") if not p.name.startswith("_")}
    assert on_disk == parsed == {"invoice_dispatch.py"}
    assert bag.dag_ids == ["invoice_dispatch"]


def test_every_dag_has_tags_owner_docs_and_retries_with_backoff(bag) -> None:  # type: ignore[no-untyped-def]
    for dag in bag.dags.values():
        assert dag.tags, dag.dag_id
        assert dag.doc_md and "exactly" in dag.doc_md.lower()
        for task in dag.tasks:
            assert task.owner not in ("", "airflow"), task.task_id
            assert task.retries >= 1, task.task_id
            assert task.retry_policy is not None, task.task_id  # its back-off grows to a cap


def test_every_pool_a_task_uses_is_declared_for_the_setup(bag) -> None:  # type: ignore[no-untyped-def]
    used = {task.pool for dag in bag.dags.values() for task in dag.tasks}
    assert "dispatch_providers" in used
    assert used <= DECLARED_POOLS | {"default_pool"}
    assert not [w for w in bag.dag_warnings if "pool" in str(w.warning_type).lower()]
    assert json.loads(POOLS_FILE.read_text())["dispatch_providers"]["slots"] >= 1


def test_the_pool_check_would_catch_an_undeclared_pool() -> None:
    """The check above can fail: Airflow reports a pool it does not know."""
    from airflow.models import DagBag

    strict = DagBag(dag_folder=str(DAGS_DIR), known_pools={"default_pool"})
    messages = [w.message for w in strict.dag_warnings]
    assert any("dispatch_providers" in m for m in messages), messages


def test_parsing_the_dag_file_is_cheap(bag) -> None:  # type: ignore[no-untyped-def]
    """Measured by Airflow itself; generous bound (the file parses in well under 0.2 s)."""
    for stat in bag.dagbag_stats:
        assert stat.duration.total_seconds() < 5, stat


def test_importing_the_dag_file_loads_no_library_and_touches_no_database(tmp_path) -> None:
    """The dag-processor parses the file every few seconds: the library (pandas, NumPy, the
    holiday calendars, the PDF writer…) is imported by the tasks, not by the parse, and no
    dispatch database is opened (the configured one does not even exist)."""
    probe = (
        "import runpy, sys, time\n"
        "t = time.perf_counter()\n"
        f"runpy.run_path({str(DAGS_DIR / 'invoice_dispatch.py')!r})\n"
        "print(round(time.perf_counter() - t, 3))\n"
        f"print(sorted(m for m in {HEAVY_MODULES!r} if m in sys.modules))\n"
    )
    env = dict(os.environ)
    env["DISPATCH_DB_URL"] = f"sqlite:///{tmp_path / 'never' / 'dispatch.db'}"
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "plugins"), str(REPO)])
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True, timeout=120
    )
    seconds, heavy = done.stdout.strip().splitlines()[-2:]
    assert heavy == "[]", heavy
    assert float(seconds) < 5
    assert not (tmp_path / "never").exists()
    assert time.perf_counter() - started < 60


def test_schedule_is_weekdays_0500_utc_without_catchup_one_run_at_a_time(bag) -> None:  # type: ignore[no-untyped-def]
    from airflow.sdk import CronTriggerTimetable

    dag = bag.dags["invoice_dispatch"]
    assert isinstance(dag.timetable, CronTriggerTimetable)
    assert dag.timetable.expression == "0 5 * * 1-5"
    assert str(dag.timetable.timezone) in ("UTC", "Timezone('UTC')")
    assert dag.catchup is False
    assert dag.max_active_runs == 1


def test_schedule_follows_the_environment_read_at_parse_time(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.dags.conftest import load_dag

    monkeypatch.setenv("DISPATCH_SCHEDULE_CRON", "30 6 * * 1-5")
    monkeypatch.setenv("DISPATCH_SCHEDULE_TZ", "Europe/Paris")
    dag = load_dag()
    assert dag.timetable.expression == "30 6 * * 1-5"
    assert "Europe/Paris" in str(dag.timetable.timezone)


def test_a_bad_schedule_setting_is_an_import_error_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from airflow.models import DagBag

    monkeypatch.setenv("DISPATCH_SCHEDULE_TZ", "Mars/Olympus")
    bad = DagBag(dag_folder=str(DAGS_DIR))
    assert bad.dags == {}
    assert any("DISPATCH_SCHEDULE_TZ" in err for err in bad.import_errors.values())
