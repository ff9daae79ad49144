"""Where the project's files are: relative paths in settings are relative to the repository root."""

from __future__ import annotations

import os
from pathlib import Path


def repo_root() -> Path:
    """The repository root (``DISPATCH_HOME`` overrides it, e.g. in a container image)."""
    env = os.environ.get("DISPATCH_HOME")
    if env:
        return Path(env).resolve()
    return Path(__file__).resolve().parents[2]


def resolve(path: str | Path) -> Path:
    """An absolute path for ``path``, reading relative paths from the repository root."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else repo_root() / p


SQL_DIR = "sql"
TEMPLATES_DIR = "include/templates"
