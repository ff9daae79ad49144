"""Alembic environment: migrations run on the connection ``dispatch db init`` hands over."""

from __future__ import annotations

from alembic import context
from dispatch.storage.schema import metadata

config = context.config
connection = config.attributes.get("connection")

if connection is None:  # plain `alembic` command line: build an engine from the URL
    from dispatch.storage.engine import make_engine

    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("alembic: set sqlalchemy.url (dispatch db init passes its own connection)")
    engine = make_engine(url)
    with engine.begin() as conn:
        context.configure(connection=conn, target_metadata=metadata, render_as_batch=True)
        context.run_migrations()
else:
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
