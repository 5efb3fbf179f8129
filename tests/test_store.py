"""The curated knowledge store: versions in SQLite, current facts in a real chromadb on disk,
embedded with the real offline model."""

from __future__ import annotations

import io
from dataclasses import replace
import json
from datetime import datetime, timezone
from pathlib import Path

import pytest
from updater_fixtures import (COUNTERFACT_FILE, FACTS, ZSRE_FILE, embedding_function, home,  # noqa: F401
                              open_store, shared_records, store, write_jsonl)

from assistant.config import UpdaterConfig, config_from_dict
from assistant.errors import ConfigError, InvalidFact
from assistant.facts import Fact, content_id, load_facts
from assistant.state.migrations import applied_migrations, migrate
from updater.database import open_database
from updater.errors import DuplicateFact, FactNotFound
from updater.store.records import CONTENT_FIELDS, CuratedFact
from updater.store.knowledge import STORE_MIGRATIONS

WHO = "ada"
QAEDIT_FILE = Path("qaedit/qaedit-dev.json")


def content(fact: CuratedFact) -> dict:
    return {"id": fact.id, **{name: getattr(fact, name) for name in CONTENT_FIELDS}}


def indexed_versions(store) -> dict[str, int]:
    found = store.collection().get(include=["metadatas"])
    return {fact_id: meta["version"] for fact_id, meta in zip(found["ids"], found["metadatas"])}


def test_store_migrations_apply_once_in_memory():
    conn = open_database(":memory:", STORE_MIGRATIONS)
    assert applied_migrations(conn) == ["0001_fact_versions"]
    assert migrate(conn, STORE_MIGRATIONS) == []
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"facts", "fact_versions", "migrations"} <= tables


def test_the_updater_config_section_checks_its_values():
    assert config_from_dict({"updater": {"recheck_days": 3}}).updater.recheck_days == 3
    with pytest.raises(ConfigError, match=r"unknown key 'colour' in section \[updater\]"):
        config_from_dict({"updater": {"colour": "red"}})
    with pytest.raises(ConfigError, match="should be a bool"):
        config_from_dict({"updater": {"auto_approve_agreeing_corrections": 1}})
    with pytest.raises(ConfigError, match="collection = 'x'"):
        UpdaterConfig(collection="x")
    with pytest.raises(ConfigError, match="max_text_chars in 20..2000"):
        UpdaterConfig(max_text_chars=5000)


def test_add_makes_version_one_with_a_template(store, home):
    fact = store.add(FACTS[0], who=WHO)
    assert fact.prompt == "The mother tongue of {} is"
    assert fact.filled_prompt == FACTS[0]["prompt"]
    assert (fact.version, fact.curator, fact.note, fact.aliases) == (1, WHO, "added", ("français",))
    assert fact.valid_from == datetime.now(timezone.utc).date().isoformat()
    assert store.get("darrieux-tongue") == fact
    assert (home / "knowledge" / "facts.sqlite").exists() and (home / "knowledge" / "chroma").is_dir()
    assert indexed_versions(store) == {"darrieux-tongue": 1}


def test_an_id_is_derived_from_subject_and_prompt(store):
    fields = {key: FACTS[1][key] for key in ("subject", "prompt", "object")}
    first = store.validate(fields, who=WHO)
    assert first.id.startswith("f-") and store.validate(fields | {"object": "Rome"}, who=WHO).id == first.id


def test_update_keeps_every_version(store):
    store.add(FACTS[2], who=WHO)
    updated = store.update("curie-field", {"object": "physics", "aliases": ["Physics"]}, who="grace", note="1903 too")
    assert (updated.version, updated.object, updated.curator, updated.note) == (2, "physics", "grace", "1903 too")
    assert updated.valid_from == datetime.now(timezone.utc).date().isoformat()   # a new object holds from today
    history = store.history("curie-field")
    assert [(f.version, f.object, f.curator) for f in history] == [(1, "chemistry", WHO), (2, "physics", "grace")]
    assert history[0].valid_from == "1911-12-10" and store.get("curie-field", version=1) == history[0]
    assert store.get("curie-field") == updated and store.count() == 1
    assert indexed_versions(store) == {"curie-field": 2}


def test_an_update_that_changes_nothing_keeps_the_version(store):
    store.add(FACTS[3], who=WHO)
    again = store.update("nile-continent", {"object": " Africa "}, who="grace")
    assert again.version == 1 and len(store.history("nile-continent")) == 1


def test_update_rechecks_the_fact(store):
    store.add(FACTS[3], who=WHO)
    with pytest.raises(InvalidFact, match="subject 'the Amazon' does not occur"):
        store.update("nile-continent", {"subject": "the Amazon", "prompt": "the Nile flows through"}, who=WHO)
    with pytest.raises(InvalidFact, match="cannot change field"):
        store.update("nile-continent", {"id": "other"}, who=WHO)
    with pytest.raises(FactNotFound):
        store.update("no-such-fact", {"object": "Asia"}, who=WHO)
    assert [f.version for f in store.history("nile-continent")] == [1]


def test_adding_an_existing_id_is_refused(store):
    store.add(FACTS[1], who=WHO)
    with pytest.raises(DuplicateFact, match="exists already .*facts update eiffel-city"):
        store.add(FACTS[1] | {"object": "Rome"}, who=WHO)
    assert store.get("eiffel-city").object == "Paris"


GOOD = {"id": "ok", "subject": "Ada Lovelace", "prompt": "{} was born in", "object": "London"}


@pytest.mark.parametrize("change, message", [
    ({"subject": "  "}, "field 'subject' is empty"),
    ({"object": None}, "field 'object' is empty"),
    ({"object": "x" * 501}, "has 501 characters; the limit is 500"),
    ({"prompt": "Charles Babbage was born in"}, "subject 'Ada Lovelace' does not occur in prompt"),
    ({"prompt": "{} met {} in"}, "more than one"),
    ({"prompt": "{}"}, "is only the subject"),
    ({"object": "Lon\x00don"}, "unsupported character U\\+0000"),
    ({"object": "London\nEngland"}, "unsupported character U\\+000A"),
    ({"subject": "Ada\u202eLovelace", "prompt": "{} was born in"}, "unsupported character U\\+202E"),
    ({"id": "has space"}, "id 'has space' is not usable"),
    ({"id": "i" * 129}, "the limit is 128 \\(shorten it, or raise \\[updater\\] max_id_chars"),
    ({"valid_from": "last year"}, "is not a date; write it as YYYY-MM-DD"),
    ({"aliases": "not json ["}, None),
    ({"aliases": "[1, 2"}, "not a JSON list"),
    ({"aliases": [f"name {i}" for i in range(21)]}, "21 aliases; the limit is 20"),
    ({"object": 3.5}, "must be text"),
])
def test_bad_facts_are_refused_with_a_reason(store, change, message):
    if message is None:                      # a "|"-separated alias cell is fine
        assert store.validate(GOOD | change, who=WHO).aliases == ("not json [",)
        return
    with pytest.raises(InvalidFact, match=message):
        store.add(GOOD | change, who=WHO)
    assert store.count() == 0


def test_to_edit_fact_gives_the_engine_a_fact(store):
    curated = store.add(FACTS[0], who=WHO)
    fact = curated.to_edit_fact()
    assert isinstance(fact, Fact)
    assert (fact.id, fact.subject, fact.prompt, fact.target_new, fact.question) == (
        "darrieux-tongue", "Danielle Darrieux", "The mother tongue of {} is", "French",
        "What is Danielle Darrieux's native language?")
    assert curated.to_edit_fact(target_true="English").target_true == "English"


def test_semantic_search_finds_the_right_fact(store):
    store.import_records([(f"fact {i}", record) for i, record in enumerate(FACTS)], who=WHO)
    queries = {"Which language did Danielle Darrieux grow up speaking?": "darrieux-tongue",
               "In what city is the Eiffel Tower?": "eiffel-city",
               "What instrument was Bach famous for playing?": "bach-instrument"}
    for query, expected in queries.items():
        hits = store.search(query, k=3)
        assert hits[0].fact.id == expected, (query, hits)
        assert hits[0].distance < hits[1].distance <= hits[2].distance
    assert len(store.search("rivers", k=50)) == len(FACTS)
    with pytest.raises(InvalidFact, match="non-empty query"):
        store.search("  ")


def test_search_of_an_empty_store_finds_nothing(store):
    assert store.search("anything") == []


def test_export_import_round_trip_jsonl_and_csv(store, open_store, tmp_path):
    store.import_records([(f"fact {i}", record) for i, record in enumerate(FACTS)], who=WHO)
    store.update("eiffel-city", {"question": "Where is the Eiffel Tower?"}, who="grace")
    expected = [content(f) for f in store.facts()]
    for fmt in ("jsonl", "csv"):
        path = tmp_path / f"facts.{fmt}"
        with open(path, "w", encoding="utf-8", newline="") as stream:
            assert store.export(stream, fmt) == len(FACTS)
        other = open_store(tmp_path / f"copy-{fmt}")
        report = other.import_file(path, who="importer")
        assert sorted(report.added) == sorted(f["id"] for f in FACTS)
        assert [content(f) for f in other.facts()] == expected
        assert {f.curator for f in other.facts()} == {WHO, "grace"}      # the file's curator is kept
        assert other.search("Where is the Eiffel Tower?", k=1)[0].fact.id == "eiffel-city"


def test_export_with_history_has_every_version(store):
    store.add(FACTS[3], who=WHO)
    store.update("nile-continent", {"object": "Asia"}, who=WHO)
    stream = io.StringIO()
    assert store.export(stream, "jsonl", with_history=True) == 2
    rows = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(r["version"], r["object"]) for r in rows] == [(1, "Africa"), (2, "Asia")]


def test_import_counterfact_records(store, tmp_path, shared_records):
    records = shared_records(COUNTERFACT_FILE, 3)
    path = tmp_path / "counterfact.json"                # EasyEdit's file is one JSON array
    path.write_text(json.dumps(records), encoding="utf-8")
    report = store.import_file(path, who=WHO)
    assert report.added == [f"cf-{r['case_id']}" for r in records]
    first = store.get("cf-0")
    assert (first.subject, first.filled_prompt, first.object, first.source) == (
        records[0]["subject"], records[0]["prompt"], records[0]["target_new"], "counterfact")
    assert first.to_edit_fact().target_new == records[0]["target_new"]


def test_import_zsre_records_as_jsonl(store, tmp_path, shared_records):
    records = shared_records(ZSRE_FILE, 3)
    report = store.import_file(write_jsonl(tmp_path / "zsre.jsonl", records), who=WHO)
    assert len(report.added) == 3
    by_subject = {f.subject: f for f in store.facts()}
    for record in records:
        fact = by_subject[record["subject"]]
        assert (fact.object, fact.question, fact.filled_prompt, fact.source) == (
            record["alt"], record["src"], record["src"], "zsre")
    again = store.import_file(tmp_path / "zsre.jsonl", who=WHO, existing="skip")
    assert len(again.unchanged) == 3 and store.count() == 3             # zsRE ids are stable


def test_import_counterfact_from_csv(store, tmp_path, shared_records):
    records = shared_records(COUNTERFACT_FILE, 2)
    import csv
    with open(tmp_path / "cf.csv", "w", encoding="utf-8", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)
    assert store.import_file(tmp_path / "cf.csv", who=WHO).added == ["cf-0", "cf-1"]


def test_a_bad_record_in_the_middle_imports_nothing(store, tmp_path):
    store.add(FACTS[0], who=WHO)
    records = [FACTS[1], FACTS[2] | {"prompt": "Pierre Curie won a Nobel Prize in"}, FACTS[3]]
    path = write_jsonl(tmp_path / "bad.jsonl", records)
    with pytest.raises(InvalidFact, match=r"bad.jsonl line 2: subject 'Marie Curie' does not occur.*nothing"):
        store.import_file(path, who=WHO)
    assert [f.id for f in store.facts()] == ["darrieux-tongue"]
    assert indexed_versions(store) == {"darrieux-tongue": 1}


def test_import_refuses_duplicates_and_existing_ids(store, tmp_path):
    store.add(FACTS[0], who=WHO)
    duplicated = write_jsonl(tmp_path / "dup.jsonl", [FACTS[1], FACTS[2], FACTS[1] | {"object": "Lyon"}])
    with pytest.raises(DuplicateFact, match=r"dup.jsonl line 3: id 'eiffel-city' was already given at .*line 1"):
        store.import_file(duplicated, who=WHO)
    existing = write_jsonl(tmp_path / "existing.jsonl", [FACTS[1], FACTS[0] | {"object": "German"}])
    with pytest.raises(DuplicateFact, match=r"existing.jsonl line 2: id 'darrieux-tongue' exists already"):
        store.import_file(existing, who=WHO)
    assert store.count() == 1
    report = store.import_file(existing, who=WHO, existing="update")
    assert (report.added, report.updated) == (["eiffel-city"], ["darrieux-tongue"])
    assert store.get("darrieux-tongue").version == 2 and store.get("darrieux-tongue").object == "German"


@pytest.mark.parametrize("text, message", [
    ('{"id": "a", "subject": "A"\n', "line 1: invalid JSON"),
    ('{"id": "a", "colour": "red"}\n', "unknown field\\(s\\) colour"),
    ("[1, 2]", "record 1: expected a JSON object"),
    ("\n\n", "no records found"),
])
def test_malformed_files_name_the_place(store, tmp_path, text, message):
    path = tmp_path / "facts.jsonl"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(InvalidFact, match=message):
        store.import_file(path, who=WHO)


def test_a_csv_row_with_extra_cells_is_refused(store, tmp_path):
    path = tmp_path / "facts.csv"
    path.write_text("id,subject,prompt,object\nx,Paris,{} is in,France,extra\n", encoding="utf-8")
    with pytest.raises(InvalidFact, match="facts.csv line 2: more cells than the header"):
        store.import_file(path, who=WHO)


def test_chroma_is_repaired_after_a_crash(store, open_store):
    store.import_records([(f"fact {i}", record) for i, record in enumerate(FACTS)], who=WHO)
    # A crash after the SQLite commit and before the chroma upsert: version 2 is only in SQLite.
    from updater.database import write_transaction
    current = store.get("eiffel-city")
    with write_transaction(store.conn, store.lock):
        store._record_version(replace(current, object="Las Vegas"), 2, "crash")
    store.collection().delete(ids=["nile-continent"])                        # and an entry lost
    store.collection().add(ids=["ghost"], documents=["a fact the store never had"],
                           metadatas=[{"id": "ghost", "version": 1}])
    assert indexed_versions(store)["eiffel-city"] == 1
    store.close()

    reopened = open_store()
    assert indexed_versions(reopened) == {f["id"]: 2 if f["id"] == "eiffel-city" else 1 for f in FACTS}
    hit = reopened.search("Which continent does the Nile flow through?", k=1)[0]
    assert hit.fact.id == "nile-continent"
    assert reopened.sync_index() == 0


def test_a_missing_collection_is_rebuilt_from_sqlite(store, open_store, home):
    store.import_records([(f"fact {i}", record) for i, record in enumerate(FACTS)], who=WHO)
    assert store.get("nile-continent").note == f"imported by {WHO}"
    renamed = open_store(home / "knowledge", UpdaterConfig(collection="facts_rebuilt"))   # an empty collection
    assert renamed.sync_index() == len(FACTS)                 # the first use re-embeds every fact
    assert indexed_versions(renamed) == {f["id"]: 1 for f in FACTS}
    assert renamed.search("Which river flows through Africa?", k=1)[0].fact.id == "nile-continent"


def test_a_record_gets_the_same_id_from_the_engine_and_the_store(store, tmp_path, shared_records):
    # issue 23: a fact entered both ways must have one id, or supersede misses the first edit
    quoted = [r for r in shared_records(QAEDIT_FILE, 700) if r["prompt"].startswith('"')][:2]
    records = shared_records(ZSRE_FILE, 3) + quoted
    path = write_jsonl(tmp_path / "mixed.jsonl", records)
    engine_ids = [fact.id for fact in load_facts(path)]
    assert store.import_file(path, who=WHO).added == engine_ids
    assert engine_ids[:3] == [content_id(r["subject"], r["src"].replace(r["subject"], "{}", 1)) for r in records[:3]]
    assert engine_ids[3:] == [f"qa-{r['id']}" for r in quoted]


def test_qaedit_quoting_is_undone_by_the_engine_and_the_store(store, tmp_path):
    record = {"id": 42, "source": "x", "prompt": '"The ""Giant Marbles"" rock formation is in which park?"',
              "target": "Joshua Tree", "subject": "Giant Marbles"}
    path = write_jsonl(tmp_path / "qaedit.jsonl", [record])
    question = 'The "Giant Marbles" rock formation is in which park?'
    [fact] = load_facts(path)
    store.import_file(path, who=WHO)
    curated = store.get("qa-42")
    assert fact.question == curated.question == question
    assert fact.prompt == curated.prompt == 'The "{}" rock formation is in which park?'


@pytest.mark.parametrize("target_name", ["target_new", "object"])
def test_one_fact_file_serves_the_engine_and_the_store(store, tmp_path, target_name):
    records = [{"id": "ada-city", "subject": "Ada Lovelace", "prompt": "{} was born in", target_name: "London",
                "question": "Where was Ada Lovelace born?"},
               {"subject": "the Nile", "prompt": "the Nile flows through", target_name: "Africa"}]
    path = write_jsonl(tmp_path / "ours.jsonl", records)
    facts = load_facts(path)
    assert store.import_file(path, who=WHO).added == [fact.id for fact in facts]
    assert facts[1].id == content_id("the Nile", "{} flows through")
    for fact in facts:
        curated = store.get(fact.id)
        assert (curated.subject, curated.prompt, curated.object, curated.question) == (
            fact.subject, fact.prompt, fact.target_new, fact.question)
        assert curated.to_edit_fact() == fact
