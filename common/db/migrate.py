"""Apply the plain SQL migrations in ``common/db/migrations/<database>/`` once each, in name order."""

from __future__ import annotations

from importlib import resources

import psycopg
import structlog

log = structlog.get_logger(__name__)

# Any constant works; it only serialises concurrent `migrate` runs against one server.
_LOCK_ID = 0x46454341


def migration_files(database: str) -> list[tuple[str, str]]:
    folder = resources.files("common.db") / "migrations" / database
    files = sorted((entry.name, entry.read_text()) for entry in folder.iterdir() if entry.name.endswith(".sql"))
    return [(f"{database}/{name}", text) for name, text in files]


def apply_migrations(dsn: str, database: str) -> list[str]:
    """Returns the versions applied now (empty when already up to date)."""
    applied: list[str] = []
    with psycopg.connect(dsn, autocommit=False) as conn, conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_ID,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
        for version, sql_text in migration_files(database):
            if version in done:
                continue
            conn.execute(sql_text.encode())
            conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))
            applied.append(version)
    for version in applied:
        log.info("db.migrated", version=version)
    return applied


def migrate_all(main_dsn: str, vector_dsn: str) -> list[str]:
    return apply_migrations(main_dsn, "main") + apply_migrations(vector_dsn, "vector")
