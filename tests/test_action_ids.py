"""The column-wise action ids are the ids :func:`action_id_for` gives one invoice at a time:
an action's id (and its outbox file name) must not depend on how it was created."""

from __future__ import annotations

from dispatch.stages.resolve_templates import action_id_for, action_ids_for


def test_action_ids_for_a_column_equal_the_ids_one_by_one() -> None:
    ids = ["i_1", "inv-000123", "ünïcödé-№7", "", "x" * 64, "a b\tc"]
    assert list(action_ids_for(ids)) == [action_id_for(i) for i in ids]


def test_action_ids_for_no_invoice_is_empty() -> None:
    assert len(action_ids_for([])) == 0
