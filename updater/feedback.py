"""Likes and dislikes from the chat (SQLite, ``$LIVEDIT_HOME/feedback.sqlite``): data for curators.

Each vote keeps the question, the answer it judged, who gave it and the model's generation
then, so a curator can see which answers people disliked and whether a later edit helped.
"""

from __future__ import annotations

from dataclasses import dataclass

from assistant.state.migrations import Migration, now
from updater.database import Database, write_transaction

TEXT_LIMIT = 4000

FEEDBACK_MIGRATIONS = [
    Migration("0001_feedback", """
        CREATE TABLE votes (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            at TEXT NOT NULL,
            who TEXT NOT NULL,
            liked INTEGER NOT NULL CHECK (liked IN (0, 1)),
            question TEXT NOT NULL,
            answer TEXT NOT NULL,
            generation INTEGER);
        CREATE INDEX votes_by_time ON votes (id)
    """),
]


@dataclass(frozen=True)
class Vote:
    id: int
    at: str
    who: str
    liked: bool
    question: str
    answer: str
    generation: int | None


class FeedbackLog(Database):
    MIGRATIONS = FEEDBACK_MIGRATIONS
    FILE_NAME = "feedback.sqlite"

    def record(self, liked: bool, question: str, answer: str, who: str, generation: int | None = None) -> Vote:
        with write_transaction(self.conn, self.lock):
            vote_id = self.conn.execute(
                "INSERT INTO votes (at, who, liked, question, answer, generation) VALUES (?, ?, ?, ?, ?, ?)",
                (now(), who[:200], int(bool(liked)), question[:TEXT_LIMIT], answer[:TEXT_LIMIT], generation)).lastrowid
        return self.votes(limit=1)[0] if vote_id else None

    def votes(self, limit: int = 50) -> list[Vote]:
        """The newest votes first."""
        rows = self.conn.execute("SELECT * FROM votes ORDER BY id DESC LIMIT ?", (limit,))
        return [Vote(r["id"], r["at"], r["who"], bool(r["liked"]), r["question"], r["answer"], r["generation"])
                for r in rows]

    def counts(self) -> dict[str, int]:
        row = self.conn.execute("SELECT COALESCE(SUM(liked), 0), COUNT(*) FROM votes").fetchone()
        return {"likes": int(row[0]), "dislikes": int(row[1]) - int(row[0])}
