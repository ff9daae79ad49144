"""``dispatch config load`` as a library (CONTRACT §3, SPEC B6), on SQLite and PostgreSQL.

Every refusal test first loads a valid file, so the database holds something to lose, then
checks the error names the line, the entry and the field, and that every configuration
table is exactly as it was.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest
import sqlalchemy as sa
import yaml
from dispatch.config.dump import dump_config
from dispatch.config.load import load_config_file
from dispatch.config.models import template_version_id
from dispatch.config.write import Counts, LoadSummary
from dispatch.errors import ConfigError
from dispatch.storage.engine import make_engine
from dispatch.storage.migrate import upgrade
from dispatch.storage.schema import customer_plans, invoice_templates, organizations, plans, users

from tests.conftest import PgDatabases, require_postgres

NOW = dt.datetime(2026, 11, 29, 9, 0, tzinfo=dt.UTC)
LATER = dt.datetime(2026, 12, 3, 16, 45, tzinfo=dt.UTC)
REPO = Path(__file__).resolve().parents[1]

VALID = """\
organizations:
  - id: acme
    name: ACME SAS
    timezone: Europe/Paris
    send_time: "08:30"
    holidays: FR
    invoice_sending_enabled_at: "2026-11-01T00:00:00+01:00"
    default_owner: u_alice
    mail_from: billing@acme.example
  - id: globex
    name: Globex Inc.
    timezone: America/New_York
    send_time: "09:00"
    country: US
    default_owner: u_gina
users:
  - {id: u_alice, org: acme, name: Alice Martin, email: alice@acme.example}
  - {id: u_bob, org: acme, name: Bob Durand}
  - {id: u_gina, org: globex, name: Gina Smith, email: gina@globex.example}
plans:
  - id: plan_std
    org: acme
    name: Standard
    level: customer
    invoice_sending:
      channel: email
      delay_days: 0
      automatic: true
      owner: u_alice
      subject: "Invoice {{ invoice.number }}"
      body: |
        Dear {{ customer.name }},
        please find invoice {{ invoice.number }} attached.
  - id: plan_inv
    org: acme
    name: Per invoice
    level: invoice
  - id: plan_sms
    org: globex
    name: SMS next day
    level: customer
    invoice_sending:
      channel: sms
      delay_days: 1
      automatic: false
      body: "Invoice {{ invoice.number }} is due {{ invoice.due_date }}"
  - id: plan_letter
    org: globex
    name: Letter
    level: customer
    invoice_sending:
      channel: letter
      automatic: true
      template: letters/invoice.txt.j2
assignments:
  - {customer: c_acme_1, plan: plan_std}
  - {customer: c_acme_2, plan: plan_std}
  - {customer: c_glob_1, plan: plan_sms}
"""

STD_BODY = "Dear {{ customer.name }},\nplease find invoice {{ invoice.number }} attached.\n"
CONFIG_TABLES = (organizations, users, plans, invoice_templates, customer_plans)


def expected_template_id(plan_id: str, **content: object) -> str:
    """The documented naming rule, computed independently of the module."""
    full = {
        k: content.get(k)
        for k in ("channel", "delay_days", "automatic", "owner", "subject", "body", "template")
    }
    canonical = json.dumps(full, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return f"{plan_id}@{hashlib.sha256(canonical.encode()).hexdigest()[:12]}"


STD_TEMPLATE = expected_template_id(
    "plan_std",
    channel="email",
    delay_days=0,
    automatic=True,
    owner="u_alice",
    subject="Invoice {{ invoice.number }}",
    body=STD_BODY,
)
SMS_TEMPLATE = expected_template_id(
    "plan_sms",
    channel="sms",
    delay_days=1,
    automatic=False,
    body="Invoice {{ invoice.number }} is due {{ invoice.due_date }}",
)
LETTER_TEMPLATE = expected_template_id(
    "plan_letter", channel="letter", delay_days=0, automatic=True, template="letters/invoice.txt.j2"
)


# --- fixtures ---------------------------------------------------------------------------


class Loaded(NamedTuple):
    engine: sa.Engine
    accounting: sa.Engine
    snapshot: dict[str, list[tuple]]  # the tables right after loading VALID


def make_templates(root: Path) -> Path:
    (root / "letters").mkdir(parents=True)
    (root / "letters" / "invoice.txt.j2").write_text("Invoice {{ invoice.number }}\n", encoding="utf-8")
    (root / "letters" / "broken.txt.j2").write_text("Invoice {{ invoice.number\n", encoding="utf-8")
    return root


@pytest.fixture(autouse=True)
def templates_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Template files of our own (looked up before the repository's), so that these tests
    do not depend on the wording of the shipped templates."""
    root = make_templates(tmp_path / "templates")
    monkeypatch.setenv("DISPATCH_TEMPLATES_DIR", str(root))
    return root


@pytest.fixture
def engine(db_urls: dict[str, str]) -> Iterator[sa.Engine]:
    eng = make_engine(db_urls["dispatch"])
    upgrade(eng)
    yield eng
    eng.dispose()


def make_accounting(url: str) -> sa.Engine:
    """A tiny accounting source: only the customers table the loader reads."""
    eng = make_engine(url)
    meta = sa.MetaData()
    customers = sa.Table(
        "customers",
        meta,
        sa.Column("customer_id", sa.Text, primary_key=True),
        sa.Column("org_id", sa.Text, nullable=False),
        sa.Column("name", sa.Text, nullable=False),
    )
    meta.create_all(eng)
    with eng.begin() as conn:
        conn.execute(
            customers.insert(),
            [
                {"customer_id": "c_acme_1", "org_id": "acme", "name": "Durand SA"},
                {"customer_id": "c_acme_2", "org_id": "acme", "name": "Martin SARL"},
                {"customer_id": "c_glob_1", "org_id": "globex", "name": "Initech"},
                {"customer_id": "c_glob_2", "org_id": "globex", "name": "Umbrella"},
            ],
        )
    return eng


@pytest.fixture
def accounting(db_urls: dict[str, str]) -> Iterator[sa.Engine]:
    eng = make_accounting(db_urls["accounting"])
    yield eng
    eng.dispose()


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def loaded(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loaded]:
    """Dispatch and accounting databases with VALID loaded, one pair per backend, shared by
    the refusal tests. Sharing is sound because each of those tests asserts that the
    database is unchanged after its refused load (so none can disturb the next), and it
    spares PostgreSQL a hundred CREATE/DROP DATABASE."""
    root = tmp_path_factory.mktemp("refusals")
    pg: PgDatabases | None = None
    if request.param == "postgres":
        require_postgres()
        pg = PgDatabases()
        urls = {"dispatch": pg.new("t_dispatch"), "accounting": pg.new("t_accounting")}
    else:
        urls = {"dispatch": f"sqlite:///{root / 'dispatch.db'}", "accounting": f"sqlite:///{root / 'acc.db'}"}
    engine = make_engine(urls["dispatch"])
    upgrade(engine)
    accounting = make_accounting(urls["accounting"])
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DISPATCH_TEMPLATES_DIR", str(make_templates(root / "templates")))
        load_valid(root, engine, accounting)
    yield Loaded(engine, accounting, snapshot(engine))
    engine.dispose()
    accounting.dispose()
    if pg is not None:
        pg.drop_all()


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def snapshot(engine: sa.Engine) -> dict[str, list[tuple]]:
    """Every row of every configuration table, in key order."""
    with engine.connect() as conn:
        return {
            t.name: [tuple(r) for r in conn.execute(sa.select(t).order_by(*t.primary_key.columns))]
            for t in CONFIG_TABLES
        }


def rows(engine: sa.Engine, table: sa.Table) -> list[dict]:
    with engine.connect() as conn:
        return [
            dict(r) for r in conn.execute(sa.select(table).order_by(*table.primary_key.columns)).mappings()
        ]


def load_valid(tmp_path: Path, engine: sa.Engine, accounting: sa.Engine) -> LoadSummary:
    return load_config_file(
        write(tmp_path, VALID, "valid.yaml"), engine, accounting_engine=accounting, now=NOW
    )


def line_of(text: str, marker: str) -> int:
    for number, line in enumerate(text.splitlines(), start=1):
        if marker in line:
            return number
    raise AssertionError(f"marker {marker!r} not in the file")


# --- valid files --------------------------------------------------------------------------


def test_valid_file_loads_every_row(tmp_path: Path, engine: sa.Engine, accounting: sa.Engine) -> None:
    summary = load_valid(tmp_path, engine, accounting)

    assert summary == LoadSummary(
        organizations=Counts(inserted=2),
        users=Counts(inserted=3),
        plans=Counts(inserted=4),
        templates=Counts(inserted=3),
        assignments=Counts(inserted=3),
    )
    assert rows(engine, organizations) == [
        {
            "org_id": "acme",
            "name": "ACME SAS",
            "timezone": "Europe/Paris",
            "send_time": "08:30",
            "holidays": "FR",
            "country": None,
            "invoice_sending_enabled_at": dt.datetime(2026, 10, 31, 23, 0, tzinfo=dt.UTC),
            "default_owner": "u_alice",
            "mail_from": "billing@acme.example",
            "reply_to": None,
            "updated_at": NOW,
        },
        {
            "org_id": "globex",
            "name": "Globex Inc.",
            "timezone": "America/New_York",
            "send_time": "09:00",
            "holidays": None,
            "country": "US",
            "invoice_sending_enabled_at": None,
            "default_owner": "u_gina",
            "mail_from": None,
            "reply_to": None,
            "updated_at": NOW,
        },
    ]
    assert rows(engine, users) == [
        {"user_id": "u_alice", "org_id": "acme", "name": "Alice Martin", "email": "alice@acme.example"},
        {"user_id": "u_bob", "org_id": "acme", "name": "Bob Durand", "email": None},
        {"user_id": "u_gina", "org_id": "globex", "name": "Gina Smith", "email": "gina@globex.example"},
    ]
    assert rows(engine, plans) == [
        {
            "plan_id": "plan_inv",
            "org_id": "acme",
            "name": "Per invoice",
            "level": "invoice",
            "template_id": None,
        },
        {
            "plan_id": "plan_letter",
            "org_id": "globex",
            "name": "Letter",
            "level": "customer",
            "template_id": LETTER_TEMPLATE,
        },
        {
            "plan_id": "plan_sms",
            "org_id": "globex",
            "name": "SMS next day",
            "level": "customer",
            "template_id": SMS_TEMPLATE,
        },
        {
            "plan_id": "plan_std",
            "org_id": "acme",
            "name": "Standard",
            "level": "customer",
            "template_id": STD_TEMPLATE,
        },
    ]
    templates = {r["template_id"]: r for r in rows(engine, invoice_templates)}
    assert set(templates) == {STD_TEMPLATE, SMS_TEMPLATE, LETTER_TEMPLATE}
    assert templates[STD_TEMPLATE] == {
        "template_id": STD_TEMPLATE,
        "plan_id": "plan_std",
        "channel": "email",
        "delay_days": 0,
        "automatic": True,
        "owner_user_id": "u_alice",
        "subject": "Invoice {{ invoice.number }}",
        "body": STD_BODY,
        "template_file": None,
        "created_at": NOW,
    }
    assert templates[SMS_TEMPLATE]["owner_user_id"] is None  # falls back to the org's default_owner
    assert (templates[SMS_TEMPLATE]["channel"], templates[SMS_TEMPLATE]["automatic"]) == ("sms", False)
    assert templates[LETTER_TEMPLATE]["template_file"] == "letters/invoice.txt.j2"
    assert templates[LETTER_TEMPLATE]["body"] is None
    assert rows(engine, customer_plans) == [
        {"customer_id": "c_acme_1", "plan_id": "plan_std", "assigned_at": NOW},
        {"customer_id": "c_acme_2", "plan_id": "plan_std", "assigned_at": NOW},
        {"customer_id": "c_glob_1", "plan_id": "plan_sms", "assigned_at": NOW},
    ]


def test_reloading_the_same_file_changes_nothing(
    tmp_path: Path, engine: sa.Engine, accounting: sa.Engine
) -> None:
    load_valid(tmp_path, engine, accounting)
    before = snapshot(engine)

    summary = load_config_file(write(tmp_path, VALID), engine, accounting_engine=accounting, now=LATER)

    assert snapshot(engine) == before  # updated_at, assigned_at and created_at included
    assert not summary.changed
    assert summary.organizations == Counts(unchanged=2)
    assert summary.templates == Counts(unchanged=3)
    assert summary.assignments == Counts(unchanged=3)
    assert str(summary) == (
        "config loaded: organizations 0 new, 0 updated, 2 unchanged; users 0 new, 0 updated, 3 unchanged; "
        "plans 0 new, 0 updated, 4 unchanged; templates 0 new, 3 unchanged; "
        "assignments 0 new, 0 updated, 3 unchanged"
    )


def test_changing_a_template_creates_a_new_version_and_keeps_the_old(
    tmp_path: Path, engine: sa.Engine, accounting: sa.Engine
) -> None:
    load_valid(tmp_path, engine, accounting)
    changed = VALID.replace(
        'subject: "Invoice {{ invoice.number }}"', 'subject: "Your invoice {{ invoice.number }}"'
    )

    summary = load_config_file(write(tmp_path, changed), engine, accounting_engine=accounting, now=LATER)

    new_id = expected_template_id(
        "plan_std",
        channel="email",
        delay_days=0,
        automatic=True,
        owner="u_alice",
        subject="Your invoice {{ invoice.number }}",
        body=STD_BODY,
    )
    assert summary.templates == Counts(inserted=1, unchanged=2)
    assert summary.plans == Counts(updated=1, unchanged=3)
    plan = {r["plan_id"]: r for r in rows(engine, plans)}["plan_std"]
    assert plan["template_id"] == new_id
    templates = {r["template_id"]: r for r in rows(engine, invoice_templates)}
    assert templates[STD_TEMPLATE]["subject"] == "Invoice {{ invoice.number }}"  # old version untouched
    assert templates[STD_TEMPLATE]["created_at"] == NOW
    assert templates[new_id]["subject"] == "Your invoice {{ invoice.number }}"
    assert templates[new_id]["created_at"] == LATER
    # the assignments did not change, so they keep their instant
    assert {r["assigned_at"] for r in rows(engine, customer_plans)} == {NOW}

    # going back to the first content points the plan at the first version again
    load_valid(tmp_path, engine, accounting)
    assert {r["plan_id"]: r for r in rows(engine, plans)}["plan_std"]["template_id"] == STD_TEMPLATE
    assert len(rows(engine, invoice_templates)) == 4


def test_updates_replace_values_and_the_customers_plan(
    tmp_path: Path, engine: sa.Engine, accounting: sa.Engine
) -> None:
    load_valid(tmp_path, engine, accounting)
    second = """\
organizations:
  - id: acme
    name: ACME SAS
    timezone: Europe/Paris
    send_time: "07:45"
    default_owner: u_bob
assignments:
  - {customer: c_acme_1, plan: plan_std}
  - {customer: c_glob_1, plan: plan_letter}
plans:
  - {id: plan_std, org: acme, name: Standard, level: customer}
"""
    summary = load_config_file(write(tmp_path, second), engine, accounting_engine=accounting, now=LATER)

    assert summary.organizations == Counts(updated=1)
    assert summary.assignments == Counts(updated=1, unchanged=1)
    assert summary.plans == Counts(updated=1)
    acme = rows(engine, organizations)[0]
    # an entry is complete: optional fields left out of it take their default
    assert (acme["send_time"], acme["holidays"], acme["invoice_sending_enabled_at"]) == ("07:45", None, None)
    assert (acme["default_owner"], acme["mail_from"], acme["updated_at"]) == ("u_bob", None, LATER)
    assert rows(engine, organizations)[1]["updated_at"] == NOW  # not in the file: untouched
    assert rows(engine, customer_plans) == [
        {"customer_id": "c_acme_1", "plan_id": "plan_std", "assigned_at": NOW},
        {"customer_id": "c_acme_2", "plan_id": "plan_std", "assigned_at": NOW},
        {"customer_id": "c_glob_1", "plan_id": "plan_letter", "assigned_at": LATER},
    ]
    # plan_std without invoice_sending: no template any more; its old version stays for actions
    assert {r["plan_id"]: r for r in rows(engine, plans)}["plan_std"]["template_id"] is None
    assert STD_TEMPLATE in {r["template_id"] for r in rows(engine, invoice_templates)}


def test_references_to_entries_loaded_earlier_are_known(
    tmp_path: Path, engine: sa.Engine, accounting: sa.Engine
) -> None:
    load_valid(tmp_path, engine, accounting)
    later = """\
users:
  - {id: u_carl, org: globex, name: Carl}
plans:
  - id: plan_gold
    org: acme
    name: Gold
    level: customer
    invoice_sending: {channel: email, automatic: true, owner: u_bob}
assignments:
  - {customer: c_acme_2, plan: plan_gold}
  - {customer: c_glob_2, plan: plan_letter}
"""
    summary = load_config_file(write(tmp_path, later), engine, accounting_engine=accounting, now=LATER)

    assert (summary.users, summary.plans, summary.assignments) == (
        Counts(inserted=1),
        Counts(inserted=1),
        Counts(inserted=1, updated=1),
    )
    gold = expected_template_id("plan_gold", channel="email", delay_days=0, automatic=True, owner="u_bob")
    assert {r["plan_id"]: r for r in rows(engine, plans)}["plan_gold"]["template_id"] == gold
    # subject, body and template left out: the default wording of the customer's language
    template = {r["template_id"]: r for r in rows(engine, invoice_templates)}[gold]
    assert (template["subject"], template["body"], template["template_file"]) == (None, None, None)


def test_yaml_conveniences(tmp_path: Path, engine: sa.Engine) -> None:
    """Values are read as written (no YAML 1.1 surprises); anchors, merge keys (own keys
    override merged ones) and ``x-`` top-level keys (a place for anchors) work."""
    text = """\
x-sending: &sending {channel: email, automatic: yes, delay_days: 0x2}
organizations:
  - {id: oslo, name: Oslo AS, timezone: Europe/Oslo, send_time: 12:30, holidays: NO, default_owner: u_o}
users:
  - {id: u_o, org: oslo, name: Ola}
plans:
  - {id: p0, org: oslo, name: Zero, level: customer, invoice_sending: *sending}
  - id: p1
    org: oslo
    name: One
    level: customer
    invoice_sending:
      <<: *sending
      owner: u_o
      delay_days: 5
"""
    load_config_file(write(tmp_path, text), engine, now=NOW)

    org = rows(engine, organizations)[0]
    assert (org["send_time"], org["holidays"]) == ("12:30", "NO")  # not 750 minutes, not False
    by_plan = {r["plan_id"]: r["template_id"] for r in rows(engine, plans)}
    templates = {r["template_id"]: r for r in rows(engine, invoice_templates)}
    p0, p1 = templates[by_plan["p0"]], templates[by_plan["p1"]]
    keys = ("channel", "automatic", "delay_days", "owner_user_id")
    assert [p0[k] for k in keys] == ["email", True, 2, None]
    assert [p1[k] for k in keys] == ["email", True, 5, "u_o"]  # its own delay_days wins


def test_dump_loads_back_unchanged(tmp_path: Path, engine: sa.Engine, accounting: sa.Engine) -> None:
    load_valid(tmp_path, engine, accounting)
    before = snapshot(engine)
    dumped = dump_config(engine)
    assert [p["id"] for p in dumped["plans"]] == ["plan_inv", "plan_letter", "plan_sms", "plan_std"]
    assert dumped["organizations"][0]["invoice_sending_enabled_at"] == "2026-10-31T23:00:00+00:00"

    path = write(tmp_path, yaml.safe_dump(dumped, sort_keys=False, allow_unicode=True), "dump.yaml")
    summary = load_config_file(path, engine, accounting_engine=accounting, now=LATER)

    assert not summary.changed
    assert snapshot(engine) == before


def test_demo_configuration_loads(tmp_path: Path, engine: sa.Engine) -> None:
    """The shipped demo file (its two placeholders filled in) is a valid configuration."""
    text = (REPO / "include" / "demo" / "config.yaml").read_text(encoding="utf-8")
    text = text.replace("{{ acme_enabled_at }}", "2026-11-15T00:00:00+01:00")
    text = text.replace("{{ hudson_enabled_at }}", "2026-11-22T00:00:00-05:00")
    summary = load_config_file(write(tmp_path, text), engine, now=NOW)
    assert summary.organizations.inserted == 2
    assert summary.assignments.inserted == len(yaml.safe_load(text)["assignments"])


def test_the_documented_example_loads(tmp_path: Path, engine: sa.Engine) -> None:
    """The complete example of docs/configuration.md is valid (the docs cannot drift)."""
    doc = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    section = doc.split("## Complete example", 1)[1]
    example = section.split("```yaml\n", 1)[1].split("```", 1)[0]

    summary = load_config_file(write(tmp_path, example), engine, now=NOW)

    assert summary == LoadSummary(
        organizations=Counts(inserted=2),
        users=Counts(inserted=3),
        plans=Counts(inserted=7),
        templates=Counts(inserted=5),
        assignments=Counts(inserted=5),
    )
    by_plan = {r["plan_id"]: r["template_id"] for r in rows(engine, plans)}
    templates = {r["template_id"]: r for r in rows(engine, invoice_templates)}
    j3 = templates[by_plan["plan_j3"]]
    assert [j3[k] for k in ("delay_days", "template_file", "owner_user_id")] == [
        3,
        "email/invoice.html.j2",
        None,
    ]
    assert templates[by_plan["plan_std"]]["delay_days"] == 0
    assert by_plan["plan_dunning_only"] is None
    assert by_plan["plan_per_invoice"] is None


def test_an_assignment_the_accounting_source_cannot_place_is_accepted(
    tmp_path: Path, engine: sa.Engine, accounting: sa.Engine
) -> None:
    """A customer not (yet) in the accounting source cannot be shown to cross organizations."""
    load_valid(tmp_path, engine, accounting)
    text = "assignments:\n  - {customer: c_future, plan: plan_std}\n"
    summary = load_config_file(write(tmp_path, text), engine, accounting_engine=accounting, now=LATER)
    assert summary.assignments == Counts(inserted=1)


# --- refusals -------------------------------------------------------------------------------

# (id, text to replace in VALID, replacement, entry.field named, marker on the expected line, words)
REFUSED = [
    (
        "unknown_timezone",
        "timezone: Europe/Paris",
        "timezone: Europe/Pariss",
        "organizations[0] (acme).timezone",
        "Europe/Pariss",
        "unknown time zone 'Europe/Pariss'",
    ),
    (
        "send_time_out_of_range",
        'send_time: "08:30"',
        'send_time: "24:00"',
        "organizations[0] (acme).send_time",
        "24:00",
        "HH:MM",
    ),
    (
        "send_time_one_digit_hour",
        'send_time: "08:30"',
        "send_time: 8:30",
        "organizations[0] (acme).send_time",
        "8:30",
        "HH:MM",
    ),
    (
        "send_time_with_seconds",
        'send_time: "08:30"',
        'send_time: "08:30:00"',
        "organizations[0] (acme).send_time",
        "08:30:00",
        "HH:MM",
    ),
    (
        "unknown_holiday_country",
        "holidays: FR",
        "holidays: XX",
        "organizations[0] (acme).holidays",
        "XX",
        "unknown holiday country",
    ),
    (
        "sending_on_invoice_level_plan",
        "    level: invoice\n",
        "    level: invoice\n    invoice_sending: {channel: email, automatic: true}\n",
        "plans[1] (plan_inv).invoice_sending",
        "invoice_sending: {channel",
        "only customer-level plans",
    ),
    (
        "assignment_to_invoice_level_plan",
        "{customer: c_acme_2, plan: plan_std}",
        "{customer: c_acme_2, plan: plan_inv}",
        "assignments[1] (c_acme_2).plan",
        "c_acme_2",
        "invoice-level",
    ),
    (
        "unknown_user_org",
        "{id: u_bob, org: acme,",
        "{id: u_bob, org: acmee,",
        "users[1] (u_bob).org",
        "u_bob",
        "unknown organization 'acmee'",
    ),
    (
        "unknown_plan_org",
        "    org: acme\n    name: Standard",
        "    org: acne\n    name: Standard",
        "plans[0] (plan_std).org",
        "org: acne",
        "unknown organization 'acne'",
    ),
    (
        "unknown_plan_owner",
        "      owner: u_alice",
        "      owner: u_alicia",
        "plans[0] (plan_std).invoice_sending.owner",
        "u_alicia",
        "unknown user 'u_alicia'",
    ),
    (
        "unknown_default_owner",
        "default_owner: u_alice",
        "default_owner: u_nobody",
        "organizations[0] (acme).default_owner",
        "u_nobody",
        "unknown user 'u_nobody'",
    ),
    (
        "unknown_assignment_plan",
        "{customer: c_acme_2, plan: plan_std}",
        "{customer: c_acme_2, plan: plan_gold}",
        "assignments[1] (c_acme_2).plan",
        "plan_gold",
        "unknown plan 'plan_gold'",
    ),
    (
        "owner_of_another_org",
        "      owner: u_alice",
        "      owner: u_gina",
        "plans[0] (plan_std).invoice_sending.owner",
        "      owner: u_gina",
        "belongs to organization 'globex'",
    ),
    (
        "default_owner_of_another_org",
        "default_owner: u_alice",
        "default_owner: u_gina",
        "organizations[0] (acme).default_owner",
        "default_owner: u_gina",
        "belongs to organization 'globex'",
    ),
    (
        "assignment_across_orgs",
        "{customer: c_acme_2, plan: plan_std}",
        "{customer: c_glob_2, plan: plan_std}",
        "assignments[1] (c_glob_2).plan",
        "c_glob_2",
        "belongs to 'globex' in the accounting source",
    ),
    (
        "negative_delay",
        "delay_days: 0",
        "delay_days: -1",
        "plans[0] (plan_std).invoice_sending.delay_days",
        "delay_days: -1",
        "an integer from 0 to 3650",
    ),
    (
        "fractional_delay",
        "delay_days: 0",
        "delay_days: 1.5",
        "plans[0] (plan_std).invoice_sending.delay_days",
        "delay_days: 1.5",
        "must be an integer",
    ),
    (
        "quoted_delay",
        "delay_days: 0",
        'delay_days: "2"',
        "plans[0] (plan_std).invoice_sending.delay_days",
        "delay_days:",
        "must be an integer",
    ),
    (
        "unknown_channel",
        "channel: email",
        "channel: fax",
        "plans[0] (plan_std).invoice_sending.channel",
        "fax",
        "unknown channel 'fax'",
    ),
    (
        "subject_does_not_parse",
        'subject: "Invoice {{ invoice.number }}"',
        'subject: "Invoice {{ invoice.number "',
        "plans[0] (plan_std).invoice_sending.subject",
        "subject:",
        "does not parse",
    ),
    (
        "body_does_not_parse",
        "please find invoice {{ invoice.number }} attached.",
        "{% if invoice.number %} unclosed",
        "plans[0] (plan_std).invoice_sending.body",
        "unclosed",
        "does not parse",
    ),
    (
        "body_unknown_filter",
        'body: "Invoice {{ invoice.number }} is due {{ invoice.due_date }}"',
        'body: "Invoice {{ invoice.number|shout }}"',
        "plans[2] (plan_sms).invoice_sending.body",
        "shout",
        "does not parse",
    ),
    (
        "template_file_missing",
        "template: letters/invoice.txt.j2",
        "template: letters/missing.txt.j2",
        "plans[3] (plan_letter).invoice_sending.template",
        "missing.txt.j2",
        "not found",
    ),
    (
        "template_file_does_not_parse",
        "template: letters/invoice.txt.j2",
        "template: letters/broken.txt.j2",
        "plans[3] (plan_letter).invoice_sending.template",
        "broken.txt.j2",
        "syntax error",
    ),
    (
        "template_file_outside",
        "template: letters/invoice.txt.j2",
        "template: ../secrets.txt.j2",
        "plans[3] (plan_letter).invoice_sending.template",
        "secrets",
        "'..'",
    ),
    (
        "duplicate_org",
        "users:\n",
        "  - {id: globex, name: Again, timezone: UTC}\nusers:\n",
        "organizations[2] (globex).id",
        "Again",
        "duplicate organization 'globex'",
    ),
    (
        "duplicate_user",
        "  - {id: u_bob, org: acme, name: Bob Durand}\n",
        "  - {id: u_bob, org: acme, name: Bob Durand}\n  - {id: u_bob, org: acme, name: Robert}\n",
        "users[2] (u_bob).id",
        "Robert",
        "duplicate user 'u_bob'",
    ),
    (
        "duplicate_plan",
        "assignments:\n",
        "  - {id: plan_inv, org: acme, name: Copy, level: invoice}\nassignments:\n",
        "plans[4] (plan_inv).id",
        "Copy",
        "duplicate plan 'plan_inv'",
    ),
    (
        "duplicate_assignment",
        "  - {customer: c_glob_1, plan: plan_sms}\n",
        "  - {customer: c_glob_1, plan: plan_sms}\n  - {plan: plan_std, customer: c_acme_1}\n",
        "assignments[3] (c_acme_1).customer",
        "{plan: plan_std, customer: c_acme_1}",
        "duplicate assignment",
    ),
    (
        "duplicate_key",
        "    holidays: FR\n",
        "    holidays: FR\n    holidays: DE\n",
        "organizations[0] (acme).holidays",
        "holidays: DE",
        "given twice",
    ),
    (
        "missing_org_name",
        "    name: ACME SAS\n",
        "",
        "organizations[0] (acme).name",
        "- id: acme",
        "missing required field",
    ),
    (
        "missing_org_timezone",
        "    timezone: America/New_York\n",
        "",
        "organizations[1] (globex).timezone",
        "- id: globex",
        "missing required field",
    ),
    (
        "missing_user_org",
        "{id: u_bob, org: acme, name: Bob Durand}",
        "{id: u_bob, name: Bob Durand}",
        "users[1] (u_bob).org",
        "u_bob",
        "missing required field",
    ),
    (
        "missing_plan_level",
        "    level: customer\n    invoice_sending:\n      channel: email",
        "    invoice_sending:\n      channel: email",
        "plans[0] (plan_std).level",
        "- id: plan_std",
        "missing required field",
    ),
    (
        "missing_channel",
        "      channel: email\n",
        "",
        "plans[0] (plan_std).invoice_sending.channel",
        "delay_days: 0",
        "missing required field",
    ),
    (
        "missing_automatic",
        "      delay_days: 1\n      automatic: false\n",
        "      delay_days: 1\n",
        "plans[2] (plan_sms).invoice_sending.automatic",
        "channel: sms",
        "missing required field",
    ),
    (
        "missing_assignment_plan",
        "{customer: c_acme_2, plan: plan_std}",
        "{customer: c_acme_2}",
        "assignments[1] (c_acme_2).plan",
        "c_acme_2",
        "missing required field",
    ),
    (
        "unknown_field",
        "    holidays: FR\n",
        "    holidays: FR\n    colour: blue\n",
        "organizations[0] (acme).colour",
        "colour",
        "unknown field",
    ),
    (
        "misspelt_optional_field",
        "mail_from: billing@acme.example",
        "mail_form: billing@acme.example",
        "organizations[0] (acme).mail_form",
        "mail_form",
        "did you mean 'mail_from'",
    ),
    (
        "unknown_sending_field",
        "      delay_days: 1\n",
        "      delay_days: 1\n      delay: 2\n",
        "plans[2] (plan_sms).invoice_sending.delay",
        "delay: 2",
        "unknown field",
    ),
    (
        "unknown_top_level_key",
        "assignments:\n",
        "plan:\n  - {id: x}\nassignments:\n",
        "plan",
        "plan:",
        "unknown top-level key (did you mean 'plans'?)",
    ),
    (
        "enabled_at_without_offset",
        '"2026-11-01T00:00:00+01:00"',
        '"2026-11-01T00:00:00"',
        "organizations[0] (acme).invoice_sending_enabled_at",
        "2026-11-01",
        "with an offset",
    ),
    (
        "enabled_at_a_date",
        '"2026-11-01T00:00:00+01:00"',
        "2026-11-01",
        "organizations[0] (acme).invoice_sending_enabled_at",
        "2026-11-01",
        "ISO 8601 instant",
    ),
    (
        "enabled_at_garbage",
        '"2026-11-01T00:00:00+01:00"',
        "next monday",
        "organizations[0] (acme).invoice_sending_enabled_at",
        "next monday",
        "ISO 8601 instant",
    ),
    (
        "unknown_level",
        "    level: invoice\n",
        "    level: invoices\n",
        "plans[1] (plan_inv).level",
        "invoices",
        "not a plan level",
    ),
    (
        "subject_on_sms",
        "      channel: sms\n",
        "      channel: sms\n      subject: Hello\n",
        "plans[2] (plan_sms).invoice_sending.subject",
        "subject: Hello",
        "an SMS has no subject",
    ),
    (
        "subject_on_letter",
        "      channel: letter\n",
        "      channel: letter\n      subject: Hello\n",
        "plans[3] (plan_letter).invoice_sending.subject",
        "subject: Hello",
        "a letter has no subject",
    ),
    (
        "body_and_template",
        "      template: letters/invoice.txt.j2\n",
        "      template: letters/invoice.txt.j2\n      body: Hello\n",
        "plans[3] (plan_letter).invoice_sending.template",
        "letters/invoice",
        "either body or template",
    ),
    (
        "bad_user_email",
        "email: alice@acme.example",
        "email: alice-at-acme",
        "users[0] (u_alice).email",
        "alice-at-acme",
        "not an e-mail address",
    ),
    (
        "mail_from_with_display_name",
        "mail_from: billing@acme.example",
        'mail_from: "ACME <billing@acme.example>"',
        "organizations[0] (acme).mail_from",
        "ACME <",
        "not an e-mail address",
    ),
    (
        "id_too_long",
        "{id: u_bob,",
        "{id: " + "u" * 65 + ",",
        "users[1] (" + "u" * 65 + ").id",
        "u" * 65,
        "longer than 64",
    ),
    (
        "empty_name",
        "name: Per invoice",
        'name: ""',
        "plans[1] (plan_inv).name",
        'name: ""',
        "must not be empty",
    ),
    (
        "list_instead_of_text",
        "timezone: Europe/Paris",
        "timezone: [Europe/Paris]",
        "organizations[0] (acme).timezone",
        "[Europe/Paris]",
        "expected a text",
    ),
    (
        "section_not_a_list",
        "assignments:\n  - {customer: c_acme_1, plan: plan_std}\n"
        "  - {customer: c_acme_2, plan: plan_std}\n  - {customer: c_glob_1, plan: plan_sms}\n",
        "assignments: {customer: c_acme_1, plan: plan_std}\n",
        "assignments",
        "assignments:",
        "expected a list of entries",
    ),
]


@pytest.mark.parametrize(
    ("old", "new", "where", "marker", "words"),
    [pytest.param(*case[1:], id=case[0]) for case in REFUSED],
)
def test_an_invalid_file_is_refused_whole(
    tmp_path: Path, loaded: Loaded, old: str, new: str, where: str, marker: str, words: str
) -> None:
    assert snapshot(loaded.engine) == loaded.snapshot  # there is something to lose
    assert VALID.count(old) >= 1
    text = VALID.replace(old, new, 1)
    path = write(tmp_path, text)

    with pytest.raises(ConfigError) as caught:
        load_config_file(path, loaded.engine, accounting_engine=loaded.accounting, now=LATER)

    message = str(caught.value)
    # exactly one problem: no cascade of follow-up errors
    assert len(message.splitlines()) == 1, message
    assert message.startswith(f"{path}:{line_of(text, marker)}: {where}: "), message
    assert words in message
    assert snapshot(loaded.engine) == loaded.snapshot


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        pytest.param("", 1, "the file is empty", id="empty"),
        pytest.param("# nothing but a comment\n", 1, "the file is empty", id="comment_only"),
        pytest.param("~\n", 1, "the file is empty", id="null"),
        pytest.param("organizations:\nusers: []\n", 1, "the file defines nothing", id="empty_sections"),
        pytest.param("- id: acme\n", 1, "expected a mapping", id="a_list"),
        pytest.param(
            VALID.replace("name: Standard", "name: [Standard"),
            line_of(VALID, "level: customer"),
            "YAML syntax error",
            id="unclosed_bracket",
        ),
        pytest.param(
            VALID.replace("    timezone: Europe/Paris", "\ttimezone: Europe/Paris"),
            line_of(VALID, "timezone: Europe/Paris"),
            "YAML syntax error",
            id="tab_indent",
        ),
        pytest.param(
            VALID + "---\nusers: []\n", VALID.count("\n") + 1, "YAML syntax error", id="two_documents"
        ),
    ],
)
def test_unusable_files_are_refused(tmp_path: Path, loaded: Loaded, text: str, line: int, words: str) -> None:
    assert snapshot(loaded.engine) == loaded.snapshot
    path = write(tmp_path, text)

    with pytest.raises(ConfigError) as caught:
        load_config_file(path, loaded.engine, accounting_engine=loaded.accounting, now=LATER)

    message = str(caught.value)
    assert len(message.splitlines()) == 1, message
    assert message.startswith(f"{path}:{line}: "), message
    assert words in message
    assert snapshot(loaded.engine) == loaded.snapshot


def test_a_missing_file_is_a_config_error(tmp_path: Path, engine: sa.Engine) -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml: cannot read the file"):
        load_config_file(tmp_path / "nope.yaml", engine, now=NOW)


def test_every_problem_of_a_file_is_listed_in_file_order(
    tmp_path: Path, engine: sa.Engine, accounting: sa.Engine
) -> None:
    load_valid(tmp_path, engine, accounting)
    before = snapshot(engine)
    text = (
        VALID.replace("timezone: Europe/Paris", "timezone: Mars/Olympus")
        .replace("{id: u_bob, org: acme,", "{id: u_bob, org: nowhere,")
        .replace("channel: sms", "channel: pigeon")
        .replace("{customer: c_glob_1, plan: plan_sms}", "{customer: c_glob_1, plan: plan_nope}")
    )
    path = write(tmp_path, text)

    with pytest.raises(ConfigError) as caught:
        load_config_file(path, engine, accounting_engine=accounting, now=LATER)

    lines = str(caught.value).splitlines()
    assert [re.match(r".*?:(\d+): ([^:]+):", line).groups() for line in lines] == [  # type: ignore[union-attr]
        (str(line_of(text, "Mars/Olympus")), "organizations[0] (acme).timezone"),
        (str(line_of(text, "nowhere")), "users[1] (u_bob).org"),
        (str(line_of(text, "pigeon")), "plans[2] (plan_sms).invoice_sending.channel"),
        (str(line_of(text, "plan_nope")), "assignments[2] (c_glob_1).plan"),
    ]
    assert snapshot(engine) == before


def test_a_template_error_points_at_its_line_in_a_block(
    tmp_path: Path, engine: sa.Engine, accounting: sa.Engine
) -> None:
    text = VALID.replace(
        "please find invoice {{ invoice.number }} attached.",
        "please find\n        {{ invoice.number | }} attached.",
    )
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config_file(path, engine, accounting_engine=accounting, now=NOW)
    assert str(caught.value).startswith(f"{path}:{line_of(text, 'invoice.number | }}')}: ")
    assert snapshot(engine) == {t.name: [] for t in CONFIG_TABLES}


def test_a_plan_still_assigned_in_the_database_cannot_become_invoice_level(
    tmp_path: Path, engine: sa.Engine, accounting: sa.Engine
) -> None:
    load_valid(tmp_path, engine, accounting)
    before = snapshot(engine)
    text = "plans:\n  - {id: plan_std, org: acme, name: Standard, level: invoice}\n"
    path = write(tmp_path, text)

    with pytest.raises(ConfigError) as caught:
        load_config_file(path, engine, accounting_engine=accounting, now=LATER)

    assert str(caught.value) == (
        f"{path}:2: plans[0] (plan_std).level: 'invoice' but customers 'c_acme_1', 'c_acme_2' are "
        "assigned to this plan in the database; assign them another plan first "
        "(in this file or an earlier one)"
    )
    assert snapshot(engine) == before

    # reassigning those customers in the same file makes the change valid
    text += "  - {id: plan_basic, org: acme, name: Basic, level: customer}\nassignments:\n"
    text += "  - {customer: c_acme_1, plan: plan_basic}\n  - {customer: c_acme_2, plan: plan_basic}\n"
    summary = load_config_file(write(tmp_path, text), engine, accounting_engine=accounting, now=LATER)
    assert summary.assignments == Counts(updated=2)
    assert {r["plan_id"]: r["level"] for r in rows(engine, plans)}["plan_std"] == "invoice"


def test_a_plan_cannot_move_to_another_org_with_customers_of_the_old_one(
    tmp_path: Path, engine: sa.Engine, accounting: sa.Engine
) -> None:
    load_valid(tmp_path, engine, accounting)
    before = snapshot(engine)
    path = write(tmp_path, "plans:\n  - {id: plan_sms, org: acme, name: SMS, level: customer}\n")

    with pytest.raises(ConfigError) as caught:
        load_config_file(path, engine, accounting_engine=accounting, now=LATER)

    assert str(caught.value) == (
        f"{path}:2: plans[0] (plan_sms).org: 'acme' but customer 'c_glob_1' is assigned to this plan in the "
        "database and the accounting source places them in another organization; "
        "assign them another plan first"
    )
    assert snapshot(engine) == before


def test_moving_a_user_to_another_org_that_still_owns_things_is_refused(
    tmp_path: Path, engine: sa.Engine, accounting: sa.Engine
) -> None:
    load_valid(tmp_path, engine, accounting)
    before = snapshot(engine)
    path = write(tmp_path, "users:\n  - {id: u_alice, org: globex, name: Alice Martin}\n")

    with pytest.raises(ConfigError) as caught:
        load_config_file(path, engine, accounting_engine=accounting, now=LATER)

    assert str(caught.value).splitlines() == [
        f"{path}:2: users[0] (u_alice).org: 'globex' but the user is default_owner of organization 'acme'",
        f"{path}:2: users[0] (u_alice).org: 'globex' but the user owns the template of plan 'plan_std' "
        "of organization 'acme'",
    ]
    assert snapshot(engine) == before


def test_a_stored_user_of_another_org_is_refused_as_owner(
    tmp_path: Path, engine: sa.Engine, accounting: sa.Engine
) -> None:
    load_valid(tmp_path, engine, accounting)
    before = snapshot(engine)
    text = (
        "plans:\n  - id: plan_x\n    org: acme\n    name: X\n    level: customer\n"
        "    invoice_sending: {channel: letter, automatic: true, owner: u_gina}\n"
    )
    path = write(tmp_path, text)

    with pytest.raises(ConfigError) as caught:
        load_config_file(path, engine, accounting_engine=accounting, now=LATER)

    assert str(caught.value) == (
        f"{path}:6: plans[0] (plan_x).invoice_sending.owner: user 'u_gina' belongs to organization 'globex', "
        "not 'acme'"
    )
    assert snapshot(engine) == before


def test_now_must_be_aware(tmp_path: Path, engine: sa.Engine) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        load_config_file(write(tmp_path, VALID), engine, now=dt.datetime(2026, 11, 29, 9, 0))


def test_template_version_id_is_the_documented_hash() -> None:
    assert (
        template_version_id(
            "plan_std",
            channel="email",
            delay_days=0,
            automatic=True,
            owner="u_alice",
            subject="Invoice {{ invoice.number }}",
            body=STD_BODY,
            template=None,
        )
        == STD_TEMPLATE
    )
    assert re.fullmatch(r"plan_std@[0-9a-f]{12}", STD_TEMPLATE)


def test_aliases_are_never_expanded(tmp_path: Path, engine: sa.Engine) -> None:
    """A "billion laughs" file is a few hundred bytes; reading it must stay that small and
    quick, and it is refused for what it is (a list where an entry should be: on the line
    of the anchor, where the list is written)."""
    lines = ["x-0: &l0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    lines += [f"x-{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 9)]
    text = "\n".join(lines) + "\norganizations: [*l8]\nusers: &self [*self]\n"
    path = write(tmp_path, text)

    started = time.monotonic()
    with pytest.raises(ConfigError) as caught:
        load_config_file(path, engine, now=NOW)

    assert time.monotonic() - started < 5
    assert str(caught.value).splitlines() == [
        f"{path}:9: organizations[0]: expected a mapping of id, name, timezone, send_time, country, "
        "holidays, invoice_sending_enabled_at, default_owner, mail_from, reply_to, got a list",
        f"{path}:11: users[0]: expected a mapping of id, org, name, email, got a list",
    ]
    assert snapshot(engine) == {t.name: [] for t in CONFIG_TABLES}


def test_an_entry_with_a_mistake_is_not_reported_again_by_what_refers_to_it(
    tmp_path: Path, engine: sa.Engine
) -> None:
    """The plan refers to an organization whose own entry is wrong: one problem, not two."""
    text = (
        "organizations:\n  - {id: a, name: A, timezone: Mars/Olympus}\n"
        "plans:\n  - {id: p, org: a, name: P, level: customer,\n"
        "     invoice_sending: {channel: sms, automatic: true}}\n"
        "assignments:\n  - {customer: c, plan: p}\n"
    )
    path = write(tmp_path, text)

    with pytest.raises(ConfigError) as caught:
        load_config_file(path, engine, now=NOW)

    assert str(caught.value) == f"{path}:2: organizations[0] (a).timezone: unknown time zone 'Mars/Olympus'"
