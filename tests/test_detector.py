"""The detector on the tiny random Llama: its answers are gibberish, so curated facts come out
outdated and are queued with evidence; a fact whose object it does say stays current.
Real SQLite, a real chromadb on disk and the real offline embedding model."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone

import pytest
from updater_fixtures import FACTS, embedding_function, home, open_store, store  # noqa: F401

from assistant.config import load_config
from assistant.evaluation.metrics import normalize_answer
from assistant.state.migrations import applied_migrations, migrate
from updater.detect.checks import CHECK_MIGRATIONS, CheckLog
from updater.database import open_database
from updater.detect.detector import Detector, DetectorSettings, due_facts
from updater.detect.probing import ProbeSettings, probe_facts
from updater.queue import EditQueue
from updater.store.records import CuratedFact

WHO = "ada"


@pytest.fixture
def tiny(make_config):
    from assistant.model.loading import load_model
    return load_model(make_config("llama"))


@pytest.fixture
def queue(home):
    with EditQueue.open(load_config()) as opened:
        yield opened


@pytest.fixture
def checks(home):
    with CheckLog.open(load_config()) as opened:
        yield opened


@pytest.fixture
def detector(tiny, store, queue, checks):
    """detector(batch_size=2) -> a Detector on the tiny Llama with short answers."""
    def make(batch_size: int = 4) -> Detector:
        probe = ProbeSettings(question_tokens=12, cloze_tokens=6, batch_size=batch_size)
        return Detector(tiny.model, tiny.tokenizer, store, queue, checks, DetectorSettings(probe=probe))
    return make


def import_facts(store, records=FACTS) -> None:
    store.import_records([(f"record {i}", record) for i, record in enumerate(records)], who=WHO)


def test_check_migrations_apply_once_in_memory():
    conn = open_database(":memory:", CHECK_MIGRATIONS)
    assert applied_migrations(conn) == ["0001_detector_checks"]
    assert migrate(conn, CHECK_MIGRATIONS) == []


def test_facts_the_model_gets_wrong_are_queued_with_evidence(store, queue, checks, detector):
    import_facts(store)
    seen = []
    report = detector().run(progress=lambda done, total: seen.append((done, total)))
    assert report.due == 5 and len(report.checks) == 5 and not report.stopped
    assert len(report.outdated) == 5 and seen == [(4, 5), (5, 5)]
    items = {item.fact_id: item for item in queue.list()}
    assert sorted(items) == sorted(record["id"] for record in FACTS)
    for check in report.checks:
        fact, item = store.get(check.fact_id), items[check.fact_id]
        assert (check.form, check.probe) == (("question", fact.question) if fact.question
                                             else ("cloze", fact.filled_prompt))
        assert item.state == "proposed" and item.origin == "detector" and item.new_object == fact.object
        assert item.fact_version == 1 and check.queue_item == item.id
        assert item.old_answer == (check.answer or None)
        evidence = item.evidence[0]
        assert evidence["origin"] == "detector" and evidence["model_answer"] == item.old_answer
        assert evidence["form"] == check.form and evidence["p_object"] == check.p_object
        assert 0 < check.p_object < 1 and (check.p_answer is None or 0 < check.p_answer <= 1)
    assert [c.fact_id for c in checks.history()] == [c.fact_id for c in report.checks]
    assert checks.latest() == {check.fact_id: check for check in report.checks}


def said_by_the_model(tiny, settings: ProbeSettings) -> CuratedFact:
    """A cloze fact whose object is the first word of the tiny model's own greedy completion."""
    for subject in ["Marie Curie", "Ada Lovelace", "Mount Fuji", "the Nile", "Apple", "Tokyo", "Johann Bach"]:
        fact = CuratedFact(id="said", subject=subject, prompt="{} is famous for", object="-", version=1)
        answer = probe_facts(tiny.model, tiny.tokenizer, [fact], settings)[0].answer
        words = [word for word in normalize_answer(answer).split() if word.isascii() and word.isalpha()]
        if words:
            return CuratedFact(id="said", subject=subject, prompt="{} is famous for", object=words[0])
    pytest.fail("the tiny model said no plain word after any prompt")


def test_a_fact_whose_object_the_model_says_is_current_and_not_queued(tiny, store, queue, detector):
    settings = ProbeSettings(question_tokens=12, cloze_tokens=6, batch_size=1)
    said = said_by_the_model(tiny, settings)
    store.add(said, who=WHO)
    import_facts(store, FACTS[1:2])
    report = detector(batch_size=1).run()
    verdicts = {check.fact_id: check.verdict for check in report.checks}
    assert verdicts == {"said": "current", "eiffel-city": "outdated"}
    assert [item.fact_id for item in queue.list()] == ["eiffel-city"]
    current = next(check for check in report.checks if check.fact_id == "said")
    assert current.queue_item is None and said.object in normalize_answer(current.answer).split()


def test_facts_are_asked_again_when_changed_or_due(store, queue, detector):
    import_facts(store)
    first = detector()
    assert len(first.run().checks) == 5
    assert first.run().checks == [] and first.due() == []
    store.update("eiffel-city", {"object": "Rome"}, who="grace")
    again = first.run()
    assert [(c.fact_id, c.fact_version, c.object) for c in again.checks] == [("eiffel-city", 2, "Rome")]
    eiffel = queue.list(fact_id="eiffel-city")
    assert [(item.new_object, item.state) for item in eiffel] == [("Paris", "superseded"), ("Rome", "proposed")]
    now = datetime.now(timezone.utc)
    assert first.due(at=now + timedelta(days=6)) == []
    assert len(first.due(at=now + timedelta(days=8))) == 5
    assert len(first.run(force=True).checks) == 5
    assert len(first.run(limit=2, at=now + timedelta(days=8)).checks) == 2


def test_due_facts_puts_new_and_changed_facts_first_then_the_oldest_checks(store, checks, detector):
    import_facts(store)
    detector().run()
    latest = checks.latest()
    store.update("nile-continent", {"object": "Asia"}, who=WHO)
    later = datetime.now(timezone.utc) + timedelta(days=30)
    order = [fact.id for fact in due_facts(store.facts(), latest, 7, later)]
    oldest = sorted((c.checked_at, fact_id) for fact_id, c in latest.items() if fact_id != "nile-continent")
    assert order == ["nile-continent"] + [fact_id for _, fact_id in oldest]


def test_a_stop_request_keeps_the_checks_done_so_far(store, queue, checks, detector):
    import_facts(store)
    stop = threading.Event()

    def progress(done: int, total: int) -> None:
        stop.set()

    stopped = detector(batch_size=2).run(progress=progress, stop=stop)
    assert stopped.stopped and stopped.due == 5 and len(stopped.checks) == 2
    assert len(checks.history()) == 2 and len(queue.list()) == 2
    rest = detector(batch_size=2).run()
    assert rest.due == 3 and len(rest.checks) == 3 and not rest.stopped
    assert {c.fact_id for c in stopped.checks + rest.checks} == {record["id"] for record in FACTS}


def test_items_that_hold_the_object_are_not_queued_again(store, queue, detector):
    import_facts(store)
    first = detector().run()
    item_of = {check.fact_id: check.queue_item for check in first.checks}
    queue.approve(item_of["darrieux-tongue"], who=WHO)
    applied = item_of["eiffel-city"]
    queue.approve(applied, who=WHO)
    queue.start_applying([applied])
    queue.mark_applied(applied, edit_id=7)
    queue.reject(item_of["curie-field"], who=WHO, why="not now")
    second = detector().run(force=True)
    assert len(second.outdated) == 5
    assert sorted(second.already_queued) == sorted(i for f, i in item_of.items() if f != "curie-field")
    assert len(second.queued) == 1 and queue.get(second.queued[0]).fact_id == "curie-field"
    for fact_id, item_id in item_of.items():
        if fact_id != "curie-field":
            assert all(event.kind == "transition" for event in queue.show(item_id).events)
    assert {c.fact_id: c.queue_item for c in second.checks}["eiffel-city"] == applied
