"""Named, append-only SQLite schema migrations.

Each database keeps the names of the migrations it has applied in ``migrations``. A
migration runs once, inside its own transaction, in list order. Never edit or reorder
a released migration: append a new one.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import datetime, timezone


@dataclass(frozen=True)
class Migration:
    name: str
    sql: str


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def applied_migrations(conn: sqlite3.Connection) -> list[str]:
    conn.execute("CREATE TABLE IF NOT EXISTS migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)")
    return [row[0] for row in conn.execute("SELECT name FROM migrations ORDER BY rowid")]


def migrate(conn: sqlite3.Connection, migrations: list[Migration]) -> list[str]:
    """Apply the migrations not applied yet; return their names."""
    names = [m.name for m in migrations]
    if len(set(names)) != len(names):
        raise ValueError("migration names must be unique")
    done = applied_migrations(conn)
    if done != names[:len(done)]:
        raise ValueError(f"database migrations {done} do not match this program's {names}")
    applied = []
    for migration in migrations[len(done):]:
        with conn:
            conn.execute("BEGIN")
            for statement in migration.sql.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute("INSERT INTO migrations (name, applied_at) VALUES (?, ?)", (migration.name, now()))
        applied.append(migration.name)
    return applied


def connect(path) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), timeout=30, isolation_level="DEFERRED",
                           check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    return conn
