"""Shared fixtures: real databases (SQLite files and fresh PostgreSQL databases).

Every test that takes ``backend`` runs twice, on SQLite and on PostgreSQL. PostgreSQL tests
skip on a machine without the server, but never when ``CI=true``: there they fail.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

PG_ADMIN_URL = os.environ.get("DISPATCH_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
_pg_ok: bool | None = None


def postgres_available() -> bool:
    global _pg_ok
    if _pg_ok is None:
        try:
            eng = sa.create_engine(PG_ADMIN_URL, connect_args={"connect_timeout": 3})
            with eng.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
            eng.dispose()
            _pg_ok = True
        except Exception:
            _pg_ok = False
    return _pg_ok


def require_postgres() -> None:
    if postgres_available():
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"PostgreSQL is required when CI=true but {PG_ADMIN_URL} is not reachable")
    pytest.skip("PostgreSQL not reachable")


class PgDatabases:
    """Creates throwaway PostgreSQL databases and drops them at the end."""

    def __init__(self) -> None:
        self.created: list[str] = []
        self.admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")

    def new(self, prefix: str) -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        with self.admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        self.created.append(name)
        return PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name

    def drop_all(self) -> None:
        with self.admin.connect() as conn:
            for name in self.created:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        self.admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest) -> str:
    if request.param == "postgres":
        require_postgres()
    return request.param


@pytest.fixture
def pg_databases() -> Iterator[PgDatabases]:
    require_postgres()
    dbs = PgDatabases()
    yield dbs
    dbs.drop_all()


@pytest.fixture
def db_urls(backend: str, tmp_path, request: pytest.FixtureRequest) -> dict[str, str]:
    """URLs of an empty dispatch database and an empty accounting database."""
    if backend == "sqlite":
        return {
            "dispatch": f"sqlite:///{tmp_path / 'dispatch.db'}",
            "accounting": f"sqlite:///{tmp_path / 'accounting.db'}",
        }
    dbs: PgDatabases = request.getfixturevalue("pg_databases")
    return {"dispatch": dbs.new("t_dispatch"), "accounting": dbs.new("t_accounting")}
