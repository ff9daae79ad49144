"""``make demo``: build the demo, run the pipeline over a sequence of weekdays, summarize.

Works on the embedded default (SQLite + the file outbox under ``var/``). The demo's own
state is reset first so that the story always starts from the same point.
"""

from __future__ import annotations

import datetime as dt
import shutil

import numpy as np
import pandas as pd
from sqlalchemy import text

from dispatch.config.load import load_config_file
from dispatch.config.settings import DEFAULT_DISPATCH_DB, Settings, load_settings_or_exit
from dispatch.devtools.demo_data import DemoSummary, apply_accounting_changes, build_demo
from dispatch.paths import resolve
from dispatch.people.operations import todo_list
from dispatch.runtime.pipeline import run_pipeline
from dispatch.storage.engine import make_engine
from dispatch.storage.migrate import upgrade

RUN_TIME = dt.time(5, 0)


def demo_days(today: dt.date, before: int = 6, after: int = 3) -> list[dt.datetime]:
    """Weekday runs at 05:00 UTC: ``before`` weekdays up to today and ``after`` after it."""
    start = np.busday_offset(np.datetime64(today), -before, roll="backward")
    days = [np.busday_offset(start, i, roll="forward") for i in range(before + after + 1)]
    return [dt.datetime.combine(pd.Timestamp(d).date(), RUN_TIME, tzinfo=dt.UTC) for d in days]


def reset_embedded_state(settings: Settings) -> None:
    """Start over, but only on the embedded default paths: never wipe a configured database."""
    if settings.dispatch_db_url.endswith(DEFAULT_DISPATCH_DB.removeprefix("sqlite:///")):
        for suffix in ("", "-wal", "-shm"):
            resolve("var/dispatch.db" + suffix).unlink(missing_ok=True)
    if settings.outbox_dir == resolve("var/outbox"):
        shutil.rmtree(settings.outbox_dir, ignore_errors=True)


def prepare(settings: Settings, today: dt.date) -> DemoSummary:
    reset_embedded_state(settings)
    summary = build_demo(
        settings.accounting_db_url,
        settings.pdf_root,  # the demo's invoice PDFs live where runs read them
        today,
        config_out=resolve("var/demo/config.yaml"),
    )
    engine = make_engine(settings.dispatch_db_url)
    upgrade(engine)
    load_config_file(
        summary.config_path,
        engine,
        accounting_engine=make_engine(settings.accounting_db_url),
        now=dt.datetime.now(dt.UTC),
    )
    return summary


def day_line(as_of: dt.datetime, counts: dict) -> dict:
    run = counts.get("run", {})
    return {
        "run (UTC)": f"{as_of:%a %Y-%m-%d %H:%M}",
        "imported": run.get("imported", 0),
        "rejected": run.get("rejected", 0),
        "actions": run.get("events.created", 0),
        "sent": run.get("events.sent", 0),
        "to do": run.get("events.manual", 0),
        "cancelled": run.get("events.cancelled", 0),
    }


def print_summary(settings: Settings, lines: list[dict], summary: DemoSummary) -> None:
    from tabulate import tabulate

    engine = make_engine(settings.dispatch_db_url)
    print("\nOutcomes per run")
    print(tabulate(lines, headers="keys"))
    with engine.connect() as conn:
        totals = pd.read_sql(
            text(
                "SELECT sending_status, COALESCE(sent_how, '') AS sent_how, count(*) AS invoices "
                "FROM invoices GROUP BY sending_status, sent_how ORDER BY 1, 2"
            ),
            conn,
        )
        channels = pd.read_sql(
            text(
                "SELECT channel, status, COALESCE(manual_reason, '') AS reason, count(*) AS actions "
                "FROM invoice_actions GROUP BY channel, status, manual_reason ORDER BY 1, 2, 3"
            ),
            conn,
        )
        without = pd.read_sql(text("SELECT * FROM invoices_without_template ORDER BY invoice_id"), conn)
        rejected = pd.read_sql(text("SELECT invoice_id, reason FROM rejected_invoices ORDER BY reason"), conn)
    print("\nInvoices by sending status")
    print(tabulate(totals.to_dict("list"), headers="keys", showindex=False))
    print("\nActions by channel and status")
    print(tabulate(channels.to_dict("list"), headers="keys", showindex=False))
    todo = todo_list(engine)
    print(f"\nTo-do list (Invoicing): {len(todo)} open manual actions")
    if not todo.empty:
        print(
            tabulate(
                todo[
                    ["owner_user_id", "invoice_number", "customer_name", "channel", "manual_reason"]
                ].to_dict("list"),
                headers="keys",
                showindex=False,
            )
        )
    print(f"\nTo send, without template (assign a plan): {', '.join(without['invoice_id']) or 'none'}")
    print(
        "Rejected at import: "
        + (", ".join(f"{i} ({r})" for i, r in rejected.itertuples(index=False)) or "none")
    )
    out = settings.outbox_dir
    files = {
        ch: len(list((out / ch).glob("*.*"))) if (out / ch).exists() else 0
        for ch in ("email", "sms", "letter")
    }
    print(f"\nOutbox: {out}  (e-mails {files['email']}, SMS {files['sms']}, letters {files['letter']})")
    print(f"Dispatch database: {settings.dispatch_db_url}")
    print(
        "Try: .venv/bin/dispatch todo   ·   .venv/bin/dispatch invoices --status to_send   ·   "
        ".venv/bin/dispatch preview"
    )


def announce(summary: DemoSummary) -> None:
    """The demo's first line: what was built, for which day."""
    print(
        f"Demo built for today {summary.today}: {summary.invoices} accounting rows "
        f"({summary.malformed} malformed), {summary.customers} customers, "
        f"organizations {', '.join(summary.org_ids)}"
    )


def main() -> None:
    settings = load_settings_or_exit()
    today = dt.datetime.now(dt.UTC).date()
    summary = prepare(settings, today)
    announce(summary)
    lines = []
    for as_of in demo_days(today):
        apply_accounting_changes(settings.accounting_db_url, summary.changes, upto=as_of)
        report = run_pipeline(settings, as_of)
        lines.append(day_line(as_of, report.counts))
        print(f"ran as of {as_of:%a %Y-%m-%d %H:%M}Z: sent {lines[-1]['sent']}, to do {lines[-1]['to do']}")
    print_summary(settings, lines, summary)


if __name__ == "__main__":
    main()
