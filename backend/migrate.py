"""Running the Alembic migrations from code: `serve` upgrades to head before it starts."""

from __future__ import annotations

import logging

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection

from backend.paths import migrations_dir

logger = logging.getLogger(__name__)


def alembic_config(database_url: str | None = None, connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    if database_url is not None:
        config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def upgrade(database_url: str | None = None, *, connection: Connection | None = None, revision="head"):
    logger.info("Upgrading the site's database schema to %s", revision)
    command.upgrade(alembic_config(database_url, connection), revision)


def downgrade(database_url: str | None = None, *, connection: Connection | None = None, revision="base"):
    logger.info("Downgrading the site's database schema to %s", revision)
    command.downgrade(alembic_config(database_url, connection), revision)
