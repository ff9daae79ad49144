"""Writing a checked configuration file to the dispatch database: every entry upserted in
one transaction, in dependency order, and counted.

The rows come from the models (``model_dump(by_alias=True)``: each field's column is
declared beside it in :mod:`dispatch.config.models`). Templates are immutable versions
named after their content, so an action keeps exactly the template it was created with, and
re-loading an unchanged file writes nothing.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

from sqlalchemy import Connection, Table, or_

from dispatch.config.checks import Stored
from dispatch.config.entries import Parsed
from dispatch.config.models import Entry, Organization, Plan, User
from dispatch.storage.bulk import dialect_insert
from dispatch.storage.schema import customer_plans, invoice_templates, organizations, plans, users


@dataclass(frozen=True)
class Counts:
    """What the load did to one kind of entry."""

    inserted: int = 0
    updated: int = 0
    unchanged: int = 0


@dataclass(frozen=True)
class LoadSummary:
    """Counts per kind; ``templates`` counts versions (a changed template is a new version,
    never an update)."""

    organizations: Counts = Counts()
    users: Counts = Counts()
    plans: Counts = Counts()
    templates: Counts = Counts()
    assignments: Counts = Counts()

    @property
    def changed(self) -> bool:
        return any(getattr(self, f.name).inserted or getattr(self, f.name).updated for f in fields(self))

    def as_dict(self) -> dict[str, dict[str, int]]:
        return {f.name: dict(vars(getattr(self, f.name))) for f in fields(self)}

    def __str__(self) -> str:
        parts = []
        for f in fields(self):
            c: Counts = getattr(self, f.name)
            if f.name == "templates":
                parts.append(f"templates {c.inserted} new, {c.unchanged} unchanged")
            else:
                parts.append(f"{f.name} {c.inserted} new, {c.updated} updated, {c.unchanged} unchanged")
        return "config loaded: " + "; ".join(parts)


def _rows(parsed: Parsed, section: str, **extra: Any) -> list[dict[str, Any]]:
    return [entry.model_dump(by_alias=True) | extra for _, entry in parsed.of(section)]


def _count(
    new_rows: list[dict[str, Any]], old: dict[str, dict[str, Any]], key: str, compare: Sequence[str]
) -> Counts:
    inserted = updated = unchanged = 0
    for row in new_rows:
        before = old.get(row[key])
        if before is None:
            inserted += 1
        elif any(before[c] != row[c] for c in compare):
            updated += 1
        else:
            unchanged += 1
    return Counts(inserted, updated, unchanged)


def _upsert_changed(
    conn: Connection,
    table: Table,
    rows: list[dict[str, Any]],
    key: str,
    compare: Sequence[str],
    also: Sequence[str] = (),
) -> None:
    """Insert new rows; update existing ones only where a compared column differs, so an
    unchanged row keeps its ``updated_at``/``assigned_at`` (a reload writes nothing)."""
    if not rows:
        return
    stmt = dialect_insert(conn, table)
    stmt = stmt.on_conflict_do_update(
        index_elements=[key],
        set_={c: stmt.excluded[c] for c in (*compare, *also)},
        where=or_(*(table.c[c].is_distinct_from(stmt.excluded[c]) for c in compare)),
    )
    conn.execute(stmt, rows)


def _compared(model: type[Entry], key: str, *more: str) -> tuple[str, ...]:
    """The columns whose change makes an update: the entry's own, but its key."""
    names = (
        info.serialization_alias or name for name, info in model.model_fields.items() if not info.exclude
    )
    return (*(n for n in names if n != key), *more)


def _template_rows(plans_: list[Plan], now: dt.datetime) -> list[dict[str, Any]]:
    return [
        p.invoice_sending.model_dump(by_alias=True)
        | {"template_id": p.template_id, "plan_id": p.id, "created_at": now}
        for p in plans_
        if p.invoice_sending is not None
    ]


def write(conn: Connection, parsed: Parsed, stored: Stored, now: dt.datetime) -> LoadSummary:
    """Upsert everything in dependency order (organizations before the users and plans that
    reference them, plans before their template versions and assignments)."""
    org_rows = _rows(parsed, "organizations", updated_at=now)
    user_rows = _rows(parsed, "users")
    file_plans: list[Plan] = [p for _, p in parsed.of("plans")]
    plan_rows = [p.model_dump(by_alias=True) | {"template_id": p.template_id} for p in file_plans]
    template_rows = _template_rows(file_plans, now)
    assignment_rows = _rows(parsed, "assignments", assigned_at=now)
    org_compare = _compared(Organization, "org_id")
    user_compare = _compared(User, "user_id")
    plan_compare = _compared(Plan, "plan_id", "template_id")
    new_templates = sum(1 for r in template_rows if r["template_id"] not in stored.templates)
    summary = LoadSummary(
        organizations=_count(org_rows, stored.orgs, "org_id", org_compare),
        users=_count(user_rows, stored.users, "user_id", user_compare),
        plans=_count(plan_rows, stored.plans, "plan_id", plan_compare),
        templates=Counts(inserted=new_templates, unchanged=len(template_rows) - new_templates),
        assignments=_count(assignment_rows, stored.assignments, "customer_id", ("plan_id",)),
    )
    _upsert_changed(conn, organizations, org_rows, "org_id", org_compare, also=("updated_at",))
    _upsert_changed(conn, users, user_rows, "user_id", user_compare)
    _upsert_changed(conn, plans, plan_rows, "plan_id", plan_compare)
    if template_rows:
        stmt = dialect_insert(conn, invoice_templates).on_conflict_do_nothing(index_elements=["template_id"])
        conn.execute(stmt, template_rows)
    _upsert_changed(conn, customer_plans, assignment_rows, "customer_id", ("plan_id",), also=("assigned_at",))
    return summary
