"""``make bench`` end to end on a tiny N: the entry point prints a row for every stage of both
runs, and what the dispatch stage says it sent is what reached the outbox and the event log.

Behaviour only: timings are never asserted (figures, no thresholds).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import sqlalchemy as sa
from dispatch.bench import OUTBOX_CHANNELS, STAGES, main

N = 300
SUFFIXES = {"email": ".eml", "sms": ".json", "letter": ".pdf"}


def _sections(out: str) -> dict[str, str]:
    """Each run's printed block, keyed 'first' / 'incremental'."""
    parts = re.split(r"^sqlite · (first|incremental) run as of ", out, flags=re.M)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts), 2)}


def _stage_rows(block: str) -> dict[str, list[str]]:
    rows = {}
    for line in block.splitlines():
        for stage in (*STAGES, "total"):
            if line.startswith(stage + "  "):
                rows[stage] = line[len(stage) :].split()
    return rows


def _reported(block: str) -> tuple[int, int, dict[str, int]]:
    """(messages written, dispatch's 'sent', per channel) from the run's outbox line."""
    m = re.search(
        r"^outbox: ([\d,]+) messages written \((.*)\); dispatch reported ([\d,]+) sent", block, re.M
    )
    assert m, block
    per = {name: int(n.replace(",", "")) for name, n in re.findall(r"([\w-]+) ([\d,]+)", m.group(2))}
    return int(m.group(1).replace(",", "")), int(m.group(3).replace(",", "")), per


@pytest.mark.slow
def test_bench_prints_every_stage_and_the_outbox_gets_what_dispatch_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--invoices", str(N), "--backend", "sqlite", "--workdir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    runs = _sections(out)
    assert set(runs) == {"first", "incremental"}

    first_rows = _stage_rows(runs["first"])
    assert list(first_rows) == [*STAGES, "total"]
    # the first run reads every generated invoice; the next day at least the 1% new ones
    assert first_rows["extract"][0] == f"{N}"
    next_rows = _stage_rows(runs["incremental"])
    assert list(next_rows) == [*STAGES, "total"]
    assert next_rows["tag"][0] == str(round(N * 0.01))

    outbox = tmp_path / "sqlite" / "outbox"
    on_disk = {
        ch: sorted(p.name for p in (outbox / ch).glob(f"*{SUFFIXES[ch]}") if not p.name.startswith("."))
        for ch in OUTBOX_CHANNELS
    }
    written_1, sent_1, per_1 = _reported(runs["first"])
    written_2, sent_2, per_2 = _reported(runs["incremental"])
    assert sent_1 > 0 and sent_2 > 0
    assert (written_1, written_2) == (sent_1, sent_2)
    assert sum(len(files) for files in on_disk.values()) == sent_1 + sent_2
    for ch, name in OUTBOX_CHANNELS.items():
        assert len(on_disk[ch]) == per_1[name] + per_2[name]
    # dispatch's rows (claimed actions) are at least what it sent
    assert int(first_rows["dispatch"][0].replace(",", "")) >= sent_1

    # the event log agrees, action by action: one 'sent' event per outbox file
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'sqlite' / 'dispatch.db'}")
    with engine.connect() as conn:
        sent_ids = conn.execute(
            sa.text("SELECT action_id, channel FROM invoice_actions WHERE status = 'sent'")
        ).all()
        sent_events = conn.execute(
            sa.text("SELECT count(*) FROM action_events WHERE event = 'sent'")
        ).scalar()
    engine.dispose()
    assert sent_events == sent_1 + sent_2
    expected = {ch: sorted(a + SUFFIXES[ch] for a, c in sent_ids if c == ch) for ch in OUTBOX_CHANNELS}
    assert on_disk == expected
