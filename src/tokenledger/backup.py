"""Online backup of the embedded SQLite database, consistent while the server writes."""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

POSTGRES_WAY = (
    "on PostgreSQL use the server's own tools: "
    '`pg_dump --format=custom --file=tokenledger.dump "$TOKENLEDGER_DATABASE_URL"`, '
    "restore with `pg_restore --clean --if-exists --dbname=... tokenledger.dump`"
)


class BackupError(Exception):
    """Why no backup was written."""


@dataclass(frozen=True)
class BackupResult:
    path: Path
    size_bytes: int
    schema_revision: str | None


def backup_sqlite(source: Path, target: Path) -> BackupResult:
    """Copy `source` to `target` through SQLite's online backup API.

    The copy is taken in one step (pages=-1), inside one read transaction: with WAL,
    writers go on meanwhile and the copy is the database as of one commit, never half a
    batch. It is written beside the target, synced, checked and then renamed into place,
    so a crash leaves either no file or a whole one.
    """
    if not source.exists():
        raise BackupError(f"database {source} does not exist")
    if target.exists():
        raise BackupError(f"{target} exists; choose a new file name")
    if not target.parent.is_dir():
        raise BackupError(f"directory {target.parent} does not exist")
    partial = target.with_name(f".{target.name}.partial")
    partial.unlink(missing_ok=True)
    # Opened read-only by URI: the backup never writes to (or creates) the source.
    source_connection = sqlite3.connect(f"{source.resolve().as_uri()}?mode=ro", uri=True)
    try:
        target_connection = sqlite3.connect(partial)
        try:
            source_connection.backup(target_connection, pages=-1)
            # A single file, readable without the WAL beside it.
            target_connection.execute("PRAGMA journal_mode=DELETE")
            [(integrity,)] = target_connection.execute("PRAGMA integrity_check").fetchall()
            if integrity != "ok":
                raise BackupError(f"the copy fails its integrity check: {integrity}")
            revision = _schema_revision(target_connection)
        finally:
            target_connection.close()
        with open(partial, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(partial, target)
        _sync_directory(target.parent)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    finally:
        source_connection.close()
    return BackupResult(target, target.stat().st_size, revision)


def _schema_revision(connection: sqlite3.Connection) -> str | None:
    try:
        row = connection.execute("SELECT version_num FROM alembic_version").fetchone()
    except sqlite3.OperationalError:
        return None
    return str(row[0]) if row else None


def _sync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
