"""The edit queue and its ledger (SQLite, ``$LIVEDIT_HOME/queue.sqlite``).

An item asks for one fact to get a new object in the model's weights. It moves through
the states in ``TRANSITIONS``; every move is recorded with who made it, when and why.
A second proposal of the same object for a fact that is still pending is merged into the
first (its evidence appended). A proposal of a different object supersedes the pending
items of that fact.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from assistant.errors import InvalidFact
from assistant.facts import Fact, make_fact, make_template
from assistant.state.migrations import Migration, now
from updater.database import Database, write_transaction
from updater.errors import IllegalTransition, ItemNotFound, StaleProposal
from updater.store.records import CuratedFact, clean_text

log = logging.getLogger(__name__)

TRANSITIONS: dict[str, frozenset[str]] = {
    "proposed": frozenset({"approved", "rejected", "superseded"}),
    "approved": frozenset({"applying", "rejected", "superseded"}),
    "applying": frozenset({"applied", "failed", "rejected", "approved"}),   # approved: not committed, retry
    "applied": frozenset({"retracted", "superseded"}),
    "failed": frozenset({"approved", "rejected", "superseded"}),
    "rejected": frozenset(),
    "superseded": frozenset(),
    "retracted": frozenset(),
}
STATES = tuple(TRANSITIONS)
ORIGINS = ("detector", "chat", "curator")
MERGEABLE = ("proposed", "approved", "applying")      # the same object proposed again joins these
SUPERSEDABLE = ("proposed", "approved", "failed")     # a different object replaces these
TEXT_LIMIT = 2000

QUEUE_MIGRATIONS = [
    Migration("0001_edit_queue", """
        CREATE TABLE items (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            fact_id TEXT NOT NULL,
            fact_version INTEGER,
            subject TEXT NOT NULL,
            prompt TEXT NOT NULL,
            question TEXT,
            new_object TEXT NOT NULL,
            old_answer TEXT,
            evidence_json TEXT NOT NULL,
            origin TEXT NOT NULL CHECK (origin IN ('detector', 'chat', 'curator')),
            state TEXT NOT NULL CHECK (state IN ('proposed', 'approved', 'applying', 'applied', 'rejected',
                                                 'failed', 'superseded', 'retracted')),
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            edit_id INTEGER,
            superseded_by INTEGER REFERENCES items(id));
        CREATE INDEX items_by_fact ON items (fact_id, state);
        CREATE INDEX items_by_state ON items (state, id);
        CREATE TABLE events (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            item_id INTEGER NOT NULL REFERENCES items(id),
            kind TEXT NOT NULL CHECK (kind IN ('transition', 'merge')),
            from_state TEXT,
            to_state TEXT NOT NULL,
            who TEXT NOT NULL,
            why TEXT NOT NULL,
            at TEXT NOT NULL);
        CREATE INDEX events_by_item ON events (item_id, id)
    """),
    Migration("0002_guard_decisions", """
        CREATE TABLE guard_decisions (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            at TEXT NOT NULL,
            item_ids_json TEXT NOT NULL,
            outcome TEXT NOT NULL CHECK (outcome IN ('commit', 'split', 'reject')),
            generation INTEGER,
            reason TEXT NOT NULL,
            figures_json TEXT NOT NULL)
    """),
]


@dataclass(frozen=True)
class GuardDecision:
    id: int
    at: str
    item_ids: list[int]
    outcome: str                     # "commit", "split" (retried in halves) or "reject"
    generation: int | None           # the committed generation (commit only)
    reason: str
    figures: dict


@dataclass(frozen=True)
class QueueItem:
    id: int
    fact_id: str
    fact_version: int | None
    subject: str
    prompt: str                      # template with one "{}" for the subject
    question: str | None
    new_object: str
    old_answer: str | None           # what the model answered when the item was proposed
    evidence: list                   # one entry per proposal merged into this item
    origin: str
    state: str
    created_at: str
    updated_at: str
    edit_id: int | None              # the engine's edit id once applied
    superseded_by: int | None

    def to_edit_fact(self) -> Fact:
        """The engine's Fact that writes this item's object into the weights."""
        return make_fact(id=self.fact_id, subject=self.subject, prompt=self.prompt, target_new=self.new_object,
                         question=self.question, where=f"queue item {self.id}")


@dataclass(frozen=True)
class QueueEvent:
    item_id: int
    kind: str                        # "transition" or "merge"
    from_state: str | None
    to_state: str
    who: str
    why: str
    at: str


@dataclass(frozen=True)
class ItemDetail:
    item: QueueItem
    events: list[QueueEvent]


@dataclass(frozen=True)
class Proposal:
    item: QueueItem
    merged: bool                     # True: joined an item that was already pending
    superseded: list[int]            # ids of the pending items this proposal replaced


def same_object(a: str, b: str) -> bool:
    return " ".join(a.split()).casefold() == " ".join(b.split()).casefold()


def check_transition(item: QueueItem, to_state: str) -> None:
    if to_state not in TRANSITIONS:
        raise IllegalTransition(f"unknown state {to_state!r}; states are {', '.join(STATES)}")
    if to_state not in TRANSITIONS[item.state]:
        allowed = ", ".join(sorted(TRANSITIONS[item.state])) or "none (it is final)"
        raise IllegalTransition(f"queue item {item.id} is {item.state}; it cannot become {to_state} "
                                f"(from {item.state} it can become: {allowed})")


class EditQueue(Database):
    MIGRATIONS = QUEUE_MIGRATIONS
    FILE_NAME = "queue.sqlite"

    # -- reading ---------------------------------------------------------------------------
    def find(self, item_id: int) -> QueueItem | None:
        row = self.conn.execute("SELECT * FROM items WHERE id = ?", (item_id,)).fetchone()
        return _item_from_row(row) if row else None

    def get(self, item_id: int) -> QueueItem:
        item = self.find(item_id)
        if item is None:
            raise ItemNotFound(f"no queue item {item_id}; `livedit queue list` shows the items")
        return item

    def list(self, state: str | None = None, fact_id: str | None = None, limit: int | None = None) -> list[QueueItem]:
        """Items, oldest first, optionally only those in one state or of one fact."""
        if state is not None and state not in TRANSITIONS:
            raise InvalidFact(f"unknown state {state!r}; states are {', '.join(STATES)}")
        clauses = [clause for clause, value in (("state = ?", state), ("fact_id = ?", fact_id)) if value is not None]
        query = "SELECT * FROM items" + (" WHERE " + " AND ".join(clauses) if clauses else "") + " ORDER BY id"
        if limit is not None:
            query = f"SELECT * FROM ({query} DESC LIMIT {int(limit)}) ORDER BY id"
        rows = self.conn.execute(query, tuple(value for value in (state, fact_id) if value is not None))
        return [_item_from_row(row) for row in rows]

    def show(self, item_id: int) -> ItemDetail:
        """The item with its history of transitions and merges, oldest first."""
        item = self.get(item_id)
        rows = self.conn.execute("SELECT * FROM events WHERE item_id = ? ORDER BY id", (item_id,))
        events = [QueueEvent(r["item_id"], r["kind"], r["from_state"], r["to_state"], r["who"], r["why"], r["at"])
                  for r in rows]
        return ItemDetail(item, events)

    def counts(self) -> dict[str, int]:
        rows = self.conn.execute("SELECT state, COUNT(*) FROM items GROUP BY state")
        return {state: 0 for state in STATES} | {row[0]: row[1] for row in rows}

    # -- proposing -------------------------------------------------------------------------
    def propose(self, *, fact_id: str, subject: str, prompt: str, new_object: str, origin: str, who: str,
                fact_version: int | None = None, question: str | None = None, old_answer: str | None = None,
                evidence: dict | None = None, why: str = "") -> Proposal:
        """Queue a new object for a fact, merging a duplicate or superseding an older proposal."""
        fields = _clean_proposal(fact_id, subject, prompt, new_object, origin, who, question, old_answer)
        entry = _evidence_entry(origin, who, old_answer, evidence)
        why = why or f"proposed by {origin}"
        with write_transaction(self.conn, self.lock):
            pending = self.list(fact_id=fields["fact_id"])
            duplicate = next((item for item in pending if item.state in MERGEABLE
                              and same_object(item.new_object, fields["new_object"])), None)
            if duplicate is not None:
                return Proposal(self._merge(duplicate, entry, fact_version, fields, who, why), True, [])
            older = [item for item in pending if item.state in SUPERSEDABLE]
            _refuse_stale(older, fact_version, fields)
            item_id = self._insert(fields, fact_version, entry, who, why)
            for item in older:
                self._move(item, "superseded", who, f"superseded by item {item_id}: newer object "
                           f"{fields['new_object']!r}", superseded_by=item_id)
        log.info("queue: item %d proposes %r for fact %s", item_id, fields["new_object"], fields["fact_id"])
        return Proposal(self.get(item_id), False, [item.id for item in older])

    def propose_fact(self, fact: CuratedFact, *, origin: str, who: str, old_answer: str | None = None,
                     evidence: dict | None = None, why: str = "") -> Proposal:
        """Queue the current version of a curated fact."""
        return self.propose(fact_id=fact.id, fact_version=fact.version, subject=fact.subject, prompt=fact.prompt,
                            question=fact.question, new_object=fact.object, origin=origin, who=who,
                            old_answer=old_answer, evidence=evidence, why=why)

    def _insert(self, fields: dict, fact_version: int | None, entry: dict, who: str, why: str) -> int:
        stamp = now()
        cursor = self.conn.execute(
            "INSERT INTO items (fact_id, fact_version, subject, prompt, question, new_object, old_answer, "
            "evidence_json, origin, state, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'proposed', ?, ?)",
            (fields["fact_id"], fact_version, fields["subject"], fields["prompt"], fields["question"],
             fields["new_object"], fields["old_answer"], json.dumps([entry]), fields["origin"], stamp, stamp))
        self._record_event(cursor.lastrowid, "transition", None, "proposed", who, why)
        return cursor.lastrowid

    def _merge(self, item: QueueItem, entry: dict, fact_version: int | None, fields: dict,
               who: str, why: str) -> QueueItem:
        """Append the evidence; a newer fact version also refreshes a not yet applying item's prompt."""
        self.conn.execute("UPDATE items SET evidence_json = ?, updated_at = ? WHERE id = ?",
                          (json.dumps(item.evidence + [entry]), now(), item.id))
        newer = fact_version is not None and (item.fact_version is None or fact_version > item.fact_version)
        if newer and item.state != "applying":
            self.conn.execute("UPDATE items SET fact_version = ?, subject = ?, prompt = ?, question = ? WHERE id = ?",
                              (fact_version, fields["subject"], fields["prompt"], fields["question"], item.id))
        self._record_event(item.id, "merge", item.state, item.state, who, f"merged a duplicate proposal: {why}")
        log.info("queue: merged a duplicate proposal for fact %s into item %d", item.fact_id, item.id)
        return self.get(item.id)

    # -- moving through the states ---------------------------------------------------------
    def approve(self, item_id: int, who: str, why: str = "approved") -> QueueItem:
        return self.transition(item_id, "approved", who, why)

    def reject(self, item_id: int, who: str, why: str) -> QueueItem:
        return self.transition(item_id, "rejected", who, why)

    def retract(self, item_id: int, who: str, why: str) -> QueueItem:
        """Record that the item's applied edit was taken out of the model."""
        return self.transition(item_id, "retracted", who, why)

    def record_decision(self, item_ids: list[int], outcome: str, reason: str, figures: dict,
                        generation: int | None = None) -> int:
        """Keep one guard decision with its figures (for curators and the UI's plots)."""
        with write_transaction(self.conn, self.lock):
            cursor = self.conn.execute(
                "INSERT INTO guard_decisions (at, item_ids_json, outcome, generation, reason, figures_json) "
                "VALUES (?, ?, ?, ?, ?, ?)", (now(), json.dumps(item_ids), outcome, generation, reason,
                                              json.dumps(figures)))
        return cursor.lastrowid

    def decisions(self, limit: int | None = None) -> list[GuardDecision]:
        """The guard's decisions, newest first."""
        rows = self.conn.execute("SELECT * FROM guard_decisions ORDER BY id DESC" + (" LIMIT ?" if limit else ""),
                                 (limit,) if limit else ())
        return [GuardDecision(row["id"], row["at"], json.loads(row["item_ids_json"]), row["outcome"],
                              row["generation"], row["reason"], json.loads(row["figures_json"])) for row in rows]

    def mark_failed(self, item_id: int, why: str, who: str = "scheduler") -> QueueItem:
        return self.transition(item_id, "failed", who, why)

    def start_applying(self, item_ids: list[int], who: str = "scheduler",
                       why: str = "batch started") -> list[QueueItem]:
        """Move approved items to applying, all or none."""
        with write_transaction(self.conn, self.lock):
            for item_id in item_ids:
                self._move(self.get(item_id), "applying", who, why)
        return [self.get(item_id) for item_id in item_ids]

    def mark_applied(self, item_id: int, edit_id: int, who: str = "scheduler", why: str = "") -> QueueItem:
        """Record the engine's edit id; earlier applied items of the same fact become superseded."""
        with write_transaction(self.conn, self.lock):
            item = self.get(item_id)
            self._move(item, "applied", who, why or f"applied as edit {edit_id}", edit_id=edit_id)
            for earlier in self.list(state="applied", fact_id=item.fact_id):
                if earlier.id != item_id:
                    self._move(earlier, "superseded", who, f"edit {edit_id} (item {item_id}) replaced it",
                               superseded_by=item_id)
        return self.get(item_id)

    def transition(self, item_id: int, to_state: str, who: str, why: str) -> QueueItem:
        """Move one item to another state, if TRANSITIONS allows it."""
        with write_transaction(self.conn, self.lock):
            self._move(self.get(item_id), to_state, who, why)
        return self.get(item_id)

    def _move(self, item: QueueItem, to_state: str, who: str, why: str, **columns) -> None:
        check_transition(item, to_state)
        who = _clean_who(who)
        why = clean_text(why, "why", f"queue item {item.id}", TEXT_LIMIT, setting=None)
        assignments = "".join(f", {name} = ?" for name in columns)
        self.conn.execute(f"UPDATE items SET state = ?, updated_at = ?{assignments} WHERE id = ? AND state = ?",
                          (to_state, now(), *columns.values(), item.id, item.state))
        self._record_event(item.id, "transition", item.state, to_state, who, why)
        log.info("queue: item %d %s -> %s by %s: %s", item.id, item.state, to_state, who, why)

    def _record_event(self, item_id: int, kind: str, from_state: str | None, to_state: str,
                      who: str, why: str) -> None:
        self.conn.execute("INSERT INTO events (item_id, kind, from_state, to_state, who, why, at) "
                          "VALUES (?, ?, ?, ?, ?, ?, ?)", (item_id, kind, from_state, to_state, who, why, now()))


def _clean_who(who: str) -> str:
    return clean_text(who, "who", "queue", 200, setting=None)


def _clean_proposal(fact_id, subject, prompt, new_object, origin, who, question, old_answer) -> dict:
    where = f"proposal for fact {fact_id!r}"
    if origin not in ORIGINS:
        raise InvalidFact(f"{where}: origin {origin!r} is unknown; use one of {', '.join(ORIGINS)}")
    _clean_who(who)
    subject = clean_text(subject, "subject", where, TEXT_LIMIT, setting=None)
    return {
        "fact_id": clean_text(fact_id, "fact_id", where, TEXT_LIMIT, setting=None), "subject": subject,
        "prompt": make_template(clean_text(prompt, "prompt", where, TEXT_LIMIT, setting=None), subject, where),
        "new_object": clean_text(new_object, "new_object", where, TEXT_LIMIT, setting=None),
        "question": clean_text(question, "question", where, TEXT_LIMIT, required=False, setting=None),
        "old_answer": old_answer[:TEXT_LIMIT] if isinstance(old_answer, str) and old_answer.strip() else None,
        "origin": origin,
    }


def _evidence_entry(origin: str, who: str, old_answer: str | None, evidence: dict | None) -> dict:
    if evidence is not None and not isinstance(evidence, dict):
        raise InvalidFact(f"evidence must be a mapping (model answer, scores), got {type(evidence).__name__}")
    entry = {"at": now(), "origin": origin, "who": who, "model_answer": old_answer, **(evidence or {})}
    try:
        json.dumps(entry, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise InvalidFact(f"evidence cannot be stored as JSON ({error}); give strings and finite numbers") from None
    return entry


def _refuse_stale(pending: list[QueueItem], fact_version: int | None, fields: dict) -> None:
    """A proposal from an older fact version must not replace one from a newer version."""
    for item in pending:
        if fact_version is not None and item.fact_version is not None and item.fact_version > fact_version:
            raise StaleProposal(
                f"proposal of {fields['new_object']!r} for fact {fields['fact_id']!r} is from version {fact_version}, "
                f"but queue item {item.id} already proposes version {item.fact_version}; propose the current version")


def _item_from_row(row) -> QueueItem:
    return QueueItem(id=row["id"], fact_id=row["fact_id"], fact_version=row["fact_version"], subject=row["subject"],
                     prompt=row["prompt"], question=row["question"], new_object=row["new_object"],
                     old_answer=row["old_answer"], evidence=json.loads(row["evidence_json"]), origin=row["origin"],
                     state=row["state"], created_at=row["created_at"], updated_at=row["updated_at"],
                     edit_id=row["edit_id"], superseded_by=row["superseded_by"])
