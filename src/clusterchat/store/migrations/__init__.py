"""Alembic's migration scripts for the store (run through ``store/migrate.py``)."""
