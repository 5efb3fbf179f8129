"""The detector's record of its checks (SQLite, ``$LIVEDIT_HOME/detector.sqlite``).

Every probe of a curated fact is kept: which version was asked, when, how, what the
model answered, the scores and the verdict. The latest check of each fact decides when
the detector asks it again (see ``updater.detect.detector.due_facts``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields

from assistant.state.migrations import Migration
from updater.database import Database, write_transaction

log = logging.getLogger(__name__)

VERDICTS = ("current", "outdated")
FORMS = ("question", "cloze")

CHECK_MIGRATIONS = [
    Migration("0001_detector_checks", """
        CREATE TABLE checks (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            fact_id TEXT NOT NULL,
            fact_version INTEGER NOT NULL,
            checked_at TEXT NOT NULL,
            verdict TEXT NOT NULL CHECK (verdict IN ('current', 'outdated')),
            form TEXT NOT NULL CHECK (form IN ('question', 'cloze')),
            probe TEXT NOT NULL,
            object TEXT NOT NULL,
            answer TEXT NOT NULL,
            p_object REAL,
            p_answer REAL,
            queue_item INTEGER,
            model TEXT);
        CREATE INDEX checks_by_fact ON checks (fact_id, id)
    """),
]


@dataclass(frozen=True)
class Check:
    fact_id: str
    fact_version: int
    checked_at: str             # ISO time, UTC
    verdict: str                # "current": the answer holds the object; "outdated": it does not
    form: str                   # "question" (chat template) or "cloze" (plain completion)
    probe: str                  # the question or the filled cloze prompt that was asked
    object: str                 # the curated object at that version
    answer: str                 # the model's greedy answer
    p_object: float | None      # mean per-token probability of the object after the probe (teacher forced)
    p_answer: float | None      # the same for the model's own answer
    queue_item: int | None = None   # the queue item that holds this fact's object, if the check led to one
    model: str | None = None        # which served model was asked (fingerprint@generation)

    @property
    def outdated(self) -> bool:
        return self.verdict == "outdated"


COLUMNS = tuple(f.name for f in fields(Check))


class CheckLog(Database):
    MIGRATIONS = CHECK_MIGRATIONS
    FILE_NAME = "detector.sqlite"

    def record(self, checks: list[Check]) -> None:
        """Store checks in one transaction."""
        if not checks:
            return
        placeholders = ", ".join("?" for _ in COLUMNS)
        with write_transaction(self.conn, self.lock):
            self.conn.executemany(f"INSERT INTO checks ({', '.join(COLUMNS)}) VALUES ({placeholders})",
                                  [tuple(getattr(check, name) for name in COLUMNS) for check in checks])
        log.info("detector: recorded %d check(s)", len(checks))

    def latest(self) -> dict[str, Check]:
        """The newest check of every fact that has one."""
        rows = self.conn.execute("SELECT c.* FROM checks c JOIN (SELECT fact_id, MAX(id) AS id FROM checks "
                                 "GROUP BY fact_id) newest ON newest.id = c.id")
        return {row["fact_id"]: _check_from_row(row) for row in rows}

    def history(self, fact_id: str | None = None) -> list[Check]:
        """Every check (of one fact), oldest first."""
        if fact_id is None:
            rows = self.conn.execute("SELECT * FROM checks ORDER BY id")
        else:
            rows = self.conn.execute("SELECT * FROM checks WHERE fact_id = ? ORDER BY id", (fact_id,))
        return [_check_from_row(row) for row in rows]


def _check_from_row(row) -> Check:
    return Check(**{name: row[name] for name in COLUMNS})
