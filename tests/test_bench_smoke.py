"""``make bench`` end to end on a tiny N: every run prints a row for every stage, every target
is printed with its reference, the dispatch figure counts what reached the outbox and the
event log, the floor wrote the same messages, and the chart is a PNG.

Behaviour only: timings are never asserted (figures, no thresholds).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import sqlalchemy as sa
from dispatch.devtools.bench import STAGES, main

N = 300
NEW = 30
EMAILS = 40
LETTERS = 4


def _sections(out: str) -> dict[str, str]:
    """Each run's printed block, keyed by its label (the N and 2N first runs share one)."""
    parts = re.split(r"^sqlite · (first|incremental|no history) run as of ", out, flags=re.M)
    blocks: dict[str, str] = {}
    for i in range(1, len(parts), 2):
        blocks.setdefault(parts[i], parts[i + 1])
    return blocks


def _stage_rows(block: str) -> dict[str, list[str]]:
    rows = {}
    for line in block.splitlines():
        for stage in (*STAGES, "total"):
            if line.startswith(stage + "  "):
                rows[stage] = line[len(stage) :].split()
    return rows


@pytest.mark.slow
def test_bench_prints_every_target_and_the_outbox_gets_what_dispatch_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--invoices", str(N), "--new", str(NEW), "--backend", "sqlite", "--workdir", str(tmp_path),
            "--chart", f"{N},{2 * N}", "--dispatch-messages", str(EMAILS), "--letters", str(LETTERS),
            "--sendgrid-messages", "10"]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    runs = _sections(out)
    assert set(runs) == {"first", "incremental", "no history"}
    first, incremental, alone = (_stage_rows(runs[k]) for k in ("first", "incremental", "no history"))
    assert list(first) == list(incremental) == list(alone) == [*STAGES, "total"]
    assert first["extract"][0] == str(N)
    assert incremental["tag"][0] == str(NEW)  # the new invoices only, over the history
    assert alone["extract"][0] == str(NEW)  # the same rows, and nothing else
    assert alone["tag"][0] == str(NEW)

    targets = out[out.index("== sqlite: targets") :]
    for what in (
        f"first run, {N:,} invoices",
        f"incremental day, {NEW:,} new over {N:,}",
        f"peak RSS of the run at {N:,}",
        f"peak RSS at {2 * N:,} vs {N:,}",
        "e-mails into the outbox",
        "letters into the outbox",
    ):
        assert what in targets, what
    emails = re.search(r"dispatch, ([\d,]+) e-mails into the outbox", targets)
    assert emails
    sent = int(emails.group(1).replace(",", ""))
    assert 0 < sent <= EMAILS

    base = tmp_path / "sqlite" / "dispatch-email"
    on_disk = sorted(p.name for p in (base / "outbox" / "email").glob("*.eml"))
    floor = sorted(p.name for p in (base / "floor").glob("*.eml"))
    engine = sa.create_engine(f"sqlite:///{base / 'db' / 'sqlite' / 'dispatch.db'}")
    with engine.connect() as conn:
        sent_ids = conn.execute(
            sa.text("SELECT action_id FROM invoice_actions WHERE status = 'sent'")
        ).scalars()
        expected = sorted(a + ".eml" for a in sent_ids)
        sent_events = conn.execute(
            sa.text("SELECT count(*) FROM action_events WHERE event = 'sent'")
        ).scalar()
    engine.dispose()
    assert on_disk == expected == floor  # the floor wrote the very same messages
    assert sent_events == sent == len(on_disk)

    chart = tmp_path / "scaling-sqlite.png"
    assert f"chart: {chart}" in out
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
