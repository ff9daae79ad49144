"""The reference accounting source (CONTRACT §2): the tables the demo, the benchmark and the tests
write, and that ``sql/extract_*.sql`` read.

In production the accounting system is someone else's database and we only read it; this schema
exists so that the project can be run and tested without one. It is deliberately permissive —
no foreign keys, nullable business columns — because the pipeline must cope with what real
accounting systems hold: invoices of unknown customers, rows without an issue date, currencies
that are not ISO codes (SPEC B6). Rejecting those is the extract's job, not the schema's.

``updated_at`` is a naive ``TIMESTAMP`` holding UTC, as many accounting systems store it; the
extract query compares it with naive UTC bounds. It is nullable here, like the business
columns, because a source may hold rows no extract window can place; the extract reports them.
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    Date,
    DateTime,
    Engine,
    Index,
    MetaData,
    Numeric,
    Table,
    Text,
)

NAMING = {"ix": "ix_%(table_name)s_%(column_0_N_name)s", "pk": "pk_%(table_name)s"}

#: The accounting source's tables; separate from the dispatch metadata (both have a
#: ``customers`` and an ``invoices`` table, so they live in different databases).
accounting_metadata = MetaData(naming_convention=NAMING)

customers = Table(
    "customers",
    accounting_metadata,
    Column("customer_id", Text, primary_key=True),
    Column("org_id", Text),  # NULL is malformed: its invoices are rejected (invalid_customer)
    Column("name", Text),
    Column("parent_customer_id", Text),
    Column("language", Text),  # 'fr', 'en', …; NULL means 'en'
)

contacts = Table(
    "contacts",
    accounting_metadata,
    Column("contact_id", Text, primary_key=True),
    Column("customer_id", Text, nullable=False),
    Column("name", Text),
    Column("email", Text),
    Column("phone", Text),
    Column("postal_address", Text),  # several lines, separated by '\n'
    Column("is_billing", Boolean, nullable=False, default=False),
    Index(None, "customer_id"),
)

invoices = Table(
    "invoices",
    accounting_metadata,
    Column("invoice_id", Text, primary_key=True),
    Column("org_id", Text),
    Column("customer_id", Text),
    Column("number", Text),
    Column("issue_date", Date),
    Column("due_date", Date),
    # CONTRACT §2 says CHAR(3); TEXT here because a fixed-width column would refuse (on
    # PostgreSQL) the 'EURO' the demo holds to show that bad currencies are quarantined (B6).
    Column("currency", Text),
    Column("total_amount", Numeric(14, 2)),
    Column("status", Text),  # 'open' | 'paid' | 'void' (anything else is malformed)
    Column("pdf_path", Text),
    # naive UTC; NULL is malformed (no extract window holds it): reported missing_updated_at
    Column("updated_at", DateTime(timezone=False)),
    Index(None, "updated_at"),
    Index(None, "customer_id"),
)

#: Column order of each table, as the bulk writers (COPY, to_sql) must emit them.
COLUMNS: dict[str, tuple[str, ...]] = {
    table.name: tuple(c.name for c in table.columns) for table in (customers, contacts, invoices)
}


def create_accounting_schema(engine: Engine, drop_existing: bool) -> None:
    """Create the three accounting tables with their indexes (SQLite or PostgreSQL).

    ``drop_existing`` drops them first, so a demo or benchmark always starts from exactly the
    rows it writes; without it, existing tables are kept and only missing ones are created.
    """
    with engine.begin() as conn:
        if drop_existing:
            accounting_metadata.drop_all(conn, checkfirst=True)
        accounting_metadata.create_all(conn, checkfirst=True)
