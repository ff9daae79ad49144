"""``dispatch config dump``: the configuration stored in the dispatch database, written in
the very format ``dispatch config load`` reads (docs/configuration.md).

So what is in force can be read, kept under version control, edited and loaded back:
loading a dump changes nothing. Each plan shows its **current** template version.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import yaml
from sqlalchemy import Engine, select

from dispatch.db.schema import customer_plans, invoice_templates, organizations, plans, users


def _instant(value: dt.datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def _drop_none(entry: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in entry.items() if v is not None}


def dump_config(engine: Engine) -> dict[str, list[dict[str, Any]]]:
    """The stored configuration as the sections of a configuration file."""
    Org, U, P, T, CP = organizations, users, plans, invoice_templates, customer_plans
    with engine.connect() as conn:
        orgs = conn.execute(select(Org).order_by(Org.c.org_id)).mappings().all()
        people = conn.execute(select(U).order_by(U.c.user_id)).mappings().all()
        plan_rows = conn.execute(
            select(P, T.c.channel, T.c.delay_days, T.c.automatic, T.c.owner_user_id, T.c.subject,
                   T.c.body, T.c.template_file)
            .outerjoin(T, T.c.template_id == P.c.template_id)
            .order_by(P.c.plan_id)
        ).mappings().all()  # fmt: skip
        assignments = conn.execute(select(CP).order_by(CP.c.customer_id)).mappings().all()
    org_columns = set(Org.c.keys())
    out: dict[str, list[dict[str, Any]]] = {
        "organizations": [
            _drop_none(
                {
                    "id": o["org_id"],
                    "name": o["name"],
                    "timezone": o["timezone"],
                    "send_time": o["send_time"],
                    "country": o["country"] if "country" in org_columns else None,
                    "holidays": o["holidays"],
                    "invoice_sending_enabled_at": _instant(o["invoice_sending_enabled_at"]),
                    "default_owner": o["default_owner"],
                    "mail_from": o["mail_from"],
                    "reply_to": o["reply_to"],
                }
            )
            for o in orgs
        ],
        "users": [
            _drop_none({"id": u["user_id"], "org": u["org_id"], "name": u["name"], "email": u["email"]})
            for u in people
        ],
        "plans": [],
        "assignments": [{"customer": a["customer_id"], "plan": a["plan_id"]} for a in assignments],
    }
    for p in plan_rows:
        entry: dict[str, Any] = {
            "id": p["plan_id"],
            "org": p["org_id"],
            "name": p["name"],
            "level": p["level"],
        }
        if p["template_id"] is not None:
            entry["invoice_sending"] = _drop_none(
                {
                    "channel": p["channel"],
                    "delay_days": p["delay_days"],
                    "automatic": bool(p["automatic"]),
                    "owner": p["owner_user_id"],
                    "subject": p["subject"],
                    "body": p["body"],
                    "template": p["template_file"],
                }
            )
        out["plans"].append(entry)
    return {k: v for k, v in out.items() if v}


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def dump_config_yaml(engine: Engine) -> str:
    """:func:`dump_config` as YAML text (block style, multi-line bodies as ``|`` blocks)."""
    body = dump_config(engine)
    head = "# dispatch config dump — load it back with `dispatch config load FILE`\n"
    return head + (yaml.dump(body, Dumper=_Dumper, sort_keys=False, allow_unicode=True) if body else "{}\n")
