"""Bring a database to the newest schema, and tell whether it is there."""

from __future__ import annotations

import functools
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

_HERE = Path(__file__).parent


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(_HERE))
    config.set_main_option(
        "file_template", "%%(year)d_%%(month).2d_%%(day).2d_%%(hour).2d%%(minute).2d-%%(slug)s"
    )
    return config


def upgrade(engine: Engine) -> None:
    """Apply every pending migration, in one transaction per run (idempotent).

    On SQLite, batch mode rebuilds a table (copy, drop, rename): with foreign keys on,
    dropping a table that other rows point at fails. As SQLite's ALTER TABLE guide says,
    foreign keys are off for the run (a pragma that only takes effect outside a
    transaction) and every reference is checked before the commit instead.
    """
    config = alembic_config()
    sqlite = engine.dialect.name == "sqlite"
    with engine.connect() as connection:
        raw = connection.connection.dbapi_connection
        assert raw is not None
        if sqlite:
            raw.execute("PRAGMA foreign_keys=OFF")
        try:
            with connection.begin():
                config.attributes["connection"] = connection
                command.upgrade(config, "head")
                if sqlite:
                    broken = connection.exec_driver_sql("PRAGMA foreign_key_check").all()
                    if broken:
                        raise RuntimeError(f"migration left broken references: {broken[:5]}")
        finally:
            if sqlite:
                raw.execute("PRAGMA foreign_keys=ON")


@functools.cache
def head_revision() -> str | None:
    """The newest revision of the migration scripts: read once per process (loading the
    scripts costs about 10 ms, and they do not change while it runs)."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def is_migrated(engine: Engine) -> bool:
    return current_revision(engine) == head_revision()
