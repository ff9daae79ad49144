"""Templates are bounded while they run (issue 7): output, values, loops, calls, time — and
constant folding at compile time, so that ``config load`` itself stays small."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import textwrap
from decimal import Decimal
from pathlib import Path

import pytest
import yaml
from dispatch.rendering import limits as template_limits
from dispatch.rendering.checks import check_template_source
from dispatch.rendering.context import build_context
from dispatch.rendering.engine import TemplateSpec, render_message
from dispatch.rendering.errors import TemplateError
from hypothesis import given, settings
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parents[1]


def context(total: object = "120.00") -> dict:
    return build_context(
        customer={"id": "c1", "name": "Durand SA", "language": "en"},
        invoice={
            "id": "i1",
            "number": "F-1",
            "issue_date": "2026-12-02",
            "currency": "EUR",
            "total_amount": total,
        },
        organization={"id": "acme", "name": "ACME"},
        owner=None,
        today=dt.date(2026, 12, 2),
    )


def render(body: str, channel: str = "sms") -> str:
    return render_message(TemplateSpec(channel, body=body), context(), "en").text


# (template, the limit its refusal names)
RUNTIME_BOMBS = [
    ("{% for a in range(15000) %}{{ 'a'*100000 }}{% endfor %}", "MAX_OUTPUT_CHARS"),
    ("{{ range(100000)|join('x'*100000) }}", "MAX_VALUE_CHARS"),
    ("{{ ('a'*100000)|replace('a', 'b'*100000) }}", "MAX_VALUE_CHARS"),
    ("{{ ('a'*100000).replace('a', 'b' * 20) }}", "MAX_VALUE_CHARS"),
    ("{{ ('x'*100000).center(2000000) }}", "MAX_VALUE_CHARS"),
    ("{{ 'x'.ljust(1500000000) }}", "MAX_VALUE_CHARS"),
    ("{{ 'x'.zfill(1500000000) }}", "MAX_VALUE_CHARS"),
    ("{{ '{:>1500000000}'.format(1) }}", "MAX_VALUE_CHARS"),
    ("{{ '%1500000000s' % 1 }}", "MAX_VALUE_CHARS"),
    ("{{ ('a\n' * 50000)|indent(100000) }}", "MAX_VALUE_CHARS"),
    ("{{ ('a' * 100000)|wordwrap(1, wrapstring='x' * 100) }}", "MAX_VALUE_CHARS"),
    (
        "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}",
        "MAX_LOOP_ITERATIONS",
    ),
    ("{% for a in 'x' * 100000 %}{% for b in 'x' * 100000 %}{% endfor %}{% endfor %}", "MAX_LOOP_ITERATIONS"),
    (
        "{% set ns = namespace(s='x') %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
        "MAX_VALUE_CHARS",
    ),
    (
        "{% set ns = namespace(s='x') %}{% for i in range(60) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
        "MAX_VALUE_CHARS",
    ),
    (
        "{% set ns = namespace(n=3) %}{% for i in range(60) %}{% set ns.n = ns.n * ns.n %}{% endfor %}",
        "MAX_POWER_BITS",
    ),
    ("{{ 9 ** 99999 }}", "MAX_POWER_BITS"),
    ("{{ 'x' * 1000000000 }}", "MAX_REPEAT_LENGTH"),
    # a macro's output is joined by a counting join: literal text in a long loop
    (
        "{% macro m() %}{% for i in range(100000) %}"
        + "y" * 5000
        + "{% endfor %}{% endmacro %}{{ m()|length }}",
        "MAX_VALUE_CHARS",
    ),
    ("{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}", ""),  # endless recursion: an error, not a crash
    ("{{ invoice.total_amount.scaleb(1000000000) }}", "amount"),
    ("{{ [1]|slice(1000000000)|list }}", "MAX_LOOP_ITERATIONS"),
]


@pytest.mark.parametrize(("body", "limit"), RUNTIME_BOMBS)
def test_a_template_over_a_limit_fails_as_a_template_error_naming_the_limit(body: str, limit: str) -> None:
    with pytest.raises(TemplateError) as caught:
        render(body)
    assert limit in str(caught.value)
    assert len(str(caught.value).splitlines()) == 1


@pytest.mark.parametrize("channel", ["email", "sms", "letter"])
def test_ordinary_templates_still_render_with_loops_joins_and_padding(channel: str) -> None:
    body = (
        "Dear {{ customer.name }},\n\n"
        "{% for word in ['one', 'two'] %}{{ loop.index }}:{{ word|center(7) }} {% endfor %}"
        "{{ ['a', 'b']|join(', ') }} {{ 'x' ~ 'y' }} {{ '%05d' % 42 }} {{ '{:>6}'.format('ok') }}\n"
        "{{ invoice.total_amount|money(invoice.currency) }} {{ ('ab' * 3)|replace('b', 'c') }}"
    )
    text = render(body, channel)
    assert "Dear Durand SA" in text
    assert "1:  one   2:  two" in text or channel == "sms"  # an SMS is collapsed to single spaces
    words = " ".join(text.split())
    assert "1: one 2: two a, b xy 00042 ok €120.00 acacac" in words


def test_the_output_limit_is_exactly_the_limit() -> None:
    at_limit = "{% for i in range(10) %}{{ 'a' * 100000 }}{% endfor %}"
    assert len(render(at_limit, "letter")) == template_limits.MAX_OUTPUT_CHARS
    with pytest.raises(TemplateError, match="MAX_OUTPUT_CHARS"):
        render(at_limit + "b", "letter")


def test_the_deadline_is_per_message_and_checked_while_looping(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(template_limits, "MAX_RENDER_SECONDS", 0.0)  # already passed: no timing involved
    with pytest.raises(TemplateError, match="MAX_RENDER_SECONDS"):
        render("{% for i in range(3) %}{{ i }}{% endfor %}")
    monkeypatch.setattr(template_limits, "MAX_RENDER_SECONDS", 3600.0)
    assert render("{% for i in range(3) %}{{ i }}{% endfor %}") == "012"


def test_loop_iterations_are_counted_per_message_across_all_loops(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(template_limits, "MAX_LOOP_ITERATIONS", 10)
    assert render("{% for i in range(5) %}{{ i }}{% endfor %}{% for i in range(5) %}{{ i }}{% endfor %}") == (
        "0123401234"
    )
    with pytest.raises(TemplateError, match="MAX_LOOP_ITERATIONS"):
        render("{% for i in range(6) %}{{ i }}{% endfor %}{% for i in range(5) %}{{ i }}{% endfor %}")
    assert render("{% for i in range(10) %}{% endfor %}x") == "x"  # a new message, a new budget


@pytest.mark.parametrize(
    "total", [float("inf"), float("-inf"), float("nan"), "inf", "NaN", Decimal("Infinity")]
)
def test_an_infinite_or_nan_total_is_a_template_error_of_that_message(total: object) -> None:
    ctx = context(total)
    with pytest.raises(TemplateError, match="total_amount"):
        render_message(TemplateSpec("email"), ctx, "en")


CONSTANT_BOMBS = [
    "{{ 'x'|center(1500000000) }}",
    "{{ '%1500000000s'|format(1) }}",
    "{{ 'x'|indent(1500000000, true) }}",
    "{{ 'x'|wordwrap(1, wrapstring='y' * 3) }}{{ 'a b'|center(2000000) }}",
    "{{ [1, 2]|join('x')|center(1500000000) }}",
]


@pytest.mark.parametrize("body", CONSTANT_BOMBS)
def test_a_constant_over_a_limit_is_refused_when_the_template_compiles(body: str) -> None:
    with pytest.raises(TemplateError, match=r"refused when compiled.*MAX_VALUE_CHARS"):
        check_template_source(body)


def test_a_source_over_the_size_limit_is_refused() -> None:
    with pytest.raises(TemplateError, match="MAX_SOURCE_CHARS"):
        check_template_source("x" * (template_limits.MAX_SOURCE_CHARS + 1))


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from(["center", "ljust", "rjust", "zfill"]),
    st.integers(min_value=0, max_value=10**12),
    st.integers(min_value=0, max_value=200_000),
)
def test_property_padding_never_builds_a_value_over_the_limit(method: str, width: int, size: int) -> None:
    body = f"{{{{ ('a' * {min(size, 100_000)}).{method}({width})|length }}}}"
    try:
        rendered = int(render(body))
    except TemplateError as exc:
        assert "MAX_VALUE_CHARS" in str(exc)
        assert width > template_limits.MAX_VALUE_CHARS
    else:
        assert rendered <= template_limits.MAX_VALUE_CHARS


# --- config load stays small, measured in a child process -----------------------------------------

HOSTILE_FILES = {
    # name: (body, exit code of `dispatch config load`)
    "center": ("{{ 'x'|center(1500000000) }}", 2),
    "format": ("{{ '%1500000000s'|format(1) }}", 2),
    "indent": ("{{ 'x'|indent(1500000000, true) }}", 2),
    "loop": ("{% for a in range(15000) %}{{ 'a'*100000 }}{% endfor %}", 0),  # only bounded at send time
    "join": ("{{ range(100000)|join('x'*100000) }}", 0),
}
MAX_CONFIG_LOAD_RSS_MB = 400

_MEASURE = textwrap.dedent(
    """
    import resource, subprocess, sys
    done = subprocess.run(sys.argv[1:], capture_output=True, text=True)
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(done.returncode, peak_kb // 1024)
    sys.stderr.write(done.stderr)
    """
)


def _config(body: str) -> dict:
    return {
        "organizations": [
            {"id": "acme", "name": "ACME", "timezone": "Europe/Paris", "default_owner": "u_alice"}
        ],
        "users": [{"id": "u_alice", "org": "acme", "name": "Alice", "email": "alice@acme.example"}],
        "plans": [
            {
                "id": "p",
                "org": "acme",
                "name": "Plan",
                "level": "customer",
                "invoice_sending": {"channel": "email", "automatic": True, "body": body},
            }
        ],
    }


@pytest.mark.parametrize("name", list(HOSTILE_FILES))
def test_config_load_of_a_hostile_template_stays_under_a_few_hundred_mb(tmp_path: Path, name: str) -> None:
    body, expected_exit = HOSTILE_FILES[name]
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(_config(body)), encoding="utf-8")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO / "plugins"), str(REPO)]),
        "DISPATCH_DB_URL": f"sqlite:///{tmp_path / 'dispatch.db'}",
        "ACCOUNTING_DB_URL": f"sqlite:///{tmp_path / 'absent.db'}",
    }
    cli = [sys.executable, "-m", "dispatch.cli"]
    subprocess.run([*cli, "db", "init"], capture_output=True, env=env, cwd=tmp_path, check=True)
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE, *cli, "config", "load", str(path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        check=True,
    )
    code, peak_mb = map(int, done.stdout.split())
    assert code == expected_exit, done.stderr
    assert peak_mb < MAX_CONFIG_LOAD_RSS_MB, f"peak RSS {peak_mb} MB"
    if expected_exit == 2:
        assert done.stderr.count("\n") == 1 and "MAX_VALUE_CHARS" in done.stderr, done.stderr


def test_every_limit_is_documented_with_its_value() -> None:
    text = (REPO / "docs" / "templates.md").read_text(encoding="utf-8")
    for name in (n for n in template_limits.__all__ if n.startswith("MAX_")):
        value = getattr(template_limits, name)
        shown = f"{value:,}".replace(",", " ") if isinstance(value, int) else f"{value:g}"
        assert f"| `{name}` | {shown} " in text, (name, shown)
