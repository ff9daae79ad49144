"""How fast the Invoices page answers at scale: its first and its last page (and a few
others) over N invoices in the dispatch database, through the real application.

    python -m dispatch.devtools.bench_pages --backend postgres --invoices 1000000

The target (issue 12): first and last page under 200 ms at 1M invoices. The page pages by key
on the primary key's index, so every page is an index walk that stops after one page; an
OFFSET page would read every row before it. The invoices are written straight into the
dispatch database's ``invoices`` table with the database's bulk path (COPY on PostgreSQL),
a mix of statuses as a year of sending leaves them: a run over a million would measure the
pipeline, which ``make bench`` does already.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import io
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import sqlalchemy as sa

from dispatch.config.settings import Settings
from dispatch.devtools.bench import postgres_databases, sqlite_databases
from dispatch.storage.engine import make_engine
from dispatch.storage.migrate import upgrade

TARGET_MS = 200.0
PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
NOW = dt.datetime(2026, 12, 1, 5, tzinfo=dt.UTC)


def invoices_frame(n: int, seed: int = 12) -> pd.DataFrame:
    """``n`` invoices of one organization: 2 % still to send, 1 % void, 60 % paid."""
    rng = np.random.default_rng(seed)
    numbers = np.arange(n)
    issue = pd.Timestamp("2026-01-01") + pd.to_timedelta(numbers % 330, unit="D")
    sending = np.where(rng.random(n) < 0.02, "to_send", "sent")
    accounting = np.select([rng.random(n) < 0.01, rng.random(n) < 0.6], ["void", "paid"], "open")
    sent = sending == "sent"
    return pd.DataFrame(
        {
            "invoice_id": [f"inv_{i:09d}" for i in numbers],
            "org_id": "acme",
            "customer_id": [f"cus_{i:07d}" for i in numbers // 10],
            "number": [f"F-{i:09d}" for i in numbers],
            "issue_date": issue.strftime("%Y-%m-%d"),
            "due_date": (issue + pd.Timedelta(days=30)).strftime("%Y-%m-%d"),
            "currency": "EUR",
            "total_amount": np.round(rng.uniform(10, 5000, n), 2),
            "accounting_status": accounting,
            "first_seen_at": (issue + pd.Timedelta(hours=5)).strftime("%Y-%m-%d %H:%M:%S.%f"),
            "sending_status": sending,
            "sent_at": pd.Series((issue + pd.Timedelta(hours=6)).strftime("%Y-%m-%d %H:%M:%S.%f")).where(
                sent, None
            ),
            "sent_how": pd.Series("automatic", index=range(n)).where(sent, None),
        }
    )


def _write(conn: sa.Connection, table: str, frame: pd.DataFrame) -> None:
    if conn.dialect.name == "postgresql":
        buffer = io.StringIO()
        frame.to_csv(buffer, index=False, header=False)
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        with cursor.copy(f"COPY {table} ({', '.join(frame.columns)}) FROM STDIN (FORMAT csv)") as copy:
            copy.write(buffer.getvalue())
        return
    sql = f"INSERT INTO {table} ({', '.join(frame.columns)}) VALUES ({', '.join('?' * len(frame.columns))})"
    rows = frame.astype(object).where(frame.notna(), None).itertuples(index=False, name=None)
    conn.connection.driver_connection.executemany(sql, rows)  # type: ignore[union-attr]


def fill(url: str, n: int) -> None:
    engine = make_engine(url)
    upgrade(engine)
    frame = invoices_frame(n)
    customers = pd.DataFrame({"customer_id": frame["customer_id"].unique()})
    customers["org_id"], customers["language"] = "acme", "en"
    customers["name"] = "Customer " + customers["customer_id"].str[4:]
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO organizations (org_id, name, timezone, send_time, updated_at) "
                "VALUES ('acme', 'ACME', 'Europe/Paris', '08:30', :t)"
            ),
            {"t": NOW if engine.dialect.name == "postgresql" else NOW.strftime("%Y-%m-%d %H:%M:%S.%f")},
        )
        _write(conn, "customers", customers[["customer_id", "org_id", "name", "language"]])
        _write(conn, "invoices", frame)
    with engine.connect() as conn:
        conn.execute(sa.text("ANALYZE"))
        conn.commit()
    engine.dispose()


@contextlib.contextmanager
def databases(backend: str, pg_admin: str) -> Iterator[str]:
    if backend == "postgres":
        with postgres_databases(pg_admin) as (dispatch_url, _):
            yield dispatch_url
    else:
        with tempfile.TemporaryDirectory(prefix="bench_pages_") as tmp, sqlite_databases(Path(tmp)) as urls:
            yield urls[0]


def measure(url: str, n: int, repeat: int) -> list[tuple[str, float, float]]:
    """(page, median ms, worst ms) of each page, over ``repeat`` requests after one warm-up."""
    from fastapi.testclient import TestClient

    from dispatch.web.server import build

    client = TestClient(build(Settings(dispatch_db_url=url), "bench", "bench"))
    auth = {"Authorization": "Bearer bench"}
    middle = f"inv_{n // 2:09d}"
    pages = [
        ("first page", "/dispatch/invoices"),
        ("last page", "/dispatch/invoices?last=1"),
        ("a middle page", f"/dispatch/invoices?after={middle}"),
        ("to send, first page", "/dispatch/invoices?status=to_send"),
        ("to send, last page", "/dispatch/invoices?status=to_send&last=1"),
        ("void, first page", "/dispatch/invoices?status=void"),
        ("search by number", f"/dispatch/invoices?q=F-{n - 7:09d}"),
        ("JSON, last page", "/dispatch/api/invoices?last=1"),
    ]
    figures = []
    for label, path in pages:
        times = []
        for attempt in range(repeat + 1):
            started = time.perf_counter()
            response = client.get(path, headers=auth)
            elapsed = (time.perf_counter() - started) * 1000
            if response.status_code != 200 or ("inv_" not in response.text):
                raise SystemExit(f"{label}: {response.status_code} {response.text[:200]}")
            if attempt:
                times.append(elapsed)
        figures.append((label, statistics.median(times), max(times)))
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m dispatch.devtools.bench_pages", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--backend", choices=("sqlite", "postgres"), default="postgres")
    parser.add_argument("--invoices", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--pg-admin", default=PG_ADMIN)
    args = parser.parse_args(argv)
    with databases(args.backend, args.pg_admin) as url:
        started = time.perf_counter()
        fill(url, args.invoices)
        print(f"{args.backend}: {args.invoices:,} invoices written in {time.perf_counter() - started:.1f} s")
        figures = measure(url, args.invoices, args.repeat)
    print(
        f"{'page':<22} {'median ms':>10} {'worst ms':>9}  (target: first and last page < {TARGET_MS:.0f} ms)"
    )
    for label, median, worst in figures:
        print(f"{label:<22} {median:>10.1f} {worst:>9.1f}")
    key = {label: worst for label, _, worst in figures}
    ok = key["first page"] < TARGET_MS and key["last page"] < TARGET_MS
    print(f"first and last page under {TARGET_MS:.0f} ms: {'yes' if ok else 'NO'}")


if __name__ == "__main__":
    main()
