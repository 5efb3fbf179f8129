"""Named, append-only SQLite schema migrations.

Each database keeps the names of the migrations it has applied in ``migrations``. A
migration runs once, inside its own transaction, in list order. Never edit or reorder
a released migration: append a new one.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import datetime, timezone

from assistant.errors import StateError


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
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise StateError(f"migration name(s) {', '.join(repeated)} appear more than once in this program's list; "
                         "migration names must be unique: give the newer migration a new name")
    done = applied_migrations(conn)
    if done != names[:len(done)]:
        raise StateError(_mismatch(conn, done, names))
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


def _mismatch(conn: sqlite3.Connection, done: list[str], names: list[str]) -> str:
    """Why a database's history does not fit this program's migrations, and what to do."""
    file = next((row[2] for row in conn.execute("PRAGMA database_list") if row[1] == "main"), "") or ":memory:"
    newer = done[:len(names)] == names
    fix = ("it was written by a newer livedit: use that version, or move the file aside to start afresh" if newer
           else "it was written by another livedit version or edited by hand: open it with the version that made it, "
                "or move the file aside to start afresh")
    return f"database {file} has the migrations {done}, which do not match this program's {names}; {fix}"


def connect(path) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), timeout=30, isolation_level="DEFERRED",
                           check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    return conn
