"""Opening the updater's SQLite databases, and write transactions that take the lock first."""

from __future__ import annotations

import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path

from assistant.state.migrations import Migration, connect, migrate


def open_database(path: Path | str, migrations: list[Migration]) -> sqlite3.Connection:
    """A connection with every migration applied (":memory:" works for tests)."""
    if str(path) != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = connect(path)
    migrate(conn, migrations)
    return conn


@contextmanager
def write_transaction(conn: sqlite3.Connection, lock: threading.Lock):
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any exception.

    Taking SQLite's write lock at the start makes read-then-write sequences (the next
    version number, the pending items of a fact) safe against other processes; ``lock``
    keeps the threads that share this connection (UI, scheduler) out of each other's way.
    """
    with lock:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.rollback()
            raise
        conn.commit()


class Database:
    """One SQLite file with its migrations, a write lock, and close/context-manager plumbing.
    Subclasses set MIGRATIONS and FILE_NAME (the file under $LIVEDIT_HOME)."""

    MIGRATIONS: list[Migration] = []
    FILE_NAME = ""

    def __init__(self, path: Path | str):
        self.path = path
        self.conn = open_database(path, self.MIGRATIONS)
        self.lock = threading.Lock()

    @classmethod
    def open(cls, config):
        """The database at $LIVEDIT_HOME/FILE_NAME."""
        return cls(config.paths.home_dir() / cls.FILE_NAME)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
