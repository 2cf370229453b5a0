"""The Alembic migrations: empty -> head -> base -> head, and head agrees with the models."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from backend.db import Base, make_engine
from backend.migrate import alembic_config, downgrade, upgrade

TABLES = {
    "api_keys",
    "leaderboard_entries",
    "monitor_lease",
    "monitor_status",
    "run_authority_keys",
    "run_datasets",
    "runs",
    "swarm_experts",
    "swarm_peers",
    "swarm_points",
    "token_issuances",
    "user_sessions",
    "users",
}


def _tables(engine) -> set[str]:
    return set(inspect(engine).get_table_names()) - {"alembic_version"}


def _differences(engine) -> list:
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return compare_metadata(context, Base.metadata)


def test_upgrade_downgrade_upgrade(empty_db_url):
    engine = make_engine(empty_db_url)
    try:
        assert _tables(engine) == set()
        upgrade(empty_db_url)
        assert _tables(engine) == TABLES
        assert _differences(engine) == []
        downgrade(empty_db_url)
        assert _tables(engine) == set()
        upgrade(empty_db_url)
        assert _tables(engine) == TABLES
        assert _differences(engine) == []
    finally:
        engine.dispose()


def test_models_cover_every_table():
    assert set(Base.metadata.tables) == TABLES


def test_history_is_linear_with_one_head():
    script = ScriptDirectory.from_config(alembic_config())
    assert len(script.get_heads()) == 1
    assert [rev.down_revision for rev in script.walk_revisions()][-1] is None
