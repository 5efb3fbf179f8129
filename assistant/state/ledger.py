"""The edit ledger (SQLite): every edit, its per-layer (k, r), the generations of the
durable sums, and the L1 history."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from assistant.facts import Fact, fact_from_record
from assistant.state.l1 import LayerNorms
from assistant.state.migrations import Migration, connect, migrate, now

LEDGER_MIGRATIONS = [
    Migration("0001_edit_ledger", """
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE generations (
            id INTEGER PRIMARY KEY, file TEXT, reason TEXT NOT NULL, created_at TEXT NOT NULL);
        CREATE TABLE edits (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            fact_id TEXT NOT NULL,
            fact_json TEXT NOT NULL,
            method TEXT NOT NULL,
            generation INTEGER NOT NULL REFERENCES generations(id),
            status TEXT NOT NULL CHECK (status IN ('active', 'retracted', 'superseded')),
            target_probability REAL,
            realised_fraction REAL,
            created_at TEXT NOT NULL,
            ended_generation INTEGER REFERENCES generations(id),
            ended_at TEXT,
            ended_reason TEXT);
        CREATE INDEX edits_by_fact ON edits (fact_id, status);
        CREATE TABLE edit_vectors (
            edit_id INTEGER NOT NULL REFERENCES edits(id),
            layer INTEGER NOT NULL,
            k BLOB NOT NULL,
            r BLOB NOT NULL,
            PRIMARY KEY (edit_id, layer));
        CREATE TABLE l1_history (
            generation INTEGER NOT NULL REFERENCES generations(id),
            layer INTEGER NOT NULL,
            mean_abs REAL NOT NULL,
            growth REAL NOT NULL,
            mean_abs_delta REAL NOT NULL,
            active_edits INTEGER NOT NULL,
            PRIMARY KEY (generation, layer))
    """),
    Migration("0002_edit_vector_columns", """
        ALTER TABLE edit_vectors ADD COLUMN columns INTEGER NOT NULL DEFAULT 1
    """),
]


@dataclass(frozen=True)
class EditRecord:
    id: int
    fact: Fact
    method: str
    generation: int
    status: str
    target_probability: float | None
    realised_fraction: float | None
    created_at: str
    ended_reason: str | None


@dataclass(frozen=True)
class StateStatus:
    """What the ledger says about a state: no model or statistics needed."""
    folder: Path
    method: str | None                 # None on a state that was never opened
    generation: int
    edits: list[EditRecord]
    norms: list[LayerNorms]            # the L1 figures recorded with the current generation
    growth_history: list[tuple[int, float]] = ()    # (active edits, largest L1 growth) per generation

    @property
    def active(self) -> list[EditRecord]:
        return [e for e in self.edits if e.status == "active"]


@dataclass
class NewEdit:
    """An edit ready to be recorded: its fact and the (k, r) it added per layer."""
    fact: Fact
    vectors: dict[int, tuple[torch.Tensor, torch.Tensor]]
    target_probability: float
    realised_fraction: float


def _columns(vectors: torch.Tensor) -> torch.Tensor:
    return vectors[:, None] if vectors.dim() == 1 else vectors


def _blob(vectors: torch.Tensor) -> bytes:
    """Columns (d, m) stored as m rows of d float64 values."""
    return _columns(vectors).detach().double().cpu().T.contiguous().numpy().tobytes()


def _matrix(blob: bytes, columns: int) -> torch.Tensor:
    """The (d, m) columns back from a blob."""
    return torch.from_numpy(np.frombuffer(blob, dtype=np.float64).copy()).view(columns, -1).T


LEDGER_FILE = "ledger.sqlite"


class Ledger:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.conn = connect(self.path)
        migrate(self.conn, LEDGER_MIGRATIONS)

    @classmethod
    def in_state(cls, folder: Path) -> "Ledger":
        return cls(Path(folder) / LEDGER_FILE)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> "Ledger":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def status(self, folder: Path) -> StateStatus:
        generation = self.current_generation()[0]
        return StateStatus(Path(folder), self.meta().get("method"), generation, self.edits(), self.norms_at(generation),
                           self.growth_history())

    # -- meta ------------------------------------------------------------------------------
    def meta(self) -> dict:
        return {row["key"]: json.loads(row["value"]) for row in self.conn.execute("SELECT key, value FROM meta")}

    def set_meta(self, values: dict) -> None:
        with self.conn:
            for key, value in values.items():
                self.conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, json.dumps(value)))

    # -- generations -----------------------------------------------------------------------
    def current_generation(self) -> tuple[int, str | None]:
        row = self.conn.execute("SELECT id, file FROM generations ORDER BY id DESC LIMIT 1").fetchone()
        return (row["id"], row["file"]) if row else (0, None)

    def record_generation(self, generation: int, file: str | None, reason: str, new_edits: list[NewEdit],
                          method: str, ended: dict[int, str], norms: list[LayerNorms]) -> list[int]:
        """One transaction: the new generation, its new edits with their vectors, the edits it
        ended (id -> 'retracted' | 'superseded'), and the L1 figures. Returns the new edit ids."""
        stamp = now()
        ids = []
        with self.conn:
            self.conn.execute("INSERT INTO generations (id, file, reason, created_at) VALUES (?, ?, ?, ?)",
                              (generation, file, reason, stamp))
            for edit_id, status in ended.items():
                self.conn.execute(
                    "UPDATE edits SET status = ?, ended_generation = ?, ended_at = ?, ended_reason = ? "
                    "WHERE id = ? AND status = 'active'", (status, generation, stamp, reason, edit_id))
            for edit in new_edits:
                cursor = self.conn.execute(
                    "INSERT INTO edits (fact_id, fact_json, method, generation, status, target_probability, "
                    "realised_fraction, created_at) VALUES (?, ?, ?, ?, 'active', ?, ?, ?)",
                    (edit.fact.id, json.dumps(edit.fact.to_record()), method, generation,
                     edit.target_probability, edit.realised_fraction, stamp))
                ids.append(cursor.lastrowid)
                self.conn.executemany(
                    "INSERT INTO edit_vectors (edit_id, layer, k, r, columns) VALUES (?, ?, ?, ?, ?)",
                    [(cursor.lastrowid, layer, _blob(k), _blob(r), _columns(k).shape[1])
                     for layer, (k, r) in edit.vectors.items()])
            active = self.conn.execute("SELECT COUNT(*) FROM edits WHERE status = 'active'").fetchone()[0]
            self.conn.executemany(
                "INSERT INTO l1_history VALUES (?, ?, ?, ?, ?, ?)",
                [(generation, n.layer, n.mean_abs, n.growth, n.mean_abs_delta, active) for n in norms])
        return ids

    # -- edits -----------------------------------------------------------------------------
    def _record(self, row: sqlite3.Row) -> EditRecord:
        return EditRecord(row["id"], fact_from_record(json.loads(row["fact_json"])), row["method"],
                          row["generation"], row["status"], row["target_probability"],
                          row["realised_fraction"], row["created_at"], row["ended_reason"])

    def edits(self, status: str | None = None) -> list[EditRecord]:
        query = "SELECT * FROM edits" + (" WHERE status = ?" if status else "") + " ORDER BY id"
        return [self._record(row) for row in self.conn.execute(query, (status,) if status else ())]

    def edit(self, edit_id: int) -> EditRecord | None:
        row = self.conn.execute("SELECT * FROM edits WHERE id = ?", (edit_id,)).fetchone()
        return self._record(row) if row else None

    def active_edit_for_fact(self, fact_id: str) -> EditRecord | None:
        row = self.conn.execute("SELECT * FROM edits WHERE fact_id = ? AND status = 'active'", (fact_id,)).fetchone()
        return self._record(row) if row else None

    def vectors(self, edit_id: int) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """Per layer, the keys K (d_in, m) and residuals R (d_out, m) the edit added:
        one column per prompt form, or one averaged column."""
        rows = self.conn.execute("SELECT layer, k, r, columns FROM edit_vectors WHERE edit_id = ?", (edit_id,))
        return {row["layer"]: (_matrix(row["k"], row["columns"]), _matrix(row["r"], row["columns"])) for row in rows}

    def norms_at(self, generation: int) -> list[LayerNorms]:
        rows = self.conn.execute("SELECT layer, mean_abs, growth, mean_abs_delta FROM l1_history "
                                 "WHERE generation = ? ORDER BY layer", (generation,))
        return [LayerNorms(row["layer"], row["mean_abs"], row["growth"], row["mean_abs_delta"]) for row in rows]

    def growth_history(self) -> list[tuple[int, float]]:
        """(active edits, largest L1 growth over the layers) after each generation, oldest first."""
        rows = self.conn.execute("SELECT MAX(active_edits), MAX(growth) FROM l1_history "
                                 "GROUP BY generation ORDER BY generation")
        return [(int(edits), float(growth)) for edits, growth in rows]

    def l1_history(self) -> list[dict]:
        rows = self.conn.execute("SELECT * FROM l1_history ORDER BY generation, layer")
        return [dict(row) for row in rows]


def read_status(folder: Path) -> StateStatus:
    """The state's status from its ledger alone; a folder without a ledger is an empty state
    (and is left as it is)."""
    folder = Path(folder)
    if not (folder / LEDGER_FILE).exists():
        return StateStatus(folder, None, 0, [], [])
    with Ledger.in_state(folder) as ledger:
        return ledger.status(folder)
