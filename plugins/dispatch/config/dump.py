"""``dispatch config dump``: the configuration stored in the dispatch database, written in
the very format ``dispatch config load`` reads (docs/configuration.md).

So what is in force can be read, kept under version control, edited and loaded back:
loading a dump changes nothing. Each plan shows its **current** template version. The
fields and their columns are the models' (:mod:`dispatch.config.models`), read backwards.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

import yaml
from pydantic import BaseModel
from sqlalchemy import Engine, RowMapping, select

from dispatch.config.models import Assignment, InvoiceSending, Organization, Plan, User
from dispatch.storage.bulk import chunks
from dispatch.storage.schema import customer_plans, invoice_templates, organizations, plans, users


def _entry(model: type[BaseModel], row: Mapping[str, Any] | RowMapping) -> dict[str, Any]:
    """The file's entry of one stored row: each field from its column, absent when NULL."""
    entry: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        value = row.get(info.serialization_alias or name)
        if value is None:
            continue
        if isinstance(value, dt.datetime):
            value = value.isoformat()
        elif info.annotation is bool:
            value = bool(value)  # SQLite keeps booleans as 0/1
        entry[name] = value
    return entry


def dump_config(engine: Engine) -> dict[str, list[dict[str, Any]]]:
    """The stored configuration in the file's structure (loading it back changes nothing)."""
    with engine.connect() as conn:
        org_rows = conn.execute(select(organizations).order_by(organizations.c.org_id)).mappings().all()
        user_rows = conn.execute(select(users).order_by(users.c.user_id)).mappings().all()
        plan_rows = conn.execute(select(plans).order_by(plans.c.plan_id)).mappings().all()
        ids = [p["template_id"] for p in plan_rows if p["template_id"]]
        templates: dict[str, Any] = {}
        for part in chunks(ids):
            q = select(invoice_templates).where(invoice_templates.c.template_id.in_(part))
            templates.update({r["template_id"]: r for r in conn.execute(q).mappings()})
        assignment_rows = (
            conn.execute(select(customer_plans).order_by(customer_plans.c.customer_id)).mappings().all()
        )
    plan_entries = []
    for row in plan_rows:
        plan = _entry(Plan, row)
        template = templates.get(row["template_id"])
        if template is not None:
            plan["invoice_sending"] = _entry(InvoiceSending, template)
        plan_entries.append(plan)
    return {
        "organizations": [_entry(Organization, r) for r in org_rows],
        "users": [_entry(User, r) for r in user_rows],
        "plans": plan_entries,
        "assignments": [_entry(Assignment, r) for r in assignment_rows],
    }


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def dump_config_yaml(engine: Engine) -> str:
    """:func:`dump_config` as YAML text (block style, multi-line bodies as ``|`` blocks)."""
    body = {section: entries for section, entries in dump_config(engine).items() if entries}
    head = "# dispatch config dump — load it back with `dispatch config load FILE`\n"
    return head + (yaml.dump(body, Dumper=_Dumper, sort_keys=False, allow_unicode=True) if body else "{}\n")
