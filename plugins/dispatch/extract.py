"""Stage 1, extract: import what changed in the accounting system since the last run.

Incremental by ``updated_at`` against a stored watermark (re-reading a short look-back
window, since rows can be committed late); upserts are idempotent, so the overlap and a
retried task are harmless. Malformed rows are split off with a boolean mask per rule and go
to ``rejected_invoices`` with a named reason (SPEC B6); the rest proceeds.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass, field

import pandas as pd
from sqlalchemy import Connection, Engine, select

from dispatch import import_rules as rules
from dispatch import source
from dispatch.db.bulk import frame_records, insert_ignore, upsert
from dispatch.db.schema import customers, invoices, organizations, rejected_invoices, watermarks
from dispatch.db.session import Database
from dispatch.runs import RunContext

WATERMARK = "accounting.invoices"
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)

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
    watermark: str | None = None

    def as_dict(self) -> dict:
        return self.__dict__.copy()


def validate_invoices(
    raw: pd.DataFrame,
    customers: rules.Customers,
    known_orgs: set[str],
    existing: pd.DataFrame,
    as_of: dt.datetime,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split raw rows into (valid, rejected). ``rejected`` has a ``reason`` column.

    Rules run as whole-column masks (``dispatch.import_rules``); a row gets the first
    failing rule's reason. ``existing`` holds (invoice_id, org_id, number) already
    imported, for duplicate numbers.
    """
    df = rules.parse_invoices(rules.collapse_copies(raw))
    checks = rules.invoice_rules(df, customers, known_orgs, as_of)

    # duplicate numbers: against what is imported (another id) and within this extract
    key = df["org_id"].astype("string") + "\x1f" + df["number"].astype("string").str.strip()
    ex_key = existing["org_id"].astype("string") + "\x1f" + existing["number"].astype("string")
    owner_of = pd.Series(existing["invoice_id"].to_numpy(), index=ex_key.to_numpy())
    owner_of = owner_of[~owner_of.index.duplicated()]
    taken = key.map(owner_of)
    dup_existing = taken.notna() & (taken != df["invoice_id"])
    first_id = df.assign(_k=key).groupby("_k")["invoice_id"].transform("first")
    dup_batch = first_id != df["invoice_id"]
    checks.append(("duplicate_number", (dup_existing | dup_batch).fillna(False)))

    reason = rules.first_reason(df.index, checks)
    bad = reason.notna()
    rejected = raw.loc[df.index[bad]].copy()
    rejected["reason"] = reason[bad].astype(str)
    valid = df.loc[~bad].copy()
    valid["currency"] = valid["currency"].astype("string").str.strip().str.upper()
    return valid, rejected


def _raw_text(row: dict) -> str:
    return json.dumps(row, default=str, sort_keys=True, ensure_ascii=False)


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
                "invoice_id": None if iid is None or pd.isna(iid) else str(iid).replace("\x00", ""),
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


def extract_invoices(
    db: Database, accounting: Engine, ctx: RunContext, lookback: dt.timedelta
) -> ExtractSummary:
    """Import invoices changed since the watermark, as of ``ctx.as_of``."""
    summary = ExtractSummary()
    with db.read() as conn:
        mark = conn.execute(select(watermarks.c.value).where(watermarks.c.name == WATERMARK)).scalar()
        known_orgs = set(conn.execute(select(organizations.c.org_id)).scalars())
    since = (mark - lookback) if mark else EPOCH
    raw = source.read_changed_invoices(accounting, since, ctx.as_of)
    cust = rules.check_customers(source.read_customers(accounting))
    unplaceable = unplaceable_rows(accounting)
    summary.read = len(raw)

    with db.tx() as conn:
        summary.customers_changed = _sync_customers(conn, cust.usable)
        _quarantine(conn, unplaceable, ctx, summary)
        if raw.empty:
            return summary
        existing = pd.read_sql(select(invoices.c.invoice_id, invoices.c.org_id, invoices.c.number), conn)
        valid, rejected = validate_invoices(raw, cust, known_orgs, existing, ctx.as_of)
        _quarantine(conn, rejected, ctx, summary)

        if not valid.empty:
            is_new = ~valid["invoice_id"].isin(existing["invoice_id"])
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
            # first_seen_* only land on insert: the upsert updates the MUTABLE columns alone
            records = frame_records(out.assign(first_seen_at=ctx.as_of, first_seen_run_id=ctx.run_id))
            upsert(conn, invoices, records, ["invoice_id"], MUTABLE)
            summary.imported = int(is_new.sum())
            summary.updated = int((~is_new).sum())

        newest = rules.parse_instants(raw["updated_at"]).max()
        if pd.notna(newest):
            value = max(newest.to_pydatetime(), mark) if mark else newest.to_pydatetime()
            upsert(conn, watermarks, [{"name": WATERMARK, "value": value}], ["name"], ["value"])
            summary.watermark = value.isoformat()
    return summary


def _sync_customers(conn: Connection, incoming: pd.DataFrame) -> int:
    """Keep the customers snapshot (names, parents, languages) in step; write only changes.
    ``incoming`` holds the usable customer rows (``import_rules.check_customers``)."""
    if incoming.empty:
        return 0
    cols = rules.CUSTOMER_COLUMNS
    incoming = incoming[cols]
    current = pd.read_sql(select(*[customers.c[c] for c in cols]), conn)
    merged = incoming.merge(current, on="customer_id", how="left", suffixes=("", "_old"), indicator=True)
    changed = merged["_merge"] == "left_only"
    for c in cols[1:]:
        changed |= merged[c].astype("string").fillna("\x00") != merged[f"{c}_old"].astype("string").fillna(
            "\x00"
        )
    rows = frame_records(incoming.loc[changed.to_numpy()])
    upsert(conn, customers, rows, ["customer_id"], cols[1:])
    return len(rows)
