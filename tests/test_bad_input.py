"""Bad input never stops the others (SPEC B6) and templates are user content (SPEC B7),
end to end: malformed accounting rows, hostile templates and customer names, garbage on the
command line.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from dispatch.stages.resolve_templates import action_id_for

from tests.builders import World, eml_parts, instant, open_world

UPDATED = "2026-12-02T04:30Z"  # every row of the extract; runs at 05:00Z re-read it (look-back)


@pytest.fixture
def w(backend: str, tmp_path: Path) -> Iterator[World]:
    with open_world(backend, tmp_path) as world:
        yield world


def rejected(w: World) -> dict[str, str]:
    return {r["invoice_id"]: r["reason"] for r in w.rows("SELECT invoice_id, reason FROM rejected_invoices")}


def bad_row(w: World, invoice_id: str, **changes: object) -> None:
    row = {
        "invoice_id": invoice_id,
        "org_id": "acme",
        "customer_id": "c1",
        "number": f"N-{invoice_id}",
        "issue_date": "2026-12-02",
        "due_date": "2027-01-01",
        "currency": "EUR",
        "total_amount": "10.00",
        "status": "open",
        "updated_at": UPDATED,
    }
    row.update(changes)
    w.raw_invoice(**row)


def test_b6_every_malformed_row_kind_is_quarantined_with_its_reason_and_the_rest_proceeds(w: World) -> None:
    w.org().org("beta", default_owner="u_bea", mail_from=None).plan("p_mail")
    w.customer("c1", plan="p_mail").customer("c_beta", "beta").load_config()
    w.invoice("i_ok", "c1", number="OK-1", updated=UPDATED)
    expected = {
        "  ": "missing_invoice_id",
        "i_unknown_org": "unknown_org",
        "i_no_number": "missing_number",
        "i_blank_number": "missing_number",
        "i_no_issue_date": "missing_issue_date",
        "i_ghost_customer": "unknown_customer",
        "i_other_orgs_customer": "customer_org_mismatch",
        "i_euro": "bad_currency",
        "i_no_currency": "bad_currency",
        "i_negative": "negative_total",
        "i_draft": "bad_status",
        "i_dup_b": "duplicate_number",  # same number as i_dup_a, in the same extract
    }
    bad_row(w, "  ")
    bad_row(w, "i_unknown_org", org_id="nope")
    bad_row(w, "i_no_number", number=None)
    bad_row(w, "i_blank_number", number="   ")
    bad_row(w, "i_no_issue_date", issue_date=None)
    bad_row(w, "i_ghost_customer", customer_id="c_ghost")
    bad_row(w, "i_other_orgs_customer", customer_id="c_beta")
    bad_row(w, "i_euro", currency="EURO")
    bad_row(w, "i_no_currency", currency=None)
    bad_row(w, "i_negative", total_amount="-5.00")
    bad_row(w, "i_draft", status="draft")
    bad_row(w, "i_dup_a", number="DUP-1")
    bad_row(w, "i_dup_b", number="DUP-1")
    bad_row(w, "i_same_number_other_org", org_id="beta", customer_id="c_beta", number="OK-1")  # fine
    if w.backend == "sqlite":  # a typed PostgreSQL column cannot even hold these
        expected |= {
            "i_bad_issue": "invalid_issue_date",
            "i_bad_due": "invalid_due_date",
            "i_bad_total": "invalid_total",
        }
        bad_row(w, "i_bad_issue", issue_date="2026-13-45")
        bad_row(w, "i_bad_due", due_date="tomorrow")
        bad_row(w, "i_bad_total", total_amount="12,50")
        # another writer's spelling of a valid date and instant: not malformed
        bad_row(w, "i_other_writer", issue_date="2026-12-02 00:00:00", updated_at="2026-12-02 04:30:00")

    report = w.run("2026-12-02T05:00Z")
    assert rejected(w) == expected
    for row in w.rows("SELECT * FROM rejected_invoices"):
        assert instant(row["at"]) == instant("2026-12-02T05:00Z")
        assert row["run_id"] == report.run_id
        assert json.loads(row["row"])["invoice_id"] == row["invoice_id"]  # the raw row, as text
    assert (
        json.loads(w.rows("SELECT \"row\" FROM rejected_invoices WHERE invoice_id = 'i_euro'")[0]["row"])[
            "currency"
        ]
        == "EURO"
    )
    imported = {r["invoice_id"] for r in w.rows("SELECT invoice_id FROM invoices")}
    assert imported == {"i_ok", "i_dup_a", "i_same_number_other_org"} | (
        {"i_other_writer"} if w.backend == "sqlite" else set()
    )
    assert {a["status"] for a in w.actions()} == {"sent"}
    assert report.counts["run"]["rejected"] == len(expected)
    assert report.counts["totals"]["rejected"] == len(expected)
    assert report.counts["totals"]["sent"] == len(imported) - 1  # beta's customer has no plan
    assert w.view_ids("invoices_without_template") == {"i_same_number_other_org"}

    # a new id re-using an imported number is a duplicate too; the original is untouched
    bad_row(w, "i_dup_of_ok", number="OK-1", updated_at="2026-12-02T10:00Z")
    w.run("2026-12-03T05:00Z")
    assert rejected(w)["i_dup_of_ok"] == "duplicate_number"
    assert w.invoice_row("i_ok")["number"] == "OK-1"
    assert w.action("i_dup_of_ok") is None


def test_b6_a_malformed_row_read_again_is_not_quarantined_twice_and_imports_once_fixed(w: World) -> None:
    w.org().plan("p_mail").customer("c1", plan="p_mail").load_config()
    bad_row(w, "i_euro", currency="EURO")
    for run in ("2026-12-02T05:00Z", "2026-12-02T05:20Z", "2026-12-03T05:00Z"):  # look-back re-reads
        w.run(run)
    rows = w.rows("SELECT invoice_id, reason FROM rejected_invoices")
    assert rows == [{"invoice_id": "i_euro", "reason": "bad_currency"}]

    w.update_invoice("i_euro", updated="2026-12-03T09:00Z", currency="EUR")  # fixed in accounting
    report = w.run("2026-12-04T05:00Z")
    assert w.action("i_euro")["status"] == "sent"
    assert w.invoice_row("i_euro")["first_seen_at"] == instant("2026-12-04T05:00Z")
    assert report.counts["totals"]["rejected"] == 0  # imported now: no longer counted as rejected
    assert len(w.rows("SELECT invoice_id FROM rejected_invoices")) == 1  # the history stays


SANDBOX_ESCAPES = {
    "c_mro": "{{ customer.__class__.__mro__[1].__subclasses__() }}",
    "c_globals": "{{ cycler.__init__.__globals__ }}",
    "c_str_format": "{{ '{0.__class__}'.format(invoice) }}",
    "c_loop": "{% for k in invoice.items() %}{{ k.__class__.__base__ }}{% endfor %}",
    "c_mutate": "{{ invoice.update({'number': 'FORGED'}) }}",
}


def test_b7_templates_reaching_for_python_internals_fail_as_template_errors(w: World) -> None:
    w.org().plan("p_good")
    for customer, body in SANDBOX_ESCAPES.items():
        w.plan(f"p_{customer}", body=body).customer(customer, plan=f"p_{customer}")
    w.customer("c_good", plan="p_good").load_config()  # they parse: only running them is refused
    for customer in SANDBOX_ESCAPES:
        w.invoice(f"i_{customer}", customer)
    w.invoice("i_good", "c_good")

    w.run("2026-12-02T05:00Z")
    for customer in SANDBOX_ESCAPES:
        action = w.action(f"i_{customer}")
        assert (action["status"], action["manual_reason"]) == ("manual", "template_error"), customer
        assert "Traceback" not in action["detail"]
    assert w.outbox_files() == [f"email/{action_id_for('i_good')}.eml"]


def test_b7_html_in_a_customer_name_is_escaped_in_the_html_part(w: World) -> None:
    w.org()
    w.plan("p_text", body="Dear {{ customer.name }},\n\nplease pay.")
    w.plan("p_html", body="<p>Dear <b>{{ customer.name }}</b></p>")
    name = '<script>alert("x")</script> & <img src=x onerror=alert(1)>'
    w.customer("c_text", plan="p_text", name=name).customer("c_html", plan="p_html", name=name).load_config()
    w.invoice("i_text", "c_text").invoice("i_html", "c_html")
    w.run("2026-12-02T05:00Z")

    for inv in ("i_text", "i_html"):
        parts = eml_parts(w.email_of(inv))
        assert "<script>" not in parts["html"] and "<img" not in parts["html"], inv
        assert "&lt;script&gt;alert(" in parts["html"], inv
        assert "&amp; &lt;img src=x" in parts["html"], inv
        assert name in parts["text"], inv  # the text part shows the name as it is
    assert "<b>" in eml_parts(w.email_of("i_html"))["html"]  # the template's own markup stays


def test_b7_line_breaks_smuggled_into_headers_are_refused(w: World) -> None:
    w.org().plan("p_mail", subject="Invoice for {{ customer.name }}", body="Dear {{ customer.name }}")
    w.customer("c_subject", plan="p_mail", name="Durand\r\nBcc: victim@evil.example")
    w.customer("c_to", plan="p_mail", email="ap@durand.example\r\nBcc: victim@evil.example")
    w.customer("c_fine", plan="p_mail", name="Durand SA").load_config()
    w.invoice("i_subject", "c_subject").invoice("i_to", "c_to").invoice("i_fine", "c_fine")
    w.run("2026-12-02T05:00Z")

    subject = w.action("i_subject")
    assert (subject["status"], subject["manual_reason"]) == ("manual", "template_error")
    assert "subject" in subject["detail"]
    to = w.action("i_to")
    assert (to["status"], to["manual_reason"]) == ("manual", "invalid_contact")
    assert w.outbox_files() == [f"email/{action_id_for('i_fine')}.eml"]
    message = w.email_of("i_fine")
    assert message["Bcc"] is None
    assert message["Subject"] == "Invoice for Durand SA"


GARBAGE_AT = [
    ("run", "--at", "yesterday"),
    ("run", "--at", "2026-13-01T05:00:00Z"),
    ("preview", "--at", "05:00"),
    ("todo", "ignore", "act_x", "--at", "soon"),
    ("invoices", "mark-sent", "i1", "--at", "2026-02-30"),
]


def test_garbage_at_is_exit_2_with_one_line_on_stderr_and_changes_nothing(w: World) -> None:
    w.org().plan("p").customer("c1", plan="p").load_config()
    w.invoice("i1", "c1")
    w.run("2026-12-01T05:00Z")
    before = w.dump()
    for args in GARBAGE_AT:
        result = w.cli(*args)
        assert result.exit_code == 2, (args, result.output)
        assert result.stderr.count("\n") == 1 and "--at" in result.stderr, (args, result.stderr)
        assert result.stdout == "", args
    assert w.dump() == before
    assert w.outbox_files() == []


# --- issue 7: hostile configuration values, instants and environment ---------------------------

OUT_OF_RANGE_AT = [
    "0001-01-01T00:00:00Z",
    "9999-12-31T23:59:59Z",
    "0001-01-01T00:00:00+14:00",  # before year 1 once in UTC
    "9999-12-31T23:59:59-14:00",  # after year 9999 once in UTC
    "1969-12-31T23:59:59Z",
    "2200-01-01T00:00:00Z",
]


def _refused_in_one_line(result, *words: str) -> None:  # type: ignore[no-untyped-def]
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in result.stderr, (word, result.stderr)


@pytest.mark.parametrize("value", OUT_OF_RANGE_AT)
def test_an_instant_outside_the_schedulers_range_is_exit_2_in_one_line(w: World, value: str) -> None:
    w.org().plan("p").customer("c1", plan="p").load_config()
    w.invoice("i1", "c1")
    w.run("2026-12-01T05:00Z")
    before = w.dump()
    for args in (
        ("run", "--at", value),
        ("preview", "--at", value),
        ("todo", "ignore", "act_x", "--at", value),
        ("invoices", "mark-sent", "i1", "--at", value),
        ("bounces", "pull", "--at", value),
    ):
        result = w.cli(*args)
        _refused_in_one_line(result, "--at", "1970-01-01", "2200-01-01")
        assert result.stdout == "", args
    assert w.dump() == before


def test_the_edges_of_the_range_are_accepted(w: World) -> None:
    w.org().plan("p").customer("c1", plan="p").load_config()
    for value in ("1970-01-01T00:00:00Z", "2199-12-31T23:59:59Z"):
        result = w.cli("preview", "--at", value, "--json")
        assert result.exit_code == 0, (value, result.output)


HOSTILE_CONFIG_VALUES = {
    # field as written in the YAML → words the refusal must contain
    "delay_days: 1000000000000000000000000000000": ("delay_days", "from 0 to 3650"),
    "delay_days: 3651": ("delay_days", "from 0 to 3650"),
    "delay_days: -1": ("delay_days", "from 0 to 3650"),
    "delay_days: " + "9" * 5000: ("delay_days", "from 0 to 3650"),
}

HOSTILE_ENABLED_AT = [
    "0001-01-01T00:00:00+01:00",
    "9999-12-31T23:59:59-01:00",
    "1969-12-31T23:00:00+00:00",
    "2200-01-01T00:00:00+00:00",
]


def _config_with(w: World, **plan: object) -> Path:
    w.org().plan("p_ok").plan("p_bad", **plan).customer("c1", plan="p_ok").customer("c2", plan="p_bad")  # type: ignore[arg-type]
    return w.config_file()


def _load_refused(w: World, path: Path, *words: str) -> None:
    before = w.dump()
    result = w.cli("config", "load", str(path))
    _refused_in_one_line(result, *words)
    assert result.stdout == ""
    assert w.dump() == before


@pytest.mark.parametrize("line", list(HOSTILE_CONFIG_VALUES))
def test_a_delay_outside_0_to_3650_days_is_refused_at_load_in_one_line(w: World, line: str) -> None:
    path = _config_with(w, delay=7)
    text = path.read_text(encoding="utf-8")
    assert text.count("delay_days: 7") == 1
    path.write_text(text.replace("delay_days: 7", line), encoding="utf-8")
    _load_refused(w, path, *HOSTILE_CONFIG_VALUES[line])


@pytest.mark.parametrize("value", HOSTILE_ENABLED_AT)
def test_an_enabled_at_outside_the_range_is_refused_at_load_in_one_line(w: World, value: str) -> None:
    w.org(enabled_at=value).plan("p").customer("c1", plan="p")
    _load_refused(w, w.config_file(), "invoice_sending_enabled_at", "1970-01-01")


def test_deeply_nested_yaml_is_refused_in_one_line(w: World) -> None:
    path = w.root / "nested.yaml"
    path.write_text("organizations: " + "[" * 5000 + "]" * 5000 + "\n", encoding="utf-8")
    _load_refused(w, path, "nested more than")


def test_a_template_whose_constant_is_over_a_limit_is_refused_at_load(w: World) -> None:
    path = _config_with(w, body="{{ 'x'|center(1500000000) }}")
    _load_refused(w, path, "p_bad", "MAX_VALUE_CHARS")


BAD_ENVIRONMENT = {
    "DISPATCH_CLAIM_LEASE_SECONDS": ["abc", "-5", "0", "0.5", "inf", "nan", "1e309"],
    "DISPATCH_BATCH_SIZE": ["abc", "0", "-1", "1e3", "1000001"],
    "DISPATCH_MAX_ATTEMPTS": ["x", "0", "101"],
    "DISPATCH_SEND_CONCURRENCY": ["0", "100000"],
    "DISPATCH_HTTP_TIMEOUT": ["0", "-1", "inf", "nan", "soon"],
    "SMTP_PORT": ["0", "65536", "smtp"],
    "SMTP_TIMEOUT": ["0", "inf"],
    "SMTP_CONNECTIONS": ["0"],
    "SMTP_STARTTLS": ["maybe"],
    "TWILIO_MAX_SEGMENTS": ["0", "many"],
    "DISPATCH_EMAIL_BACKEND": ["mailgun"],
    "DISPATCH_SMS_BACKEND": ["pigeon"],
    "DISPATCH_LETTER_BACKEND": ["fax"],
    "SENDGRID_API_HOST": ["api.sendgrid.com", "ftp://api.sendgrid.com", "http://"],
    "TWILIO_API_BASE": ["not a url"],
    "PRINTAPI_URL": ["javascript:alert(1)"],
}


def test_every_bad_environment_value_is_exit_2_naming_the_variable(w: World) -> None:
    w.org().plan("p").customer("c1", plan="p").load_config()
    w.invoice("i1", "c1")
    before = w.dump()
    for name, values in BAD_ENVIRONMENT.items():
        for value in values:
            result = w.cli("run", "--at", "2026-12-02T05:00Z", **{name: value})
            _refused_in_one_line(result, name)
    assert w.dump() == before
    assert w.outbox_files() == []


@pytest.mark.parametrize("name", ["ACCOUNTING_DB_URL", "DISPATCH_DB_URL"])
def test_a_garbage_database_url_is_exit_2_and_never_echoed(w: World, name: str) -> None:
    w.org().plan("p").customer("c1", plan="p").load_config()
    w.invoice("i1", "c1")
    before = w.dump()
    for url in ("garbage", "::::", "mysql://root:s3cr3t@db/x", "postgresql+psycopg://u:s3cr3t@h:port/x"):
        for args in (("run", "--at", "2026-12-02T05:00Z"), ("invoices", "--json")):
            result = w.cli(*args, **{name: url})
            _refused_in_one_line(result, name)
            assert "s3cr3t" not in result.output and "s3cr3t" not in result.stderr
    assert w.dump() == before


def test_a_lease_of_one_second_or_more_is_accepted(w: World) -> None:
    w.org().plan("p").customer("c1", plan="p").load_config()
    w.invoice("i1", "c1")
    result = w.cli("run", "--at", "2026-12-02T05:00Z", DISPATCH_CLAIM_LEASE_SECONDS="1")
    assert result.exit_code == 0, result.output
    assert w.action("i1")["status"] == "sent"


# --- issue 7: templates bounded at send time ----------------------------------------------------

RUNTIME_BOMBS = {
    "c_loop": ("{% for a in range(15000) %}{{ 'a'*100000 }}{% endfor %}", "MAX_OUTPUT_CHARS"),
    "c_join": ("{{ range(100000)|join('x'*100000) }}", "MAX_VALUE_CHARS"),
    "c_replace": ("{{ ('a'*100000)|replace('a', 'b'*100000) }}", "MAX_VALUE_CHARS"),
    "c_nested": (
        "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}x",
        "MAX_LOOP_ITERATIONS",
    ),
    "c_doubling": (
        "{% set ns = namespace(s='x') %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}x",
        "MAX_VALUE_CHARS",
    ),
}


def test_templates_over_a_limit_at_send_time_are_template_errors_naming_it_and_the_rest_go(w: World) -> None:
    w.org().plan("p_good")
    for customer, (body, _limit) in RUNTIME_BOMBS.items():
        w.plan(f"p_{customer}", body=body).customer(customer, plan=f"p_{customer}")
    w.customer("c_good", plan="p_good").load_config()  # they compile: only running them is refused
    for customer in RUNTIME_BOMBS:
        w.invoice(f"i_{customer}", customer)
    w.invoice("i_good", "c_good")

    w.run("2026-12-02T05:00Z")
    for customer, (_body, limit) in RUNTIME_BOMBS.items():
        action = w.action(f"i_{customer}")
        assert (action["status"], action["manual_reason"]) == ("manual", "template_error"), customer
        assert limit in action["detail"], (customer, action["detail"])
    assert w.action("i_good")["status"] == "sent"
    assert w.outbox_files() == [f"email/{action_id_for('i_good')}.eml"]


@pytest.mark.parametrize("issued", ["2926-12-01", "9999-12-31"])
def test_a_far_future_issue_date_is_never_wrapped_around_and_sent(w: World, issued: str) -> None:
    w.org().plan("p").customer("c1", plan="p").load_config()
    w.invoice("i_far", "c1", issued=issued, due=issued, updated="2026-12-02T04:00Z").invoice("i_ok", "c1")
    for at in ("2026-12-02T05:00Z", "2026-12-03T05:00Z"):
        w.run(at)
    far = w.action("i_far")
    # rejected at import, or kept without a scheduled instant: never due, never sent
    assert far is None or (far["status"], far["scheduled_for"]) == ("scheduled", None)
    assert w.action("i_ok")["status"] == "sent"
    assert w.outbox_files() == [f"email/{action_id_for('i_ok')}.eml"]
