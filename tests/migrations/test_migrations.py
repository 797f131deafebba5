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


def test_overrides_made_before_effective_dates_stay_in_force(empty_database_url):
    """Migration 0012: an override of before prices every event as it did (since 1970)."""
    from datetime import UTC, datetime

    from alembic import command
    from sqlalchemy import text

    from tokenledger.pricing.engine import TokenUsage
    from tokenledger.pricing.overrides import price_book

    database = Database(make_settings(empty_database_url))
    try:
        config = runner.alembic_config()
        with database.engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "0011_alerts_rearm")
            connection.execute(
                text(
                    "INSERT INTO price_overrides (provider, model, input_nano_per_mtok, "
                    "output_nano_per_mtok, created_at, updated_at) VALUES ('anthropic', "
                    "'house-model', 2000000000, 4000000000, :at, :at)"
                ),
                {"at": datetime(2026, 11, 1)},
            )
        runner.upgrade(database.engine)
        with database.session(write=False) as session:
            book = price_book(session)
            quote = book.quote(
                "anthropic",
                "house-model",
                TokenUsage(input_tokens=10**6),
                datetime(2001, 1, 1, tzinfo=UTC),
            )
        assert quote is not None
        assert quote.cost_nano == 2 * 10**9  # 1M tokens at $2/MTok, even for 2001
    finally:
        database.dispose()


def test_alerts_with_webhook_deliveries_upgrade_to_head(empty_database_url):
    """A ledger with alerts that webhook deliveries point at upgrades (SQLite rebuilds the
    alerts table in batch mode: its foreign keys must not stop the rebuild)."""
    from datetime import datetime

    from alembic import command
    from sqlalchemy import text

    at = datetime(2026, 11, 1, 12, 0)
    database = Database(make_settings(empty_database_url))
    try:
        config = runner.alembic_config()
        with database.engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "0010_provider_usage")
            for statement in (
                "INSERT INTO organizations (id, name, slug, created_at) "
                "VALUES (1, 'Acme', 'acme', :at)",
                "INSERT INTO licenses (id, organization_id, status, valid_from, "
                "credits_total_micro, cost_per_credit_nano, budget_period, "
                "budget_warning_percent, enforcement, credits_used_micro, created_at, "
                "updated_at) VALUES (1, 1, 'active', :at, 0, 10000000, 'monthly', 80, 'soft', "
                "0, :at, :at)",
                "INSERT INTO alerts (id, organization_id, license_id, type, period, created_at) "
                "VALUES (7, 1, 1, 'budget.warning', '2026-11', :at)",
                "INSERT INTO webhooks (id, url, secret, description, active, created_at) "
                "VALUES (1, 'https://hooks.example.com/x', 'old-secret', '', true, :at)",
                "INSERT INTO webhook_deliveries (id, webhook_id, alert_id, payload, status, "
                "attempts, next_attempt_at, created_at) "
                "VALUES (3, 1, 7, '{}', 'pending', 0, :at, :at)",
            ):
                connection.execute(text(statement), {"at": at})
        runner.upgrade(database.engine)
        assert runner.is_migrated(database.engine)
        with database.engine.connect() as connection:
            linked = connection.execute(
                text(
                    "SELECT a.type, a.rearmed_at FROM webhook_deliveries d "
                    "JOIN alerts a ON a.id = d.alert_id WHERE d.id = 3"
                )
            ).all()
        assert [tuple(row) for row in linked] == [("budget.warning", None)]
    finally:
        database.dispose()
