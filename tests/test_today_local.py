"""The template's ``today`` is the run's as-of date in the organization's time zone.

The daily run starts at 05:00 UTC; in Los Angeles it is then 21:00 on the day before, and
a letter or e-mail that says "today" must say that day, not tomorrow's UTC date.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.builders import World, open_world


@pytest.fixture
def w(backend: str, tmp_path: Path) -> Iterator[World]:
    with open_world(backend, tmp_path) as world:
        yield world


def test_today_is_the_as_of_date_in_the_organizations_time_zone(w: World) -> None:
    w.org("acme", timezone="America/Los_Angeles", holidays="US", send_time="08:00")
    w.org(
        "paris",
        timezone="Europe/Paris",
        holidays="FR",
        send_time="05:30",
        mail_from="billing@paris.example",
        default_owner="u_bob",
    )
    body = "Written on {{ today }} for invoice {{ invoice.number }}."
    w.plan("p_la", "acme", body=body).plan("p_paris", "paris", body=body)
    w.customer("c_la", org="acme", plan="p_la").customer("c_paris", org="paris", plan="p_paris")
    w.load_config()
    w.invoice("i_la", "c_la", issued="2026-12-01").invoice("i_paris", "c_paris", issued="2026-12-02")
    w.run("2026-12-02T05:00Z")  # 21:00 on 1 December in Los Angeles, 06:00 on the 2nd in Paris

    assert w.action("i_la")["status"] == "sent"
    assert w.action("i_paris")["status"] == "sent"
    assert "Written on 2026-12-01 for invoice" in w.email_of("i_la").get_body(("plain",)).get_content()
    assert "Written on 2026-12-02 for invoice" in w.email_of("i_paris").get_body(("plain",)).get_content()
