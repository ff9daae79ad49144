"""Checks across entries and against the database: ids unique in the file, references that
resolve and stay inside one organization, and no knock-on breakage of stored entries.

They judge the configuration as it will be *after* the load: the file's entries over the
stored ones. An entry that failed its own checks (:mod:`dispatch.config.models`) counts as
known but is not looked into, so one mistake is reported once, not again as its echo.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, Table, bindparam, inspect, select, text

from dispatch.config.entries import Parsed
from dispatch.config.models import ID_FIELDS, Assignment, Organization, Plan, User
from dispatch.config.problems import Problems, did_you_mean
from dispatch.storage.bulk import chunks
from dispatch.storage.schema import customer_plans, invoice_templates, organizations, plans, users


def check_duplicates(problems: Problems) -> None:
    """An id given twice is a copy-paste slip: which one should win? Refuse the repeats."""
    names = {"organizations": "organization", "users": "user", "plans": "plan"}
    data = problems.document.data
    for section, id_field in ID_FIELDS.items():
        items = data.get(section) if isinstance(data, dict) else None
        first: dict[str, int] = {}
        for index, item in enumerate(items if isinstance(items, list) else []):
            key = item.get(id_field) if isinstance(item, dict) else None
            if not isinstance(key, str):
                continue
            if key in first:
                what = names.get(section, "assignment of customer")
                line = problems.document.spot((section, first[key])).line
                problems.at((section, index, id_field), f"duplicate {what} {key!r} (first on line {line})")
            else:
                first[key] = index


@dataclass
class Stored:
    """The configuration already in the database, as far as the checks and counts need it."""

    orgs: dict[str, dict[str, Any]]
    users: dict[str, dict[str, Any]]
    plans: dict[str, dict[str, Any]]
    template_owner: dict[str, str | None]  # plan_id -> owner of its current template
    templates: set[str]  # the file's template ids that already exist
    assignments: dict[str, dict[str, Any]]  # the file's customers -> their stored row
    assigned_to: dict[str, list[str]]  # plans of the file that changed level/org -> customers

    @classmethod
    def read(cls, conn: Connection, parsed: Parsed) -> Stored:
        def rows(table: Table, key: str) -> dict[str, dict[str, Any]]:
            return {r[key]: dict(r) for r in conn.execute(select(table)).mappings()}

        file_plans: list[Plan] = [p for _, p in parsed.of("plans")]
        stored = cls(
            orgs=rows(organizations, "org_id"),
            users=rows(users, "user_id"),
            plans=rows(plans, "plan_id"),
            template_owner={},
            templates=set(),
            assignments={},
            assigned_to={},
        )
        owners = select(plans.c.plan_id, invoice_templates.c.owner_user_id).join(
            invoice_templates, invoice_templates.c.template_id == plans.c.template_id
        )
        stored.template_owner = {r.plan_id: r.owner_user_id for r in conn.execute(owners)}
        template_ids = sorted({tid for p in file_plans if (tid := p.template_id)})
        for part in chunks(template_ids):
            q = select(invoice_templates.c.template_id).where(invoice_templates.c.template_id.in_(part))
            stored.templates.update(conn.scalars(q))
        customers = sorted({a.customer for _, a in parsed.of("assignments")})
        for part in chunks(customers):
            q = select(customer_plans).where(customer_plans.c.customer_id.in_(part))
            stored.assignments.update({r["customer_id"]: dict(r) for r in conn.execute(q).mappings()})
        moved = sorted(
            p.id
            for p in file_plans
            if p.id in stored.plans
            and (p.level != stored.plans[p.id]["level"] or p.org != stored.plans[p.id]["org_id"])
        )
        for part in chunks(moved):
            q = select(customer_plans.c.customer_id, customer_plans.c.plan_id).where(
                customer_plans.c.plan_id.in_(part)
            )
            for r in conn.execute(q.order_by(customer_plans.c.customer_id)):
                stored.assigned_to.setdefault(r.plan_id, []).append(r.customer_id)
        return stored


def accounting_orgs(engine: Engine | None, customer_ids: Iterable[str]) -> dict[str, str]:
    """customer_id -> org_id for the customers the accounting source knows.

    Without an accounting source, or one with no ``customers`` table yet, nothing is known
    and no assignment can be shown to cross organizations.
    """
    ids = sorted(set(customer_ids))
    if engine is None or not ids:
        return {}
    with engine.connect() as conn:
        if not inspect(conn).has_table("customers"):
            return {}
        q = text("SELECT customer_id, org_id FROM customers WHERE customer_id IN :ids").bindparams(
            bindparam("ids", expanding=True)
        )
        found: dict[str, str] = {}
        for part in chunks(ids):
            found.update({str(r[0]): str(r[1]) for r in conn.execute(q, {"ids": list(part)})})
        return found


class _References:
    """The configuration after the load, as the reference checks ask about it."""

    def __init__(self, parsed: Parsed, stored: Stored, problems: Problems) -> None:
        self.parsed = parsed
        self.stored = stored
        self.problems = problems
        self.orgs: list[tuple[int, Organization]] = parsed.of("organizations")
        self.users: list[tuple[int, User]] = parsed.of("users")
        self.plans: list[tuple[int, Plan]] = parsed.of("plans")
        self.assignments: list[tuple[int, Assignment]] = parsed.of("assignments")
        self.org_ids = set(stored.orgs) | parsed.ids.get("organizations", set())
        self.user_ids = set(stored.users) | parsed.ids.get("users", set())
        self.plan_ids = set(stored.plans) | parsed.ids.get("plans", set())
        # An unknown organization is reported once, then forgotten (None): comparing it with
        # the organizations of owners and customers would only repeat the same mistake.
        self.user_org: dict[int, str | None] = {}
        self.plan_org: dict[int, str | None] = {}
        self._user_index = {user.id: i for i, user in self.users}
        self._plan_index = {plan.id: (i, plan) for i, plan in self.plans}

    def known(self, loc: tuple[str | int, ...], value: str | None, ids: set[str], what: str) -> bool:
        if value is None:
            return False
        if value not in ids:
            self.problems.at(loc, f"unknown {what} {value!r}{did_you_mean(value, ids)}")
            return False
        return True

    def org_of_user(self, user_id: str) -> str | None:
        if user_id in self._user_index:
            return self.user_org.get(self._user_index[user_id])
        if user_id in self.parsed.ids.get("users", set()):
            return None  # in the file with a mistake of its own
        row = self.stored.users.get(user_id)
        return row["org_id"] if row else None

    def org_and_level_of_plan(self, plan_id: str) -> tuple[str | None, str | None]:
        if plan_id in self._plan_index:
            index, plan = self._plan_index[plan_id]
            return self.plan_org.get(index), plan.level
        if plan_id in self.parsed.ids.get("plans", set()):
            return None, None
        row = self.stored.plans[plan_id]
        return row["org_id"], row["level"]

    def same_org(self, loc: tuple[str | int, ...], user_id: str, org_id: str | None) -> None:
        other = self.org_of_user(user_id)
        if org_id is not None and other is not None and other != org_id:
            self.problems.at(loc, f"user {user_id!r} belongs to organization {other!r}, not {org_id!r}")


def check_references(
    parsed: Parsed, stored: Stored, accounting_engine: Engine | None, problems: Problems
) -> None:
    """References resolve, and stay inside one organization, in the configuration as it will
    be after the load (the file's entries over the stored ones)."""
    refs = _References(parsed, stored, problems)
    for i, user in refs.users:
        ok = refs.known(("users", i, "org"), user.org, refs.org_ids, "organization")
        refs.user_org[i] = user.org if ok else None
    for i, plan in refs.plans:
        ok = refs.known(("plans", i, "org"), plan.org, refs.org_ids, "organization")
        refs.plan_org[i] = plan.org if ok else None
    for i, org in refs.orgs:
        loc = ("organizations", i, "default_owner")
        if org.default_owner and refs.known(loc, org.default_owner, refs.user_ids, "user"):
            refs.same_org(loc, org.default_owner, org.id)
    _check_sms_countries(refs)
    for i, plan in refs.plans:
        owner = plan.invoice_sending.owner if plan.invoice_sending else None
        owner_loc = ("plans", i, "invoice_sending", "owner")
        if owner and refs.known(owner_loc, owner, refs.user_ids, "user"):
            refs.same_org(owner_loc, owner, refs.plan_org[i])

    file_customers = [a.customer for _, a in refs.assignments]
    knock_on = [c for _, p in refs.plans for c in stored.assigned_to.get(p.id, [])]
    customer_orgs = accounting_orgs(accounting_engine, file_customers + knock_on)
    for i, a in refs.assignments:
        loc = ("assignments", i, "plan")
        if not refs.known(loc, a.plan, refs.plan_ids, "plan"):
            continue
        plan_org, level = refs.org_and_level_of_plan(a.plan)
        if level == "invoice":
            problems.at(
                loc, f"plan {a.plan!r} is an invoice-level plan; only customer-level plans are assigned"
            )
        customer_org = customer_orgs.get(a.customer)
        if customer_org is not None and plan_org is not None and customer_org != plan_org:
            problems.at(
                loc,
                f"plan {a.plan!r} belongs to organization {plan_org!r} but customer {a.customer!r} "
                f"belongs to {customer_org!r} in the accounting source",
            )
    _check_stored_dependents(refs, set(file_customers), customer_orgs)


def _check_sms_countries(refs: _References) -> None:
    """SMS needs the organization's country: phone numbers written without +NN are read with it."""
    file_orgs = refs.parsed.ids.get("organizations", set())
    for i, plan in refs.plans:
        org_id = refs.plan_org[i]
        if plan.invoice_sending is None or plan.invoice_sending.channel != "sms" or org_id is None:
            continue
        in_file = [o for _, o in refs.orgs if o.id == org_id]
        if in_file:  # (a repeated entry is reported on its own; any country will do here)
            country = next((o.country for o in in_file if o.country), None)
        elif org_id in file_orgs:
            continue  # the organization has a mistake of its own
        else:
            country = refs.stored.orgs.get(org_id, {}).get("country")
        if country is None:
            refs.problems.at(
                ("plans", i, "invoice_sending", "channel"),
                f"sms needs organization {org_id!r} to set `country` (ISO 3166, e.g. FR): phone "
                "numbers written without +NN are read with it",
            )


def _check_stored_dependents(
    refs: _References, file_customers: set[str], customer_orgs: dict[str, str]
) -> None:
    """A change in the file must not break what the database keeps and the file leaves alone:
    a plan turned invoice-level or moved to another org that stored customers still use, a
    user moved to another org who stays owner there."""
    stored = refs.stored
    file_orgs = refs.parsed.ids.get("organizations", set())
    file_plans = refs.parsed.ids.get("plans", set())
    for i, plan in refs.plans:
        customers = [c for c in stored.assigned_to.get(plan.id, []) if c not in file_customers]
        if not customers:
            continue
        if plan.level == "invoice":
            refs.problems.at(
                ("plans", i, "level"),
                f"'invoice' but {_some(customers)} assigned to this plan in the database; "
                "assign them another plan first (in this file or an earlier one)",
            )
        org_id = refs.plan_org[i]
        elsewhere = [c for c in customers if customer_orgs.get(c, org_id) != org_id]
        if org_id is not None and elsewhere:
            refs.problems.at(
                ("plans", i, "org"),
                f"{org_id!r} but {_some(elsewhere)} assigned to this plan in the database and the "
                "accounting source places them in another organization; assign them another plan first",
            )
    for i, user in refs.users:
        before = stored.users.get(user.id)
        org_id = refs.user_org[i]
        if org_id is None or before is None or before["org_id"] == org_id:
            continue
        loc = ("users", i, "org")
        for other_org, row in stored.orgs.items():
            if other_org not in file_orgs and row["default_owner"] == user.id and other_org != org_id:
                refs.problems.at(
                    loc, f"{org_id!r} but the user is default_owner of organization {other_org!r}"
                )
        for plan_id, owner in stored.template_owner.items():
            plan_org = stored.plans[plan_id]["org_id"]
            if plan_id not in file_plans and owner == user.id and plan_org != org_id:
                refs.problems.at(
                    loc,
                    f"{org_id!r} but the user owns the template of plan {plan_id!r} "
                    f"of organization {plan_org!r}",
                )


def _some(customers: list[str]) -> str:
    """'customer 'c1' is' / 'customers 'c1', 'c2' and 3 more are' (the list can be long)."""
    shown = ", ".join(repr(c) for c in customers[:5])
    if len(customers) == 1:
        return f"customer {shown} is"
    more = f" and {len(customers) - 5} more" if len(customers) > 5 else ""
    return f"customers {shown}{more} are"
