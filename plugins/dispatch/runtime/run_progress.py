"""What ``dispatch run`` tells a person while it works: one readable line per stage with its
figures and duration, and with ``-v`` the stage's full detail below it.

It wraps each stage through the pipeline's ``measure`` hook, so it sees the stage's own
result (not a log line) and cannot drift from what the stage did.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def _d(result: Any) -> Any:
    if hasattr(result, "as_dict"):
        return result.as_dict()
    if isinstance(result, list):
        return [_d(r) for r in result]
    return result


def _words(counts: dict[str, int]) -> str:
    return ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in counts.items() if v) or "nothing"


def describe(stage: str, result: Any) -> str:
    """One line in words for a stage's result."""
    d = _d(result)
    if stage == "extract":
        return (
            f"read {d.get('read', 0)} changed invoices: {d.get('imported', 0)} new, "
            f"{d.get('updated', 0)} updated, {d.get('rejected', 0)} rejected"
        )
    if stage == "tag":
        return (
            f"{d.get('to_send', 0)} to send, {d.get('not_required', 0)} not required, "
            f"{d.get('cancelled', 0)} cancelled"
        )
    if stage == "resolve templates":
        return (
            f"{d.get('created', 0)} actions created, {d.get('without_template', 0)} invoices without template"
        )
    if stage == "compute due":
        requeued = sum((d.get("requeued") or {}).values())
        settled = sum((d.get("settled") or {}).values())
        line = (
            f"{d.get('due', 0)} due in {d.get('batches', 0)} batch(es), {d.get('not_due', 0)} later, "
            f"{d.get('entered_todo', 0)} to the to-do list"
        )
        if requeued:
            line += f", {requeued} fixed and sent again"
        if settled:
            line += f", {settled} left by a dead run settled"
        return line
    if stage == "dispatch":
        events: Counter = Counter()
        for batch in d or []:
            events.update(batch.get("events", {}))
        return _words(dict(events))
    if stage == "write back":
        totals = d.get("totals", {})
        return (
            f"all invoices: {totals.get('sent', 0)} sent, {totals.get('manual', 0)} to do, "
            f"{totals.get('scheduled', 0)} scheduled, {totals.get('without_template', 0)} without template "
            f"({totals.get('imported', 0)} imported, {totals.get('rejected', 0)} rejected)"
        )
    if stage == "pull bounces":
        if isinstance(d, dict) and d.get("skipped"):
            return f"skipped ({d['skipped']})"
        if isinstance(d, dict) and d.get("error"):
            return f"not pulled, the next run tries again: {d['error']}"
        return f"{d.get('bounced', 0)} sent e-mails reported bounced" if isinstance(d, dict) else str(d)
    return str(d)


def progress_printer(
    say: Callable[[str], None], *, verbose: bool = False
) -> Callable[[str, Callable[[], T]], T]:
    """A ``measure`` hook for :func:`dispatch.runtime.pipeline.run_pipeline` printing each stage."""

    def measure(name: str, fn: Callable[[], T]) -> T:
        start = time.perf_counter()
        result = fn()
        took = time.perf_counter() - start
        say(f"{name:<17} {describe(name, result)} ({took:.1f} s)")
        if verbose:
            say("    " + json.dumps(_d(result), default=str, ensure_ascii=False))
        return result

    return measure
