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
from babel.numbers import list_currencies
from sqlalchemy import Engine, select

from dispatch import source
from dispatch.db.bulk import frame_records, insert_ignore, upsert
from dispatch.db.schema import customers, invoices, organizations, rejected_invoices, watermarks
from dispatch.db.session import Database
from dispatch.runs import RunContext

WATERMARK = "accounting.invoices"
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
ISO_CURRENCIES = frozenset(list_currencies())
ACCOUNTING_STATUSES = ("open", "paid", "void")

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


def _instants(s: pd.Series) -> pd.Series:
    """``updated_at`` as UTC. SQLite sources hold text whose format varies with the writer
    ('… 00:00:00' and '… 00:00:00.000000'): parse each as ISO 8601 rather than infer one
    format from the first row, and let an unreadable value be missing, not stop the run."""
    return pd.to_datetime(s, utc=True, errors="coerce", format="ISO8601")


def _blank(s: pd.Series) -> pd.Series:
    return s.isna() | (s.astype("string").str.strip() == "")


def validate_invoices(
    raw: pd.DataFrame, known_customers: pd.DataFrame, known_orgs: set[str], existing: pd.DataFrame
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split raw rows into (valid, rejected). ``rejected`` has a ``reason`` column.

    Rules run as whole-column masks; a row gets the first failing rule's reason.
    ``existing`` holds (invoice_id, org_id, number) already imported, for duplicates.
    """
    df = raw.copy()
    # ISO 8601 per value: inferring one format from the first row would turn a valid
    # '2026-12-02 00:00:00' next to '2026-12-02' into a missing date.
    df["issue_date_p"] = pd.to_datetime(df["issue_date"], errors="coerce", format="ISO8601")
    df["due_date_p"] = pd.to_datetime(df["due_date"], errors="coerce", format="ISO8601")
    df["total_p"] = pd.to_numeric(df["total_amount"], errors="coerce")
    currency = df["currency"].astype("string").str.strip()
    cust = known_customers.set_index("customer_id")["org_id"]
    customer_org = df["customer_id"].map(cust)

    # duplicate numbers: against what is imported (another id) and within this extract
    key = df["org_id"].astype("string") + "\x1f" + df["number"].astype("string").str.strip()
    ex_key = existing["org_id"].astype("string") + "\x1f" + existing["number"].astype("string")
    owner_of = pd.Series(existing["invoice_id"].to_numpy(), index=ex_key.to_numpy())
    owner_of = owner_of[~owner_of.index.duplicated()]
    taken = key.map(owner_of)
    dup_existing = taken.notna() & (taken != df["invoice_id"])
    first_id = df.assign(_k=key).groupby("_k")["invoice_id"].transform("first")
    dup_batch = first_id != df["invoice_id"]

    rules: list[tuple[str, pd.Series]] = [
        ("missing_invoice_id", _blank(df["invoice_id"])),
        ("unknown_org", ~df["org_id"].isin(known_orgs)),
        ("missing_number", _blank(df["number"])),
        ("missing_issue_date", df["issue_date"].isna()),
        ("invalid_issue_date", df["issue_date_p"].isna()),
        ("invalid_due_date", df["due_date"].notna() & df["due_date_p"].isna()),
        ("unknown_customer", customer_org.isna()),
        ("customer_org_mismatch", customer_org.notna() & (customer_org != df["org_id"])),
        (
            "bad_currency",
            ~currency.str.upper().isin(ISO_CURRENCIES).fillna(False) | (currency.str.len() != 3),
        ),
        ("invalid_total", df["total_p"].isna()),
        ("negative_total", df["total_p"] < 0),
        ("bad_status", ~df["status"].isin(ACCOUNTING_STATUSES)),
        ("duplicate_number", (dup_existing | dup_batch).fillna(False)),
    ]
    reason = pd.Series(pd.NA, index=df.index, dtype="string")
    for name, mask in rules:
        mask = mask.fillna(True).astype(bool)
        reason = reason.mask(reason.isna() & mask, name)
    bad = reason.notna()
    rejected = raw.loc[bad].copy()
    rejected["reason"] = reason[bad].astype(str)
    valid = df.loc[~bad].copy()
    valid["currency"] = currency[~bad].str.upper()
    return valid, rejected


def _raw_text(row: dict) -> str:
    return json.dumps(row, default=str, sort_keys=True, ensure_ascii=False)


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
    cust = source.read_customers(accounting)
    summary.read = len(raw)

    with db.tx() as conn:
        summary.customers_changed = _sync_customers(conn, cust)
        if raw.empty:
            return summary
        existing = pd.read_sql(select(invoices.c.invoice_id, invoices.c.org_id, invoices.c.number), conn)
        valid, rejected = validate_invoices(raw, cust, known_orgs, existing)

        if not rejected.empty:
            records = rejected.drop(columns=["reason"]).to_dict("records")
            rows = []
            for rec, reason in zip(records, rejected["reason"], strict=True):
                text_row = _raw_text(rec)
                rows.append(
                    {
                        "invoice_id": None if pd.isna(rec.get("invoice_id")) else str(rec["invoice_id"]),
                        "run_id": ctx.run_id,
                        "reason": reason,
                        "row": text_row,
                        "at": ctx.as_of,
                        "row_hash": hashlib.sha256(text_row.encode()).hexdigest(),
                    }
                )
            insert_ignore(conn, rejected_invoices, rows, ["row_hash", "reason"])
            summary.rejected = len(rows)
            summary.rejected_by_reason = rejected["reason"].value_counts().to_dict()

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
                    "total_amount": valid["total_p"].round(2),
                    "accounting_status": valid["status"].astype(str),
                    "pdf_path": valid["pdf_path"],
                    "source_updated_at": _instants(valid["updated_at"]),
                }
            )
            # first_seen_* only land on insert: the upsert updates the MUTABLE columns alone
            records = frame_records(out.assign(first_seen_at=ctx.as_of, first_seen_run_id=ctx.run_id))
            upsert(conn, invoices, records, ["invoice_id"], MUTABLE)
            summary.imported = int(is_new.sum())
            summary.updated = int((~is_new).sum())

        newest = _instants(raw["updated_at"]).max()
        if pd.notna(newest):
            value = max(newest.to_pydatetime(), mark) if mark else newest.to_pydatetime()
            upsert(conn, watermarks, [{"name": WATERMARK, "value": value}], ["name"], ["value"])
            summary.watermark = value.isoformat()
    return summary


def _sync_customers(conn, cust: pd.DataFrame) -> int:  # type: ignore[no-untyped-def]
    """Keep the customers snapshot (names, parents, languages) in step; write only changes."""
    if cust.empty:
        return 0
    cols = ["customer_id", "org_id", "name", "parent_customer_id", "language"]
    incoming = cust[cols].copy()
    incoming["language"] = incoming["language"].fillna("en").replace("", "en")
    incoming["name"] = incoming["name"].fillna("")
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
