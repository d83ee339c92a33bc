"""Alembic's environment: run the migrations on the connection ``store/migrate.py`` hands in.

There is no alembic.ini and no URL here: ``migrate.py`` opens the database,
takes the migration lock, and puts its connection in ``config.attributes``.
``render_as_batch`` lets ALTERs run on SQLite (it copies the table); each
revision commits on its own, so that on MySQL, whose DDL is not transactional,
a failure leaves the database at the last revision that completed.
"""

from alembic import context

from clusterchat.store.schema import metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=True,
    transaction_per_migration=True,
)
context.run_migrations()
