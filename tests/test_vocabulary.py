"""The enums of dispatch.vocabulary are the one definition of the stored words: the schema's
CHECK constraints are built from them, and the migrated database (``dispatch db init``)
holds exactly the CHECKs the metadata builds — on SQLite and PostgreSQL."""

from __future__ import annotations

import re
from enum import StrEnum

import pytest
import sqlalchemy as sa
from dispatch.sending.events import EVENTS
from dispatch.storage import schema
from dispatch.storage.migrate import upgrade
from dispatch.vocabulary import (
    AccountingStatus,
    ActionStatus,
    ChannelName,
    EventName,
    ManualReason,
    PlanLevel,
    RunStatus,
    SendingStatus,
    SentHow,
    StuckReason,
    values,
)


def _checks(url: str) -> dict[tuple[str, str], str]:
    """Every CHECK constraint of the database: (table, name) -> its text, blanks collapsed."""
    engine = sa.create_engine(url)
    try:
        insp = sa.inspect(engine)
        return {
            (table, ck["name"]): " ".join(ck["sqltext"].split())
            for table in insp.get_table_names()
            if table != "alembic_version"
            for ck in insp.get_check_constraints(table)
        }
    finally:
        engine.dispose()


def test_the_migrated_schema_has_exactly_the_checks_the_enums_build(db_urls: dict[str, str]) -> None:
    upgrade(sa.create_engine(db_urls["dispatch"]))
    fresh = sa.create_engine(db_urls["accounting"])
    schema.metadata.create_all(fresh)
    fresh.dispose()
    migrated, built = _checks(db_urls["dispatch"]), _checks(db_urls["accounting"])
    assert migrated == built
    assert ("invoice_actions", "ck_invoice_actions_manual_reason") in built
    reasons = built[("invoice_actions", "ck_invoice_actions_manual_reason")]
    assert set(re.findall(r"'([a-z_]+)'", reasons)) == set(values(ManualReason))


@pytest.mark.parametrize(
    ("kind", "constant"),
    [
        (SendingStatus, schema.SENDING_STATUSES),
        (SentHow, schema.SENT_HOW),
        (ActionStatus, schema.ACTION_STATUSES),
        (ManualReason, schema.MANUAL_REASONS),
        (ChannelName, schema.CHANNELS),
        (AccountingStatus, schema.ACCOUNTING_STATUSES),
        (PlanLevel, schema.PLAN_LEVELS),
        (RunStatus, schema.RUN_STATUSES),
        (EventName, EVENTS),
    ],
)
def test_each_stored_set_of_words_is_its_enum(kind: type[StrEnum], constant: tuple[str, ...]) -> None:
    assert constant == values(kind)
    assert all(type(v) is str for v in constant)  # plain strings: SQL text and JSON keys alike


def test_a_stuck_reason_is_a_stuck_reason_or_a_manual_reason() -> None:
    stuck, manual = values(StuckReason), values(ManualReason)
    assert (*stuck, *manual) == schema.STUCK_REASONS
    assert not set(stuck) & set(manual)


def test_a_member_is_its_string() -> None:
    assert ActionStatus.MANUAL == "manual" and f"{ManualReason.NO_CONTACT}" == "no_contact"
    assert {"email": 1}[ChannelName.EMAIL] == 1
