"""Stage 1, extract: import what changed in the accounting system since the last run.

What a run costs follows what changed, not the history:

* **The window.** Rows are read where ``updated_at`` lies in [since, as-of], with ``since``
  the instant the previous run read up to (its as-of, or the wall clock if that was earlier)
  minus the look-back. A row committed late — stamped before that read but committed after
  it, by a transaction open for less than the look-back — is therefore read by the next run;
  a bulk import that stamped the whole history with one ``updated_at`` is not read again,
  because the window starts from when the last run read, not from the newest ``updated_at``.
  Re-reading is idempotent (upserts, quarantine keyed by the row's hash).
* **Chunks.** The window is streamed in chunks of ``CHUNK_ROWS`` (a server-side cursor),
  each validated and written before the next is read, all in one transaction: memory follows
  the chunk, and a failure leaves nothing half-imported.
* **History by joins.** A chunk's keys are staged in a temporary table and joined with
  ``invoices`` (primary key; index on organization and number) to find the ids already
  imported and the numbers another invoice holds; customers are looked up by the ids the
  chunk references, and only those are synced.

Malformed rows go to ``rejected_invoices`` with a named reason (``dispatch.rules.import_rules``,
SPEC B6); the rest proceeds.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import json
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import cast

import pandas as pd
from sqlalchemy import Connection, Engine, select

from dispatch.rules import import_rules as rules
from dispatch.runtime.runs import RunContext
from dispatch.stages.tag_new_invoices import initial_statuses
from dispatch.storage import bulk_extract, source
from dispatch.storage.bulk import append_rows, frame_records, insert_ignore, upsert
from dispatch.storage.schema import (
    customers,
    invoices,
    organizations,
    rejected_invoices,
    template_queue,
    watermarks,
)
from dispatch.storage.session import Database

#: the newest ``updated_at`` imported (reported; the window of databases from before READ_UNTIL)
WATERMARK = "accounting.invoices"
#: the instant the last extract read the source up to: the next window starts there, minus the look-back
READ_UNTIL = "accounting.invoices.read_until"
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
#: source rows per chunk: what the extract holds in memory at once
CHUNK_ROWS = 50_000

# Fields of an already-imported invoice that follow the accounting system on later runs.
MUTABLE = ("due_date", "currency", "total_amount", "accounting_status", "pdf_path", "source_updated_at")


@dataclass
class ExtractSummary:
    read: int = 0
    imported: int = 0
    updated: int = 0
    rejected: int = 0
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    customers_changed: int = 0
    chunks: int = 0
    bulk_load: bool = False  # loaded by COPY, indexes built after (storage.bulk_extract)
    since: str | None = None
    watermark: str | None = None

    def as_dict(self) -> dict:
        return self.__dict__.copy()


def wall_clock() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def window_start(
    read_until: dt.datetime | None, newest: dt.datetime | None, lookback: dt.timedelta
) -> dt.datetime:
    """Where this run's window starts: the look-back before what the last run read up to;
    a database from before that mark falls back to the look-back before the newest row."""
    if read_until is not None:
        return read_until - lookback
    if newest is not None:
        return newest - lookback
    return EPOCH


def no_history(_keys: pd.DataFrame) -> set[str]:
    return set()


def validate_invoices(
    raw: pd.DataFrame,
    customers: rules.Customers,
    known_orgs: set[str],
    as_of: dt.datetime,
    numbers_taken: Callable[[pd.DataFrame], set[str]] = no_history,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split raw rows into (valid, rejected). ``rejected`` has a ``reason`` column.

    Rules run as whole-column masks (``dispatch.rules.import_rules``); a row gets the first
    failing rule's reason. The rows that pass them all are checked for duplicate numbers
    last: within ``raw`` the first id of an (organization, number) keeps it, and
    ``numbers_taken(keys)`` names the ids of ``keys`` (invoice_id, org_id, number) whose
    number another imported invoice already holds.
    """
    df = rules.parse_invoices(rules.collapse_copies(raw))
    reason = rules.first_reason(df.index, rules.invoice_rules(df, customers, known_orgs, as_of))
    ok = reason.isna()
    keys = pd.DataFrame(
        {
            "invoice_id": df.loc[ok, "invoice_id"].astype(str),
            "org_id": df.loc[ok, "org_id"].astype(str),
            "number": df.loc[ok, "number"].astype(str).str.strip(),
        }
    )
    first_id = keys.groupby(["org_id", "number"])["invoice_id"].transform("first")
    duplicate = (first_id != keys["invoice_id"]) | keys["invoice_id"].isin(numbers_taken(keys))
    reason[duplicate.index[duplicate.to_numpy()]] = "duplicate_number"

    bad = reason.notna()
    rejected = raw.loc[df.index[bad]].copy()
    rejected["reason"] = reason[bad].astype(str)
    valid = df.loc[~bad].copy()
    valid["currency"] = valid["currency"].astype("string").str.strip().str.upper()
    return valid, rejected


def _json_value(value: object) -> object:
    """A value valid JSON can hold: a missing one is null, an infinite or NaN number its
    text (JSON has no NaN / Infinity: ``json_valid`` and ``::jsonb`` would refuse the row)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else str(value)
    return value


def _raw_text(row: dict) -> str:
    clean = {k: _json_value(v) for k, v in row.items()}
    return json.dumps(clean, default=str, sort_keys=True, ensure_ascii=False, allow_nan=False)


def _quarantine(conn: Connection, rejected: pd.DataFrame, ctx: RunContext, summary: ExtractSummary) -> None:
    """Rejected rows, raw, into ``rejected_invoices``; a row already quarantined for the
    same reason (re-read by the look-back, or reported again) is not inserted twice."""
    if rejected.empty:
        return
    raw = rejected.drop(columns=["reason"]).astype(object)
    records = raw.where(raw.notna(), None).to_dict("records")  # missing is null, not NaN
    rows = []
    for rec, reason in zip(records, rejected["reason"], strict=True):
        text_row = _raw_text(rec)
        iid = rec.get("invoice_id")
        rows.append(
            {
                "invoice_id": None if iid is None else str(iid).replace("\x00", ""),
                "run_id": ctx.run_id,
                "reason": reason,
                "row": text_row.replace("\x00", "\\u0000"),
                "at": ctx.as_of,
                "row_hash": hashlib.sha256(text_row.encode()).hexdigest(),
            }
        )
    insert_ignore(conn, rejected_invoices, rows, ["row_hash", "reason"])
    summary.rejected += len(rows)
    for reason, n in rejected["reason"].value_counts().items():
        summary.rejected_by_reason[str(reason)] = summary.rejected_by_reason.get(str(reason), 0) + int(n)


def unplaceable_rows(accounting: Engine) -> pd.DataFrame:
    """Source rows whose ``updated_at`` no window holds, with their reason (reported, SPEC B6)."""
    raw = source.read_unplaceable_invoices(accounting, EPOCH)
    if raw.empty:
        return raw.assign(reason=pd.Series(dtype=str))
    missing = raw["updated_at"].isna()
    return raw.assign(reason=missing.map({True: "missing_updated_at", False: "invalid_updated_at"}))


def whole_invoices(frames: Iterable[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    """Re-cut the source's chunks so that every row of an invoice id is in the same one: the
    rows of the last id of a chunk wait for the next (the query orders by invoice_id)."""
    carry: pd.DataFrame | None = None
    for frame in frames:
        if carry is not None:
            frame = pd.concat([carry, frame], ignore_index=True)
        if frame.empty:
            continue
        last = frame["invoice_id"].iloc[-1]
        tail = frame["invoice_id"].isna() if pd.isna(last) else frame["invoice_id"] == last
        carry, frame = frame.loc[tail], frame.loc[~tail]
        if not frame.empty:
            yield frame.reset_index(drop=True)
    if carry is not None and not carry.empty:
        yield carry.reset_index(drop=True)


class CustomerBook:
    """The customers of this extract, looked up in the source by the ids the chunks reference
    (each id once per run) and synced into the snapshot when they changed."""

    def __init__(self, accounting: Engine) -> None:
        self.accounting = accounting
        self.org_of: dict[str, str] = {}
        self.refused: dict[str, str] = {}
        self.unknown: set[str] = set()  # referenced, not in the source: asked once

    def for_chunk(self, conn: Connection, customer_ids: pd.Series) -> tuple[rules.Customers, int]:
        ids = pd.Series(customer_ids.dropna().astype(str).unique())
        seen = ids.isin(self.org_of.keys()) | ids.isin(self.refused.keys()) | ids.isin(self.unknown)
        new = ids[~seen]
        changed = 0
        if not new.empty:
            checked = rules.check_customers(source.read_customers(self.accounting, new.tolist()))
            changed = _sync_customers(conn, checked.usable)
            self.org_of.update(zip(checked.usable["customer_id"], checked.usable["org_id"], strict=True))
            self.refused.update(cast("dict[str, str]", checked.refused.to_dict()))
            self.unknown.update(set(new) - self.org_of.keys() - self.refused.keys())
        mine = ids[ids.isin(self.org_of.keys())]
        usable = pd.DataFrame({"customer_id": mine, "org_id": mine.map(self.org_of)})
        refused = pd.Series(self.refused, dtype=object)
        return rules.Customers(usable, refused[refused.index.isin(ids)]), changed


def extract_invoices(
    db: Database,
    accounting: Engine,
    ctx: RunContext,
    lookback: dt.timedelta,
    *,
    chunk_rows: int | None = None,
) -> ExtractSummary:
    """Import invoices changed since the last read, as of ``ctx.as_of``, ``chunk_rows``
    (default ``CHUNK_ROWS``) source rows at a time."""
    chunk_rows = chunk_rows or CHUNK_ROWS
    summary = ExtractSummary()
    with db.read() as conn:
        marks: dict[str, dt.datetime] = dict(
            conn.execute(
                select(watermarks.c.name, watermarks.c.value).where(
                    watermarks.c.name.in_([WATERMARK, READ_UNTIL])
                )
            )
            .tuples()
            .all()
        )
        switches: dict[str, dt.datetime | None] = dict(
            conn.execute(select(organizations.c.org_id, organizations.c.invoice_sending_enabled_at))
            .tuples()
            .all()
        )
    newest_mark, read_until = marks.get(WATERMARK), marks.get(READ_UNTIL)
    since = window_start(read_until, newest_mark, lookback)
    # what this read covers: up to the as-of instant, or the wall clock when the run is "as
    # of" the future (rows stamped between now and then may still be committed late)
    covered = min(ctx.as_of, wall_clock())
    summary.since = since.isoformat()
    unplaceable = unplaceable_rows(accounting)
    book = CustomerBook(accounting)
    newest: pd.Timestamp | None = None

    with db.tx() as conn, source.stream_changed_invoices(accounting, since, ctx.as_of, chunk_rows) as frames:
        chunks = whole_invoices(frames)
        first = next(chunks, None)
        # a first run into an (almost) empty table loads in bulk: decided, and the table
        # locked, before this transaction writes anything; its indexes built at the end
        with bulk_extract.bulk_load_of_invoices(conn, 0 if first is None else len(first)) as load:
            summary.bulk_load = load is not None
            _quarantine(conn, unplaceable, ctx, summary)
            bulk_extract.create_keys_table(conn)
            for raw in itertools.chain([] if first is None else [first], chunks):
                summary.read += len(raw)
                summary.chunks += 1
                stamp = rules.parse_instants(raw["updated_at"]).max()
                if pd.notna(stamp) and (newest is None or stamp > newest):
                    newest = stamp
                _import_chunk(conn, raw, book, switches, ctx, summary, load=load)
            bulk_extract.drop_keys_table(conn)

        if newest is not None:
            value = max(newest.to_pydatetime(), newest_mark) if newest_mark else newest.to_pydatetime()
            upsert(conn, watermarks, [{"name": WATERMARK, "value": value}], ["name"], ["value"])
            summary.watermark = value.isoformat()
        until = max(covered, read_until) if read_until else covered
        upsert(conn, watermarks, [{"name": READ_UNTIL, "value": until}], ["name"], ["value"])
    return summary


def _import_chunk(
    conn: Connection,
    raw: pd.DataFrame,
    book: CustomerBook,
    switches: dict[str, dt.datetime | None],
    ctx: RunContext,
    summary: ExtractSummary,
    *,
    load: bulk_extract.BulkLoad | None = None,
) -> None:
    """Validate one chunk against the rules and the history, quarantine its bad rows and
    upsert the good ones; a new invoice is inserted tagged (``tag_new_invoices``' rule, for
    its organization's sending switch in ``switches``) and, when to send, queued. In a
    bulk ``load`` (the table locked by this transaction) the new invoices are COPYed
    straight into the table (and into the queue, if it was empty), the known ones upserted."""
    cust, changed = book.for_chunk(conn, raw["customer_id"])
    summary.customers_changed += changed
    known: set[str] = set()

    def history(keys: pd.DataFrame) -> set[str]:
        """Stage the keys that passed every other rule; join them with the history."""
        bulk_extract.stage_keys(conn, keys)
        known.update(bulk_extract.known_ids(conn))
        return bulk_extract.numbers_taken(conn)

    valid, rejected = validate_invoices(raw, cust, set(switches), ctx.as_of, history)
    _quarantine(conn, rejected, ctx, summary)
    if valid.empty:
        return
    is_new = ~valid["invoice_id"].astype(str).isin(known)
    out = pd.DataFrame(
        {
            "invoice_id": valid["invoice_id"].astype(str),
            "org_id": valid["org_id"].astype(str),
            "customer_id": valid["customer_id"].astype(str),
            "number": valid["number"].astype(str).str.strip(),
            "issue_date": valid["issue_date_p"].dt.date,
            "due_date": valid["due_date_p"].dt.date,
            "currency": valid["currency"].astype(str),
            # rounded to the cent, as NUMERIC(14,2) stores it (half to even)
            "total_amount": valid["total_p"].round(2),
            "accounting_status": valid["status"].astype(str),
            "pdf_path": valid["pdf_path"],
            "source_updated_at": valid["updated_at_p"],
        }
    )
    enabled_at = pd.to_datetime(out["org_id"].map(switches), utc=True)
    status = initial_statuses(enabled_at, pd.Timestamp(ctx.as_of), out["accounting_status"])
    # first_seen_* and the status only land on insert: the upsert updates the MUTABLE columns alone
    rows = out.assign(first_seen_at=ctx.as_of, first_seen_run_id=ctx.run_id, sending_status=status)
    if load is not None:
        new_rows = is_new.to_numpy()
        append_rows(conn, invoices, rows.loc[new_rows])
        upsert(conn, invoices, rows.loc[~new_rows], ["invoice_id"], MUTABLE)
    else:
        upsert(conn, invoices, rows, ["invoice_id"], MUTABLE)
    queue = is_new.to_numpy() & (status == "to_send")
    if queue.any():
        waiting = pd.DataFrame({"invoice_id": out["invoice_id"].to_numpy()[queue], "queued_at": ctx.as_of})
        if load is not None and load.queue_empty:
            append_rows(conn, template_queue, waiting)
        else:
            insert_ignore(conn, template_queue, waiting, ["invoice_id"])
    summary.imported += int(is_new.sum())
    summary.updated += int((~is_new).sum())


def _sync_customers(conn: Connection, incoming: pd.DataFrame) -> int:
    """Keep the customers snapshot (names, parents, languages) of these customers in step;
    write only changes. ``incoming`` holds usable rows (``import_rules.check_customers``)."""
    if incoming.empty:
        return 0
    cols = rules.CUSTOMER_COLUMNS
    incoming = incoming[cols]
    ids = incoming["customer_id"].tolist()
    parts = [
        pd.read_sql(
            select(*[customers.c[c] for c in cols]).where(
                customers.c.customer_id.in_(ids[start : start + source.IN_LIST])
            ),
            conn,
        )
        for start in range(0, len(ids), source.IN_LIST)
    ]
    current = pd.concat(parts, ignore_index=True)
    merged = incoming.merge(current, on="customer_id", how="left", suffixes=("", "_old"), indicator=True)
    changed = merged["_merge"] == "left_only"
    for c in cols[1:]:
        changed |= merged[c].astype("string").fillna("\x00") != merged[f"{c}_old"].astype("string").fillna(
            "\x00"
        )
    rows = frame_records(incoming.loc[changed.to_numpy()])
    upsert(conn, customers, rows, ["customer_id"], cols[1:])
    return len(rows)
