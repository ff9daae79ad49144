"""The webhook benchmark's own check, small: a burst posted concurrently to a real
``dispatch web`` is stored completely, once, and matched (figures are not asserted)."""

from __future__ import annotations

from pathlib import Path

import pytest
from dispatch.devtools.bench_webhooks import main, run

pytestmark = pytest.mark.slow


def test_a_small_burst_is_stored_completely(tmp_path: Path) -> None:
    figures = run(f"sqlite:///{tmp_path / 'dispatch.db'}", n_events=240, in_flight=8, batch=3)

    assert (figures.requests, figures.failed) == (80, 0)
    assert (figures.stored, figures.matched, figures.bounced) == (240, 240, 1)


def test_the_command_refuses_a_burst_of_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--events", "0"])
    assert exit_info.value.code == 2
    assert "must be at least 1" in capsys.readouterr().err
