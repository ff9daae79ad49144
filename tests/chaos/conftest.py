"""The ``chaos`` marker (the big runs: only under ``make chaos``, i.e. ``CHAOS=1``) and the
figures table printed at the end of the session."""

from __future__ import annotations

import os

import pytest

from tests.chaos.harness import FIGURES


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "chaos: a big chaos run (make chaos; skipped unless CHAOS=1)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("CHAOS") == "1":
        return
    skip = pytest.mark.skip(reason="a big chaos run: make chaos (CHAOS=1)")
    for item in items:
        if item.get_closest_marker("chaos") is not None:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # type: ignore[no-untyped-def]
    if not FIGURES:
        return
    terminalreporter.section("chaos figures")
    for name, figures in FIGURES:
        terminalreporter.write_line(f"{name}:")
        for key, value in figures.items():
            terminalreporter.write_line(f"    {key:<48} {value}")
