"""Alembic migrations: the only way the site's schema changes (`backend.migrate` runs them)."""
