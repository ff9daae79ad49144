"""The extract reads its window through the driver's cursor (``storage.source``): a failing
query still raises SQLAlchemy's error, with its statement, so the run's one line names the
query file and what the accounting database lacks."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import sqlalchemy as sa
from dispatch.storage import errors, source


def test_a_missing_column_in_the_window_query_is_explained(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'acc.db'}")
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE invoices (invoice_id TEXT, updated_at TEXT)"))
    since = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    with pytest.raises(sa.exc.OperationalError) as raised:
        with source.stream_changed_invoices(engine, since, since, 10) as frames:
            list(frames)
    line = errors.explain(raised.value)
    assert line is not None and "no column" in line and "(query sql/extract_invoices.sql)" in line
    engine.dispose()


def test_the_window_comes_in_frames_of_the_chunk_size(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'acc.db'}")
    columns = "invoice_id, org_id, customer_id, number, issue_date, due_date, currency, total_amount"
    with engine.begin() as conn:
        conn.execute(sa.text(f"CREATE TABLE invoices ({columns}, status, pdf_path, updated_at TEXT)"))
        for n in range(5):
            conn.execute(
                sa.text(
                    f"INSERT INTO invoices VALUES ('i{n}', 'acme', 'c1', 'N-{n}', '2026-12-01', NULL,"
                    " 'EUR', 10.5, 'open', NULL, '2026-12-01 04:00:00.000000')"
                )
            )
    since, until = dt.datetime(2026, 12, 1, tzinfo=dt.UTC), dt.datetime(2026, 12, 2, tzinfo=dt.UTC)
    with source.stream_changed_invoices(engine, since, until, 2) as frames:
        parts = list(frames)
    assert [len(p) for p in parts] == [2, 2, 1]
    assert list(parts[0]["invoice_id"]) == ["i0", "i1"] and parts[0]["total_amount"].iloc[0] == 10.5
    engine.dispose()
