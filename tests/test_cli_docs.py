"""The README's command list is checked against the real command tree, so it cannot drift."""

from __future__ import annotations

import re
from pathlib import Path

import click
from dispatch.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"


def command_paths(group: click.Group, prefix: str = "dispatch") -> set[str]:
    paths: set[str] = set()
    for name, cmd in group.commands.items():
        path = f"{prefix} {name}"
        if isinstance(cmd, click.Group):
            if cmd.invoke_without_command:
                paths.add(path)
            paths |= command_paths(cmd, path)
        else:
            paths.add(path)
    return paths


def readme_paths() -> set[str]:
    block = README.read_text(encoding="utf-8").split("## The command line", 1)[1].split("```")[1]
    paths = set()
    for line in block.splitlines():
        words = re.findall(r"^dispatch(?: [a-z][a-z-]*)*", line.strip())
        if words:
            paths.add(words[0])
    return paths


def test_readme_lists_every_command_and_nothing_else() -> None:
    assert readme_paths() == command_paths(main)


def test_every_command_has_help_text() -> None:
    def walk(group: click.Group) -> None:
        for name, cmd in group.commands.items():
            assert cmd.help, f"{name} has no help"
            if isinstance(cmd, click.Group):
                walk(cmd)

    walk(main)
