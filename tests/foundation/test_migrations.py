"""Migrations from an empty database, on both backends, and the schema they make."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from tests.conftest import make_settings
from tokenledger.db import Database
from tokenledger.migrations import runner
from tokenledger.models import Base


def test_upgrade_from_empty_to_head_is_idempotent(empty_database_url):
    database = Database(make_settings(empty_database_url))
    try:
        assert runner.current_revision(database.engine) is None
        assert not runner.is_migrated(database.engine)
        assert inspect(database.engine).get_table_names() == []

        runner.upgrade(database.engine)
        assert runner.current_revision(database.engine) == runner.head_revision()
        assert runner.is_migrated(database.engine)
        tables = set(inspect(database.engine).get_table_names())
        assert tables == set(Base.metadata.tables) | {"alembic_version"}

        runner.upgrade(database.engine)
        assert runner.current_revision(database.engine) == runner.head_revision()
        assert set(inspect(database.engine).get_table_names()) == tables
    finally:
        database.dispose()


def test_migrated_schema_matches_the_models(empty_database_url):
    database = Database(make_settings(empty_database_url))
    try:
        runner.upgrade(database.engine)
        with database.engine.connect() as connection:
            context = MigrationContext.configure(
                connection,
                opts={
                    "compare_type": True,
                    "compare_server_default": True,
                    "render_as_batch": database.dialect_name == "sqlite",
                },
            )
            diffs = compare_metadata(context, Base.metadata)
        assert diffs == []
    finally:
        database.dispose()


def test_one_active_license_index_is_partial_in_the_database(database):
    """The rule lives in the schema of both backends, not only in the models."""
    indexes = {ix["name"]: ix for ix in inspect(database.engine).get_indexes("licenses")}
    index = indexes["uq_licenses_one_active_per_org"]
    assert index["unique"]
    assert index["column_names"] == ["organization_id"]
    options = index.get("dialect_options", {})
    where = options.get("postgresql_where") or options.get("sqlite_where")
    assert where is not None
    assert "active" in str(where)
