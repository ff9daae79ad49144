"""Database failures a user can fix, in one line naming the thing (``dispatch`` exit 2).

An unreachable server, a wrong password, a missing database or a source table / column
that the queries in ``sql/`` expect but the accounting system does not have: each becomes
one sentence that says which database or query, what is missing, and where the expected
accounting schema is documented. Anything else is left to the caller (exit 1).
"""

from __future__ import annotations

import re
from pathlib import Path

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, ProgrammingError

from dispatch.paths import SQL_DIR, resolve

SCHEMA_DOC = 'docs/data-dictionary.md ("The accounting source")'

_MISSING_TABLE = re.compile(r'no such table: (\S+)|relation "([^"]+)" does not exist')
_MISSING_COLUMN = re.compile(r'no such column: (\S+)|column "?([^"\s]+)"? does not exist')
_UNREACHABLE = (
    "connection refused",
    "could not connect",
    "could not translate host name",
    "name or service not known",
    "timeout expired",
    "connection timed out",
    "no route to host",
    "password authentication failed",
    "does not exist\nconnection",  # psycopg: database "x" does not exist
    "unable to open database file",
)


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else text


def _source_query(statement: str | None) -> str | None:
    """The ``sql/`` file a failed statement came from, if it came from one."""
    if not statement:
        return None
    folder = resolve(SQL_DIR)
    wanted = " ".join(statement.split())
    texts = {
        p.name: " ".join(p.read_text(encoding="utf-8").split()) for p in sorted(Path(folder).glob("*.sql"))
    }
    for name, text in texts.items():  # the statement is the file (or the file is in it)
        if text and (text == wanted or text in wanted):
            return f"sql/{name}"
    for name, text in texts.items():  # the driver may have rewritten the parameters
        if text and text[:200] == wanted[:200]:
            return f"sql/{name}"
    return None


def explain(exc: BaseException) -> str | None:
    """One line for a database error a user can fix, or None when it is not one of those.

    pandas wraps the driver's error in its own ``DatabaseError``: the chain is followed."""
    seen = 0
    link: BaseException | None = exc
    while link is not None and not isinstance(link, DBAPIError) and seen < 10:
        link = link.__cause__ or link.__context__
        seen += 1
    if not isinstance(link, DBAPIError):
        return None
    exc = link
    message = str(exc.orig) if exc.orig is not None else str(exc)
    lowered = message.lower()
    query = _source_query(exc.statement)
    if isinstance(exc, OperationalError | ProgrammingError):
        table = _MISSING_TABLE.search(message)
        column = _MISSING_COLUMN.search(message)
        if found := table or column:
            what = f"{'table' if table else 'column'} {found.group(1) or found.group(2)}"
            if query:
                return (
                    f"the accounting database has no {what} (query {query}); the tables and columns "
                    f"it must provide are listed in {SCHEMA_DOC} — adapt the queries in sql/ to your schema"
                )
            return f"the dispatch database has no {what}: run `dispatch db init`"
    if isinstance(exc, OperationalError | InterfaceError) and any(k in lowered for k in _UNREACHABLE):
        return f"cannot connect to the database: {_first_line(message)}"
    return None
