"""Named, append-only SQLite migrations, tested on in-memory databases."""

import sqlite3

import pytest

from assistant.errors import StateError
from assistant.state.ledger import LEDGER_FILE, LEDGER_MIGRATIONS, Ledger
from assistant.state.migrations import Migration, applied_migrations, migrate

FIRST = Migration("0001_items", "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL)")
SECOND = Migration("0002_item_colour",
                   "ALTER TABLE items ADD COLUMN colour TEXT; CREATE INDEX items_by_name ON items (name)")


@pytest.fixture
def conn():
    connection = sqlite3.connect(":memory:")
    yield connection
    connection.close()


def tables(conn) -> set[str]:
    return {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'index')")}


def test_migrations_apply_once_in_order(conn):
    assert migrate(conn, [FIRST, SECOND]) == ["0001_items", "0002_item_colour"]
    assert applied_migrations(conn) == ["0001_items", "0002_item_colour"]
    assert {"items", "items_by_name", "migrations"} <= tables(conn)
    columns = [row[1] for row in conn.execute("PRAGMA table_info(items)")]
    assert columns == ["id", "name", "colour"]


def test_rerun_is_idempotent(conn):
    migrate(conn, [FIRST, SECOND])
    conn.execute("INSERT INTO items (name, colour) VALUES ('a', 'red')")
    conn.commit()
    assert migrate(conn, [FIRST, SECOND]) == []
    assert migrate(conn, [FIRST, SECOND]) == []
    assert applied_migrations(conn) == ["0001_items", "0002_item_colour"]
    assert conn.execute("SELECT name, colour FROM items").fetchall() == [("a", "red")]


def test_appended_migration_applies_only_the_new_one(conn):
    assert migrate(conn, [FIRST]) == ["0001_items"]
    assert migrate(conn, [FIRST, SECOND]) == ["0002_item_colour"]
    assert applied_migrations(conn) == ["0001_items", "0002_item_colour"]


def test_mismatched_history_is_detected(conn):
    migrate(conn, [FIRST, SECOND])
    renamed = Migration("0002_colour", SECOND.sql)
    with pytest.raises(StateError, match="do not match") as error:
        migrate(conn, [FIRST, renamed])
    assert "another livedit version" in str(error.value) and "move the file aside" in str(error.value)
    with pytest.raises(StateError, match="do not match"):
        migrate(conn, [SECOND, FIRST])
    with pytest.raises(StateError, match="written by a newer livedit"):   # a database newer than the program
        migrate(conn, [FIRST])
    assert applied_migrations(conn) == ["0001_items", "0002_item_colour"]


def test_a_mismatch_names_the_database_file(tmp_path):
    path = tmp_path / "items.sqlite"
    connection = sqlite3.connect(path)
    try:
        migrate(connection, [FIRST, SECOND])
        with pytest.raises(StateError, match=f"database {path} has the migrations"):
            migrate(connection, [FIRST])
    finally:
        connection.close()


def test_duplicate_names_are_refused(conn):
    with pytest.raises(StateError, match="0001_items appear more than once.*must be unique"):
        migrate(conn, [FIRST, Migration("0001_items", "CREATE TABLE other (x)")])
    assert applied_migrations(conn) == []


def test_failed_migration_leaves_nothing_behind(conn):
    broken = Migration("0002_broken", "CREATE TABLE half (x INTEGER); CREATE TABLE items (y)")
    migrate(conn, [FIRST])
    with pytest.raises(sqlite3.OperationalError):
        migrate(conn, [FIRST, broken])
    assert applied_migrations(conn) == ["0001_items"]
    # the migration runs in one transaction: its first statement must be rolled back too
    assert "half" not in tables(conn)
    fixed = Migration("0002_broken", "CREATE TABLE half (x INTEGER); CREATE TABLE other (y)")
    assert migrate(conn, [FIRST, fixed]) == ["0002_broken"]


def test_ledger_schema_migrates_once(tmp_path):
    ledger = Ledger(tmp_path / "ledger.sqlite")
    ledger.close()
    ledger = Ledger(tmp_path / "ledger.sqlite")      # reopening applies nothing new
    try:
        assert applied_migrations(ledger.conn) == [m.name for m in LEDGER_MIGRATIONS]
        assert {"meta", "generations", "edits", "edit_vectors", "l1_history"} <= tables(ledger.conn)
        assert ledger.current_generation() == (0, None)
        assert ledger.edits() == [] and ledger.meta() == {}
    finally:
        ledger.close()


def test_ledger_migrations_on_memory_database(conn):
    assert migrate(conn, LEDGER_MIGRATIONS) == [m.name for m in LEDGER_MIGRATIONS]
    assert migrate(conn, LEDGER_MIGRATIONS) == []
    with pytest.raises(sqlite3.IntegrityError):     # the status column only takes known states
        with conn:
            conn.execute("INSERT INTO generations VALUES (1, NULL, 'x', 'now')")
            conn.execute("INSERT INTO edits (fact_id, fact_json, method, generation, status, created_at) "
                         "VALUES ('f', '{}', 'd4s', 1, 'lost', 'now')")


def unknown_migration_database(path) -> None:
    """A database whose history holds a migration this program does not know."""
    path.parent.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(path)
    with connection:
        migrate(connection, [Migration("0001_from_the_future", "CREATE TABLE future (x)")])
    connection.close()


@pytest.mark.parametrize("argv, database", [
    (["status"], ("state", LEDGER_FILE)),
    (["retract", "1"], ("state", LEDGER_FILE)),
    (["queue", "list"], ("home", "queue.sqlite")),
])
def test_the_cli_reports_a_database_with_unknown_migrations_in_one_line(argv, database, livedit_dirs, capsys):
    from livedit.cli import main

    folder, name = database
    path = livedit_dirs[folder] / name
    unknown_migration_database(path)
    assert main(["-q", *argv]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(f"livedit: error: database {path} has the migrations ['0001_from_the_future']")
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err and "move the file aside" in captured.err
    assert captured.out == ""
