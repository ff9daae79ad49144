"""The demo and benchmark generators write what the README, the lead's tests and the benchmark
rely on: the scenario rows exist with the promised properties, dates follow ``today``, output
is deterministic, PDFs are real, the rendered configuration loads, bench counts are exact.

Every test taking ``backend`` runs on SQLite and on PostgreSQL (see conftest).
"""

from __future__ import annotations

import datetime as dt
import itertools
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import phonenumbers
import pytest
import sqlalchemy as sa
import yaml
from babel.numbers import list_currencies
from dispatch.devtools.bench_data import BENCH_PLANS, append_new_invoices, generate_bench
from dispatch.devtools.demo_data import (
    MALFORMED,
    NOTABLE,
    apply_accounting_changes,
    build_demo,
    render_demo_config,
)
from dispatch.storage.accounting_schema import create_accounting_schema
from email_validator import EmailNotValidError, validate_email
from pypdf import PdfReader

from tests.conftest import PgDatabases, require_postgres

TODAY = dt.date(2026, 12, 2)  # a Wednesday
UTC = dt.UTC


def _rows(url: str, table: str) -> list[dict]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            key = {"customers": "customer_id", "contacts": "contact_id", "invoices": "invoice_id"}[table]
            return [
                dict(r) for r in conn.execute(sa.text(f"SELECT * FROM {table} ORDER BY {key}")).mappings()
            ]
    finally:
        engine.dispose()


def _instant(value: object) -> dt.datetime:
    """``updated_at`` as read back (datetime on PostgreSQL, text on SQLite) -> naive UTC."""
    return value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(str(value))


def _date(value: object) -> dt.date | None:
    if value is None or isinstance(value, dt.date):
        return value  # type: ignore[return-value]
    return dt.date.fromisoformat(str(value))


def _utc(value: object) -> dt.datetime:
    return _instant(value).replace(tzinfo=UTC)


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def demo(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """The demo built once per backend for the read-only tests of this module."""
    tmp_path = tmp_path_factory.mktemp(f"demo_{request.param}")
    pg: PgDatabases | None = None
    if request.param == "postgres":
        require_postgres()
        pg = PgDatabases()
        request.addfinalizer(pg.drop_all)
        url = pg.new("t_demo")
    else:
        url = f"sqlite:///{tmp_path / 'accounting.db'}"
    summary = build_demo(url, tmp_path / "pdfs", TODAY, config_out=tmp_path / "demo.yaml")
    invoices = {r["invoice_id"]: r for r in _rows(summary.accounting_url, "invoices")}
    customers = {r["customer_id"]: r for r in _rows(summary.accounting_url, "customers")}
    contacts = _rows(summary.accounting_url, "contacts")
    config = yaml.safe_load(summary.config_path.read_text(encoding="utf-8"))
    return summary, invoices, customers, contacts, config


def _plan_of(config: dict, customer_id: str) -> dict | None:
    plans = {p["id"]: p for p in config["plans"]}
    for a in config["assignments"]:
        if a["customer"] == customer_id:
            return plans[a["plan"]]
    return None


# --- schema ----------------------------------------------------------------------------------


def test_schema_has_contract_columns_and_indexes_and_recreates(db_urls: dict[str, str]) -> None:
    engine = sa.create_engine(db_urls["accounting"])
    try:
        create_accounting_schema(engine, drop_existing=False)
        insp = sa.inspect(engine)
        assert [c["name"] for c in insp.get_columns("invoices")] == [
            "invoice_id", "org_id", "customer_id", "number", "issue_date", "due_date", "currency",
            "total_amount", "status", "pdf_path", "updated_at",
        ]  # fmt: skip
        assert [c["name"] for c in insp.get_columns("customers")] == [
            "customer_id", "org_id", "name", "parent_customer_id", "language",
        ]  # fmt: skip
        assert [c["name"] for c in insp.get_columns("contacts")] == [
            "contact_id", "customer_id", "name", "email", "phone", "postal_address", "is_billing",
        ]  # fmt: skip
        indexed = {
            (t, tuple(ix["column_names"])) for t in ("invoices", "contacts") for ix in insp.get_indexes(t)
        }
        assert {
            ("invoices", ("updated_at",)),
            ("invoices", ("customer_id",)),
            ("contacts", ("customer_id",)),
        } <= indexed
        updated_at = next(c for c in insp.get_columns("invoices") if c["name"] == "updated_at")
        assert not getattr(updated_at["type"], "timezone", False)  # naive UTC, as accounting systems keep it

        with engine.begin() as conn:
            conn.execute(sa.text("INSERT INTO customers (customer_id, org_id, name) VALUES ('c1', 'o', 'C')"))
        create_accounting_schema(engine, drop_existing=False)  # keeps rows
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM customers")).scalar_one() == 1
        create_accounting_schema(engine, drop_existing=True)  # starts afresh
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM customers")).scalar_one() == 0
    finally:
        engine.dispose()


# --- demo: counts and scenarios ------------------------------------------------------------------


def test_demo_counts_match_database(demo) -> None:
    summary, invoices, customers, contacts, _ = demo
    assert summary.invoices == len(invoices) == 300
    assert summary.customers == len(customers) == 43
    assert summary.contacts == len(contacts) == 45
    assert summary.malformed == len(MALFORMED) == 6
    assert summary.org_ids == ("acme_fr", "hudson_ny")
    assert summary.pdfs == sum(1 for r in invoices.values() if r["pdf_path"] is not None)
    assert set(NOTABLE.values()) | set(MALFORMED.values()) <= set(invoices)
    by_org = {o: [r for r in invoices.values() if r["org_id"] == o] for o in summary.org_ids}
    assert len(by_org["acme_fr"]) > 100 and len(by_org["hudson_ny"]) > 100
    valid_currency = {r["currency"] for r in invoices.values() if r["invoice_id"] not in MALFORMED.values()}
    assert {r["currency"] for r in by_org["acme_fr"]} - {"EURO"} == {"EUR"}
    assert {r["currency"] for r in by_org["hudson_ny"]} - {"xx1"} == {"USD"}
    assert valid_currency == {"EUR", "USD"}
    assert {c["language"] for c in customers.values() if c["org_id"] == "acme_fr"} == {"fr"}
    assert {c["language"] for c in customers.values() if c["org_id"] == "hudson_ny"} <= {"en", None}


def test_demo_dates_window_and_progressive_import(demo) -> None:
    summary, invoices, *_ = demo
    issues = [_date(r["issue_date"]) for r in invoices.values() if r["issue_date"] is not None]
    assert min(issues) == TODAY - dt.timedelta(days=20) == summary.first_issue_date
    assert max(issues) == TODAY + dt.timedelta(days=10) == summary.last_issue_date
    assert sum(d > TODAY for d in issues) >= 20  # some issued in the future
    updated = [_instant(r["updated_at"]) for r in invoices.values()]
    assert max(updated) < dt.datetime.combine(TODAY + dt.timedelta(days=10), dt.time(0))
    for r in invoices.values():  # updated 0–3 days before issue (scenario rows may differ)
        if r["issue_date"] is not None and r["invoice_id"] not in NOTABLE.values():
            lag = (_date(r["issue_date"]) - _instant(r["updated_at"]).date()).days
            assert 0 <= lag <= 3, r
    # daily runs at 06:00 UTC on weekdays each import something new
    runs = [
        dt.datetime.combine(TODAY + dt.timedelta(days=k), dt.time(6))
        for k in range(-20, 10)
        if (TODAY + dt.timedelta(days=k)).weekday() < 5
    ]
    for previous, run in itertools.pairwise(runs):
        assert any(previous < u <= run for u in updated), run


def test_demo_switch_on_splits_not_required_from_to_send(demo) -> None:
    summary, invoices, *_ = demo
    enabled = summary.enabled_at
    assert enabled["acme_fr"] == dt.datetime(2026, 11, 18, tzinfo=ZoneInfo("Europe/Paris"))
    assert enabled["hudson_ny"] == dt.datetime(2026, 11, 25, tzinfo=ZoneInfo("America/New_York"))
    for key in ("imported_before_switch_on", "us_imported_before_switch_on"):
        row = invoices[NOTABLE[key]]
        # a daily run (even after a weekend) imports it before the switch-on instant
        assert _utc(row["updated_at"]) + dt.timedelta(days=3) < enabled[row["org_id"]], key
    before = [r for r in invoices.values() if _utc(r["updated_at"]) < enabled[r["org_id"]]]
    assert len(before) >= 30  # a real share of not_required invoices, in both orgs
    assert {r["org_id"] for r in before} == {"acme_fr", "hudson_ny"}
    others = set(NOTABLE.values()) - {
        NOTABLE["imported_before_switch_on"],
        NOTABLE["us_imported_before_switch_on"],
    }
    for invoice_id in others:
        row = invoices[invoice_id]
        assert _utc(row["updated_at"]) > enabled[row["org_id"]], invoice_id


def test_demo_customer_scenarios(demo) -> None:
    _, invoices, customers, contacts, config = demo
    of = {cid: [c for c in contacts if c["customer_id"] == cid] for cid in customers}
    has_invoice = {r["customer_id"] for r in invoices.values()}

    children = sorted(c for c, row in customers.items() if row["parent_customer_id"] == "acme_c_durand")
    assert children == ["acme_c_durand_lille", "acme_c_durand_lyon", "acme_c_durand_nantes"]
    assert _plan_of(config, "acme_c_durand_lille") is None  # R8
    assert invoices[NOTABLE["child_without_plan_1"]]["customer_id"] == "acme_c_durand_lille"
    parent_plan = _plan_of(config, "acme_c_durand")
    for child in ("acme_c_durand_lyon", "acme_c_durand_nantes"):  # R7: child's plan differs from parent's
        assert _plan_of(config, child) is not None and _plan_of(config, child) != parent_plan

    for cid in ("acme_c_petit", "hudson_c_fisher"):
        assert of[cid] == [] and cid in has_invoice
    for cid in ("acme_c_roux", "hudson_c_irving"):
        assert of[cid] and not any(c["is_billing"] for c in of[cid]) and any(c["email"] for c in of[cid])

    def email_ok(address: str) -> bool:
        try:
            validate_email(address, check_deliverability=False)
            return True
        except EmailNotValidError:
            return False

    assert [c["email"] for c in of["acme_c_dupont"]] == ["jean.dupont@@example"]
    assert not email_ok("jean.dupont@@example") and not email_ok(of["hudson_c_grant"][0]["email"])
    assert (
        sum(1 for c in contacts if c["email"] and c["is_billing"])
        == len([c for c in contacts if c["email"] and c["is_billing"] and email_ok(c["email"])]) + 2
    )  # exactly the two invalid ones

    phones = {c["phone"]: c for c in contacts if c["phone"]}
    assert "06 12 34 56 78" in phones and "(212) 555-0143" in phones
    fr = phonenumbers.parse("06 12 34 56 78", "FR")
    us = phonenumbers.parse("(212) 555-0143", "US")
    assert phonenumbers.is_valid_number(fr) and phonenumbers.is_valid_number(us)
    assert not phonenumbers.is_valid_number(phonenumbers.parse(of["acme_c_fontaine"][0]["phone"], "FR"))
    morel = of["acme_c_morel"]  # phone only on the non-billing contact
    assert [c["is_billing"] for c in morel if c["phone"]] == [False]

    addresses = [c["postal_address"] for c in contacts if c["postal_address"]]
    assert len(addresses) >= 5 and all(a.count("\n") >= 2 for a in addresses)
    assert not any(c["postal_address"] for c in of["acme_c_garnier"])
    assert _plan_of(config, "acme_c_garnier")["invoice_sending"]["channel"] == "letter"

    martin_billing = [c["email"] for c in of["acme_c_martin"] if c["is_billing"]]
    assert len(martin_billing) == 2


def test_demo_invoice_scenarios(demo) -> None:
    summary, invoices, _, _, config = demo
    paid = invoices[NOTABLE["paid_direct_debit"]]
    assert paid["status"] == "paid"
    sending = _plan_of(config, paid["customer_id"])["invoice_sending"]
    assert sending["automatic"] is True and sending["delay_days"] == 0

    voids = [r for r in invoices.values() if r["status"] == "void"]
    assert len(voids) >= 3 and {NOTABLE["void_at_import"], NOTABLE["us_void_at_import"]} <= {
        r["invoice_id"] for r in voids
    }
    future = invoices[NOTABLE["issued_in_future_delay0"]]
    assert _date(future["issue_date"]) > TODAY >= _instant(future["updated_at"]).date()
    assert _plan_of(config, future["customer_id"])["invoice_sending"]["delay_days"] == 0
    assert {r["invoice_id"] for r in invoices.values() if r["pdf_path"] is None} >= {
        NOTABLE["no_pdf"],
        NOTABLE["us_no_pdf"],
    }
    assert (
        _plan_of(config, invoices[NOTABLE["plan_without_template"]]["customer_id"]).get("invoice_sending")
        is None
    )

    # B5: open at import; the scripted change voids it after the weekday run that imports it
    (change,) = summary.changes
    late = invoices[NOTABLE["voided_after_import"]]
    assert change.invoice_id == late["invoice_id"] and change.status == "void" and late["status"] == "open"
    imported = _utc(late["updated_at"])
    assert change.at > imported and change.at.weekday() < 5
    first_run_after = imported.date() + dt.timedelta(days=1)
    while first_run_after.weekday() >= 5:
        first_run_after += dt.timedelta(days=1)
    assert change.at.date() == first_run_after  # same day as the importing run, after it
    assert _plan_of(config, late["customer_id"])["invoice_sending"]["delay_days"] == 3
    assert (
        apply_accounting_changes(summary.accounting_url, summary.changes, change.at - dt.timedelta(seconds=1))
        == []
    )
    assert apply_accounting_changes(summary.accounting_url, summary.changes, change.at) == [
        late["invoice_id"]
    ]
    assert apply_accounting_changes(summary.accounting_url, summary.changes, change.at) == []  # idempotent
    after = {r["invoice_id"]: r for r in _rows(summary.accounting_url, "invoices")}[late["invoice_id"]]
    assert after["status"] == "void" and _utc(after["updated_at"]) == change.at
    with pytest.raises(ValueError):
        apply_accounting_changes(summary.accounting_url, summary.changes, dt.datetime(2026, 12, 1))


def test_demo_malformed_rows(demo) -> None:
    _, invoices, customers, *_ = demo
    iso = set(list_currencies())
    bad = {
        "missing_issue_date": [r for r in invoices.values() if r["issue_date"] is None],
        "unknown_customer": [r for r in invoices.values() if r["customer_id"] not in customers],
        "negative_total": [r for r in invoices.values() if Decimal(str(r["total_amount"])) < 0],
    }
    assert {k: [r["invoice_id"] for r in v] for k, v in bad.items()} == {k: [MALFORMED[k]] for k in bad}
    currencies = {r["invoice_id"]: r["currency"] for r in invoices.values() if r["currency"] not in iso}
    assert currencies == {MALFORMED["bad_currency_euro"]: "EURO", MALFORMED["bad_currency_xx1"]: "xx1"}
    seen: dict[tuple, list[str]] = {}
    for r in invoices.values():
        seen.setdefault((r["org_id"], r["number"]), []).append(r["invoice_id"])
    duplicates = [sorted(ids) for ids in seen.values() if len(ids) > 1]
    assert duplicates == [sorted([MALFORMED["duplicate_number"], NOTABLE["two_billing_contacts"]])]
    dup, original = invoices[MALFORMED["duplicate_number"]], invoices[NOTABLE["two_billing_contacts"]]
    assert _instant(dup["updated_at"]) > _instant(original["updated_at"])  # the original arrives first


def test_demo_pdfs_exist_and_are_pdfs(demo) -> None:
    summary, invoices, *_ = demo
    with_pdf = [r for r in invoices.values() if r["pdf_path"] is not None]
    assert 0 < len(invoices) - len(with_pdf) <= 30  # most invoices have one, a few not
    for r in with_pdf:
        path = Path(r["pdf_path"])
        assert path.is_absolute() and path.parent == summary.pdf_dir
        assert path.read_bytes()[:5] == b"%PDF-", path
    sample = PdfReader(with_pdf[0]["pdf_path"])
    assert len(sample.pages) == 1 and with_pdf[0]["number"] in (sample.metadata.title or "")


# --- demo: configuration -------------------------------------------------------------------------


def test_demo_config_is_rendered_and_complete(demo) -> None:
    summary, _, customers, _, config = demo
    text = summary.config_path.read_text(encoding="utf-8")
    assert '"{{ acme_enabled_at }}"' not in text and '"{{ hudson_enabled_at }}"' not in text
    assert "{{ invoice.number }}" in text  # plan templates are left for the pipeline to render
    orgs = {o["id"]: o for o in config["organizations"]}
    assert orgs["acme_fr"]["invoice_sending_enabled_at"] == "2026-11-18T00:00:00+01:00"
    assert orgs["hudson_ny"]["invoice_sending_enabled_at"] == "2026-11-25T00:00:00-05:00"
    assert (orgs["acme_fr"]["timezone"], orgs["acme_fr"]["send_time"], orgs["acme_fr"]["holidays"]) == (
        "Europe/Paris", "08:30", "FR",
    )  # fmt: skip
    assert (orgs["hudson_ny"]["timezone"], orgs["hudson_ny"]["send_time"], orgs["hudson_ny"]["holidays"]) == (
        "America/New_York", "09:00", "US",
    )  # fmt: skip
    users = config["users"]
    for org_id, org in orgs.items():
        theirs = {u["id"] for u in users if u["org"] == org_id}
        assert len(theirs) >= 2 and org["default_owner"] in theirs

    plans = {p["id"]: p for p in config["plans"]}
    kinds = {
        (s["channel"], s["delay_days"], s["automatic"])
        for p in plans.values()
        if (s := p.get("invoice_sending"))
    }
    assert {
        ("email", 0, True),
        ("email", 3, True),
        ("sms", 1, True),
        ("letter", 0, True),
        ("email", 0, False),
    } <= kinds
    assert any(p["level"] == "invoice" and "invoice_sending" not in p for p in plans.values())
    assert any(p.get("invoice_sending", {}).get("template") == "fr/email.html.j2" for p in plans.values())
    assert any("owner" in p.get("invoice_sending", {}) for p in plans.values())
    assert any("owner" not in p["invoice_sending"] for p in plans.values() if "invoice_sending" in p)
    french = [
        p["invoice_sending"]
        for p in plans.values()
        if p["org"] == "acme_fr" and "body" in p.get("invoice_sending", {})
    ]
    assert french and all("facture" in s["body"] for s in french)

    assigned = [a["customer"] for a in config["assignments"]]
    assert len(assigned) == len(set(assigned)) == len(customers) - 1  # all but the R8 child
    for a in config["assignments"]:
        assert customers[a["customer"]]["org_id"] == plans[a["plan"]]["org"]
        assert plans[a["plan"]]["level"] == "customer"


def test_demo_config_loads_with_the_real_loader(demo, tmp_path: Path) -> None:
    from dispatch.config.load import load_config_file
    from dispatch.storage.migrate import upgrade

    summary = demo[0]
    dispatch_engine = sa.create_engine(f"sqlite:///{tmp_path / 'dispatch.db'}")
    accounting_engine = sa.create_engine(summary.accounting_url)
    try:
        upgrade(dispatch_engine)
        load_config_file(
            summary.config_path,
            dispatch_engine,
            accounting_engine=accounting_engine,
            now=dt.datetime.now(UTC),
        )
        with dispatch_engine.connect() as conn:
            enabled = dict(
                conn.execute(sa.text("SELECT org_id, invoice_sending_enabled_at FROM organizations")).all()
            )
            assigned = conn.execute(sa.text("SELECT count(*) FROM customer_plans")).scalar_one()
        assert _utc(enabled["acme_fr"]) == summary.enabled_at["acme_fr"]
        assert _utc(enabled["hudson_ny"]) == summary.enabled_at["hudson_ny"]
        assert assigned == summary.customers - 1
    finally:
        dispatch_engine.dispose()
        accounting_engine.dispose()


def test_render_refuses_a_template_without_placeholders(tmp_path: Path) -> None:
    template = tmp_path / "config.yaml"
    template.write_text(
        'organizations:\n  - id: acme_fr\n    invoice_sending_enabled_at: "2026-01-01T00:00:00Z"\n'
    )
    with pytest.raises(ValueError, match="acme_enabled_at"):
        render_demo_config(TODAY, template)


# --- demo: determinism and relative dates ---------------------------------------------------------


def test_demo_is_deterministic_and_follows_today(tmp_path: Path) -> None:
    pdfs = tmp_path / "pdfs"

    def build(name: str, today: dt.date, seed: int = 7) -> dict[str, list[dict]]:
        url = f"sqlite:///{tmp_path / name}"
        build_demo(url, pdfs, today, seed, config_out=tmp_path / f"{name}.yaml")
        return {t: _rows(url, t) for t in ("customers", "contacts", "invoices")}

    first = build("a.db", TODAY)
    first_pdf = (pdfs / f"{NOTABLE['two_billing_contacts']}.pdf").read_bytes()
    again = build("b.db", TODAY)
    assert again == first
    assert (pdfs / f"{NOTABLE['two_billing_contacts']}.pdf").read_bytes() == first_pdf
    assert (tmp_path / "a.db.yaml").read_text() == (tmp_path / "b.db.yaml").read_text()

    other_seed = build("c.db", TODAY, seed=8)
    assert other_seed["customers"] == first["customers"] and other_seed["contacts"] == first["contacts"]
    assert other_seed["invoices"] != first["invoices"]
    scenario_ids = set(NOTABLE.values()) | set(MALFORMED.values())
    scenarios = {
        r["invoice_id"]: r["updated_at"] for r in first["invoices"] if r["invoice_id"] in scenario_ids
    }
    assert {
        r["invoice_id"]: r["updated_at"] for r in other_seed["invoices"] if r["invoice_id"] in scenario_ids
    } == scenarios

    shift = dt.timedelta(days=37)  # crosses a month and changes the weekday
    later = build("d.db", TODAY + shift)
    assert [r["invoice_id"] for r in later["invoices"]] == [r["invoice_id"] for r in first["invoices"]]
    for before, after in zip(first["invoices"], later["invoices"], strict=True):
        assert _instant(after["updated_at"]) - _instant(before["updated_at"]) == shift
        if before["issue_date"] is None:
            assert after["issue_date"] is None
        else:
            assert _date(after["issue_date"]) - _date(before["issue_date"]) == shift
            assert _date(after["due_date"]) - _date(before["due_date"]) == shift
        assert (after["number"], after["customer_id"], after["status"]) == (
            before["number"], before["customer_id"], before["status"],
        )  # fmt: skip
    later_config = yaml.safe_load((tmp_path / "d.db.yaml").read_text())
    # (today + 37 days) - 14 days
    assert later_config["organizations"][0]["invoice_sending_enabled_at"] == "2026-12-25T00:00:00+01:00"


# --- benchmark -----------------------------------------------------------------------------------


def test_bench_exact_counts_config_and_append(db_urls: dict[str, str], tmp_path: Path) -> None:
    url = db_urls["accounting"]
    start = dt.date(2026, 12, 2)
    summary = generate_bench(url, 2000, orgs=2, start=start, seed=3, config_out=tmp_path / "bench.yaml")
    invoices = _rows(url, "invoices")
    customers = {r["customer_id"]: r for r in _rows(url, "customers")}
    contacts = _rows(url, "contacts")
    assert len(invoices) == summary.invoices == 2000 and summary.appended == 0
    assert len(customers) == summary.customers == 200 and len(contacts) == summary.contacts
    assert {r["org_id"] for r in invoices} == {"bench_paris", "bench_newyork"}
    assert all(r["pdf_path"] is None for r in invoices)
    assert len({(r["org_id"], r["number"]) for r in invoices}) == 2000
    assert all(
        r["customer_id"] in customers and r["org_id"] == customers[r["customer_id"]]["org_id"]
        for r in invoices
    )
    midnight = dt.datetime.combine(start, dt.time(0))
    assert all(midnight - dt.timedelta(days=1) <= _instant(r["updated_at"]) < midnight for r in invoices)
    assert {r["currency"] for r in invoices if r["org_id"] == "bench_paris"} == {"EUR"}
    assert all(Decimal(str(r["total_amount"])) > 0 for r in invoices)

    config = yaml.safe_load((tmp_path / "bench.yaml").read_text())
    plans = {p["id"]: p for p in config["plans"]}
    assignment = {a["customer"]: plans[a["plan"]] for a in config["assignments"]}
    assert set(assignment) == set(customers) and len(config["assignments"]) == len(customers)
    assert {
        (p["invoice_sending"]["channel"], p["invoice_sending"]["delay_days"]) for p in plans.values()
    } == {(p[1], p[2]) for p in BENCH_PLANS}
    billing = {c["customer_id"]: c for c in contacts if c["is_billing"]}
    assert set(billing) == set(customers)
    for cid, plan in assignment.items():
        assert plan["org"] == customers[cid]["org_id"]
        channel = plan["invoice_sending"]["channel"]
        if channel == "sms":
            region = "FR" if plan["org"] == "bench_paris" else "US"
            assert phonenumbers.is_valid_number(phonenumbers.parse(billing[cid]["phone"], region))
        if channel == "letter":
            assert billing[cid]["postal_address"]

    assert append_new_invoices(url, fraction=0.01) == 20
    after = _rows(url, "invoices")
    new = [r for r in after if _instant(r["updated_at"]) >= midnight]
    assert len(after) == 2020 and len(new) == 20
    next_midnight = midnight + dt.timedelta(days=1)
    assert all(
        next_midnight - dt.timedelta(hours=1) <= _instant(r["updated_at"]) <= next_midnight for r in new
    )
    assert all(_date(r["issue_date"]) >= start for r in new)
    assert len({r["invoice_id"] for r in after}) == 2020
    assert len({(r["org_id"], r["number"]) for r in after}) == 2020

    explicit = dt.datetime(2026, 12, 5, 7, 0, tzinfo=ZoneInfo("Europe/Paris"))
    assert append_new_invoices(url, fraction=0.5, updated_at=explicit, base=10) == 5
    latest = max(_utc(r["updated_at"]) for r in _rows(url, "invoices"))
    assert latest <= explicit and latest > explicit - dt.timedelta(hours=1)


def test_bench_append_fraction_and_config_loads(tmp_path: Path) -> None:
    from dispatch.config.load import load_config_file
    from dispatch.storage.migrate import upgrade

    url = f"sqlite:///{tmp_path / 'bench.db'}"
    summary = generate_bench(url, 1000, start=dt.date(2026, 12, 2), seed=1, append_fraction=0.05,
                             config_out=tmp_path / "bench.yaml")  # fmt: skip
    assert (summary.invoices, summary.appended) == (1000, 50)
    assert len(_rows(url, "invoices")) == 1050
    dispatch_engine = sa.create_engine(f"sqlite:///{tmp_path / 'dispatch.db'}")
    try:
        upgrade(dispatch_engine)
        load_config_file(tmp_path / "bench.yaml", dispatch_engine, accounting_engine=sa.create_engine(url),
                         now=dt.datetime.now(UTC))  # fmt: skip
        with dispatch_engine.connect() as conn:
            assert (
                conn.execute(sa.text("SELECT count(*) FROM customer_plans")).scalar_one() == summary.customers
            )
    finally:
        dispatch_engine.dispose()


@pytest.mark.slow
def test_bench_writes_100k_invoices(db_urls: dict[str, str]) -> None:
    url = db_urls["accounting"]
    generate_bench(url, 100_000, start=dt.date(2026, 12, 2), seed=0)
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM invoices")).scalar_one() == 100_000
            assert conn.execute(sa.text("SELECT count(*) FROM customers")).scalar_one() == 10_000
    finally:
        engine.dispose()
