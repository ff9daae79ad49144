"""``dispatch config load FILE.yaml`` (CONTRACT §3): organizations, users, plans with their
invoice-sending template, and customer→plan assignments, loaded all-or-nothing (SPEC B6).

The steps, each in its module: read the YAML with its line marks
(:mod:`~dispatch.config.yaml_marks`), check every entry on its own
(:mod:`~dispatch.config.models`), check across entries and against the stored configuration
(:mod:`~dispatch.config.checks`), then write (:mod:`~dispatch.config.write`). The whole file
is checked, and every problem collected, before anything is written; a file with one mistake
changes nothing and the user sees all their mistakes at once.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from sqlalchemy import Engine, func, select

from dispatch.config.checks import Stored, check_duplicates, check_references
from dispatch.config.entries import parse
from dispatch.config.models import ID_FIELDS, IGNORED_TOP_LEVEL_PREFIX, SECTIONS
from dispatch.config.problems import Problems
from dispatch.config.write import LoadSummary, write
from dispatch.config.yaml_marks import read_document
from dispatch.errors import ConfigError

# An advisory-lock key (any constant) that serializes concurrent loads on PostgreSQL, so the
# checks and the writes of one load see the same stored configuration.
_PG_LOCK_KEY = 0x64697370_636F6E66  # b"dispconf"


def load_config_file(
    path: Path,
    engine: Engine,
    *,
    accounting_engine: Engine | None = None,
    now: dt.datetime,
) -> LoadSummary:
    """Validate the whole file, then upsert it in one transaction; refuse it whole otherwise.

    ``now`` (aware) stamps ``updated_at``, ``assigned_at`` and new template versions. With
    ``accounting_engine``, an assignment of a customer the accounting source places in
    another organization than the plan's is refused.

    Raises :class:`ConfigError` with one line per problem (``FILE:LINE: entry.field: what``);
    the database is then unchanged.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    path = Path(path)
    document = read_document(path, ignored_top_level_prefix=IGNORED_TOP_LEVEL_PREFIX)
    if document is None:
        raise ConfigError(f"{path}:1: the file is empty (expected {', '.join(SECTIONS)})")
    problems = Problems(document, ID_FIELDS)
    parsed = parse(document, problems)
    check_duplicates(problems)
    if problems and parsed.empty:
        raise problems.error()
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(select(func.pg_advisory_xact_lock(_PG_LOCK_KEY)))
        stored = Stored.read(conn, parsed)
        check_references(parsed, stored, accounting_engine, problems)
        if problems:
            raise problems.error()  # leaving the block rolls back: nothing was written anyway
        return write(conn, parsed, stored, now.astimezone(dt.UTC))
