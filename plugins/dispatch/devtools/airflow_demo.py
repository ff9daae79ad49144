"""``make demo`` through Airflow: the ``invoice_dispatch`` DAG run by ``airflow dags test``
over several weekdays of the demo data, then the same summary as the CLI demo.

Everything Airflow needs lives under ``var/airflow`` (``AIRFLOW_HOME``, SQLite metadata), so
the demo needs no server and leaves no trace outside ``var/``. Each day is Airflow's own
``airflow dags test invoice_dispatch <date>`` command, parsed by Airflow's CLI parser and run
in this one process: a separate ``airflow`` process per day would pay Airflow's start-up and
its in-process API server (about ten seconds) every day, which tripled the demo's time. The
command's output goes to one log file per day under ``var/airflow/demo-logs``.

``python -m dispatch.devtools.airflow_demo --env`` prints the ``export`` lines of that local Airflow,
for ``airflow standalone`` (the UI) or for running ``airflow dags test`` by hand.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shlex
import sys
import time
import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import select

from dispatch.config.settings import Settings, load_settings_or_exit
from dispatch.devtools.demo_data import apply_accounting_changes
from dispatch.devtools.demo_runner import announce, day_line, demo_days, prepare, print_summary
from dispatch.devtools.demo_webhooks import run_with_own_web
from dispatch.paths import repo_root, resolve
from dispatch.storage.engine import make_engine
from dispatch.storage.schema import dispatch_runs

AIRFLOW_HOME = "var/airflow"
POOLS_FILE = "include/airflow/pools.json"


def local_airflow_env() -> dict[str, str]:
    """The settings of the local Airflow: this repository's ``dags/`` and ``plugins/`` (the pages
    under ``/dispatch``), metadata in SQLite under ``var/airflow`` (Airflow's default when
    nothing else is configured), no example DAGs."""
    return {
        "AIRFLOW_HOME": str(resolve(AIRFLOW_HOME)),
        "AIRFLOW__CORE__DAGS_FOLDER": str(repo_root() / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(repo_root() / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    }


def export_lines() -> str:
    """``export`` lines for a shell (``eval "$(python -m dispatch.devtools.airflow_demo --env)"``), with
    this virtualenv's ``airflow`` first on PATH."""
    lines = [f"export {key}={shlex.quote(value)}" for key, value in local_airflow_env().items()]
    lines.append(f'export PATH={shlex.quote(str(Path(sys.executable).parent))}:"$PATH"')
    return "\n".join(lines)


@contextmanager
def output_to(log_file: Path) -> Iterator[None]:
    """Send everything written to stdout/stderr — Airflow's loggers included, which hold
    their own references to the streams — to ``log_file``, at the file-descriptor level."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    try:
        with log_file.open("w", encoding="utf-8") as out:
            os.dup2(out.fileno(), 1)
            os.dup2(out.fileno(), 2)
            try:
                yield
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])


def airflow(argv: Sequence[str], log_file: Path) -> None:
    """Run the command ``airflow <argv>`` in this process, its (long) output kept in
    ``log_file``; on failure the end of that log is shown and the demo stops."""
    from airflow.cli.cli_parser import get_parser

    code: int | str | None = 0
    with output_to(log_file):
        try:
            args = get_parser().parse_args(list(argv))
            args.func(args)
        except SystemExit as exc:
            code = exc.code
        except Exception:
            traceback.print_exc()
            code = 1
    if code not in (0, None):
        tail = log_file.read_text(encoding="utf-8", errors="replace").splitlines()[-40:]
        print("\n".join(tail), file=sys.stderr)
        raise SystemExit(f"`airflow {' '.join(argv)}` failed ({code}); full log: {log_file}")


def counts_of_run(settings: Settings, as_of: dt.datetime) -> dict:
    """The counts the DAG's write-back recorded for the latest run as of ``as_of``."""
    engine = make_engine(settings.dispatch_db_url)
    try:
        with engine.connect() as conn:
            counts = conn.execute(
                select(dispatch_runs.c.counts)
                .where(dispatch_runs.c.as_of == as_of)
                .order_by(dispatch_runs.c.started_at.desc())
                .limit(1)
            ).scalar()
    finally:
        engine.dispose()
    return counts or {}


def prepare_airflow(logs: Path) -> None:
    """Metadata schema and pools, as include/airflow/setup.sh does (both idempotent)."""
    resolve(AIRFLOW_HOME).mkdir(parents=True, exist_ok=True)
    airflow(["db", "migrate"], logs / "db-migrate.log")
    airflow(["pools", "import", str(resolve(POOLS_FILE))], logs / "pools-import.log")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m dispatch.devtools.airflow_demo", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--env", action="store_true", help="print the local Airflow's export lines and exit")
    args = parser.parse_args(argv)
    if args.env:
        print(export_lines())
        return

    if "airflow" in sys.modules:  # pragma: no cover - a programming error, not a user one
        raise RuntimeError(
            "dispatch.devtools.airflow_demo must set up Airflow's environment before importing it"
        )
    # Airflow reads its configuration when first imported: point it at var/airflow first.
    os.environ.update(local_airflow_env())
    settings = load_settings_or_exit()
    today = dt.datetime.now(dt.UTC).date()
    summary = prepare(settings, today)
    announce(summary)
    logs = resolve(AIRFLOW_HOME) / "demo-logs"
    print(f"Airflow: AIRFLOW_HOME={os.environ['AIRFLOW_HOME']} (SQLite metadata); migrating, creating pools…")
    prepare_airflow(logs)

    from dispatch.runtime.airflow_tasks import DAG_ID

    lines = []
    for as_of in demo_days(today):
        apply_accounting_changes(settings.accounting_db_url, summary.changes, upto=as_of)
        stamp = as_of.isoformat()
        started = time.monotonic()
        airflow(["dags", "test", DAG_ID, stamp], logs / f"dags-test-{as_of:%Y%m%d}.log")
        lines.append(day_line(as_of, counts_of_run(settings, as_of)))
        print(
            f"airflow dags test {DAG_ID} {stamp}: sent {lines[-1]['sent']}, to do {lines[-1]['to do']}"
            f"  ({time.monotonic() - started:.1f}s)"
        )
    print_summary(settings, lines, summary)
    print(f"Airflow logs of each day: {logs}")
    print(
        'The UI: eval "$(.venv/bin/python -m dispatch.devtools.airflow_demo --env)" && airflow standalone'
        "   (see docs/airflow.md)"
    )
    # The providers' delivery events for the demo's sent e-mails, posted signed to the demo's
    # web app, so that the invoice pages show delivered and opened (docs/webhooks.md).
    run_with_own_web(settings)
    print_pages(settings)


def print_pages(settings: Settings) -> None:
    """The last lines: the pages people work from, ``dispatch web`` on the demo database
    (docs/web.md). The token is fixed here so the printed URL is the one that opens them."""
    from dispatch.web import server

    token = server.web_token(settings)
    print(
        "The pages (to do, invoices, runs) on the demo database: "
        f"DISPATCH_WEB_TOKEN={token} .venv/bin/dispatch web\n"
        f"  then open {server.url('127.0.0.1', 8765, token)}   (see docs/web.md)"
    )


if __name__ == "__main__":
    main()
