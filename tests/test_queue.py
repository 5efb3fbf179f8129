"""The edit queue: its migrations, states and legal transitions, merging and superseding."""

from __future__ import annotations

import pytest
from updater_fixtures import home  # noqa: F401

from assistant.config import load_config
from assistant.errors import InvalidFact
from assistant.state.migrations import applied_migrations, migrate
from updater.database import open_database
from updater.errors import IllegalTransition, ItemNotFound, StaleProposal
from updater.queue import QUEUE_MIGRATIONS, STATES, TRANSITIONS, EditQueue
from updater.store.records import CuratedFact

# How a fresh (proposed) item reaches each state.
PATHS = {
    "proposed": [],
    "approved": ["approved"],
    "applying": ["approved", "applying"],
    "applied": ["approved", "applying", "applied"],
    "failed": ["approved", "applying", "failed"],
    "rejected": ["rejected"],
    "superseded": ["superseded"],
    "retracted": ["approved", "applying", "applied", "retracted"],
}
LEGAL = [(a, b) for a, targets in TRANSITIONS.items() for b in sorted(targets)]
ILLEGAL = [(a, b) for a in STATES for b in STATES if b not in TRANSITIONS[a]]


@pytest.fixture
def queue():
    with EditQueue(":memory:") as opened:
        yield opened


def propose(queue, fact_id="darrieux", new_object="French", **extra):
    fields = dict(fact_id=fact_id, subject="Danielle Darrieux", prompt="The mother tongue of Danielle Darrieux is",
                  new_object=new_object, origin="detector", who="detector", fact_version=1,
                  old_answer="English", evidence={"p_new": 0.02, "p_old": 0.71})
    return queue.propose(**(fields | extra))


def drive(queue, item_id, state):
    for step in PATHS[state]:
        queue.transition(item_id, step, who="test", why=f"to {step}")
    return queue.get(item_id)


def test_queue_migrations_apply_once_in_memory():
    conn = open_database(":memory:", QUEUE_MIGRATIONS)
    assert applied_migrations(conn) == ["0001_edit_queue", "0002_guard_decisions"]
    assert migrate(conn, QUEUE_MIGRATIONS) == []
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"items", "events", "migrations", "guard_decisions"} <= tables


def test_the_transition_table_covers_every_state():
    assert set(STATES) == {"proposed", "approved", "applying", "applied", "rejected", "failed", "superseded",
                           "retracted"}
    assert all(targets <= set(STATES) for targets in TRANSITIONS.values())
    assert all(drive_path[-1] == state for state, drive_path in PATHS.items() if drive_path)


def test_propose_records_the_item_and_who_proposed_it(queue):
    proposal = propose(queue)
    item = proposal.item
    assert (proposal.merged, proposal.superseded) == (False, [])
    assert (item.state, item.origin, item.fact_version, item.old_answer) == ("proposed", "detector", 1, "English")
    assert item.prompt == "The mother tongue of {} is"
    assert item.evidence[0]["model_answer"] == "English" and item.evidence[0]["p_new"] == 0.02
    events = queue.show(item.id).events
    assert [(e.from_state, e.to_state, e.who, e.why) for e in events] == [
        (None, "proposed", "detector", "proposed by detector")]
    fact = item.to_edit_fact()
    assert (fact.id, fact.target_new, fact.subject) == ("darrieux", "French", "Danielle Darrieux")


def test_a_duplicate_is_merged_with_its_evidence(queue):
    first = propose(queue).item
    queue.approve(first.id, who="grace")
    second = propose(queue, new_object="  french ", origin="chat", who="user-7", evidence={"like": False})
    assert second.merged and second.item.id == first.id and second.item.state == "approved"
    assert [entry["origin"] for entry in second.item.evidence] == ["detector", "chat"]
    assert len(queue.list()) == 1
    kinds = [(e.kind, e.to_state, e.who) for e in queue.show(first.id).events]
    assert kinds[-1] == ("merge", "approved", "user-7")


def test_a_merge_with_a_newer_fact_version_refreshes_the_prompt(queue):
    first = propose(queue).item
    merged = propose(queue, fact_version=2, prompt="{} grew up speaking").item
    assert merged.id == first.id and (merged.fact_version, merged.prompt) == (2, "{} grew up speaking")


def test_a_newer_object_supersedes_the_pending_items(queue):
    old = propose(queue, new_object="English").item
    failed = drive(queue, propose(queue, fact_id="other", new_object="x").item.id, "failed")
    applying = drive(queue, propose(queue, fact_id="darrieux-2", new_object="a").item.id, "applying")
    newer = propose(queue, new_object="French", fact_version=2)
    assert newer.superseded == [old.id] and not newer.merged
    superseded = queue.get(old.id)
    assert (superseded.state, superseded.superseded_by) == ("superseded", newer.item.id)
    assert "newer object 'French'" in queue.show(old.id).events[-1].why
    assert queue.get(failed.id).state == "failed" and queue.get(applying.id).state == "applying"


def test_a_new_proposal_replaces_a_failed_one_and_waits_for_an_applying_one(queue):
    failed = drive(queue, propose(queue, new_object="A").item.id, "failed")
    retry = propose(queue, new_object="A", fact_version=2)
    assert not retry.merged and retry.superseded == [failed.id]
    drive(queue, retry.item.id, "applying")
    later = propose(queue, new_object="B", fact_version=3)
    assert later.superseded == [] and queue.get(retry.item.id).state == "applying"


def test_a_proposal_from_an_older_fact_version_is_refused(queue):
    propose(queue, new_object="French", fact_version=3)
    with pytest.raises(StaleProposal, match="version 2.*already proposes version 3"):
        propose(queue, new_object="German", fact_version=2)
    assert [item.new_object for item in queue.list()] == ["French"]


@pytest.mark.parametrize("from_state, to_state", LEGAL)
def test_every_legal_transition_is_recorded(queue, from_state, to_state):
    item = drive(queue, propose(queue).item.id, from_state)
    moved = queue.transition(item.id, to_state, who="grace", why="because")
    assert moved.state == to_state
    last = queue.show(item.id).events[-1]
    assert (last.kind, last.from_state, last.to_state, last.who, last.why) == (
        "transition", from_state, to_state, "grace", "because")
    assert last.at


@pytest.mark.parametrize("from_state, to_state", ILLEGAL)
def test_every_illegal_transition_is_refused(queue, from_state, to_state):
    item = drive(queue, propose(queue).item.id, from_state)
    events = len(queue.show(item.id).events)
    with pytest.raises(IllegalTransition, match=f"item {item.id} is {from_state}; it cannot become {to_state}"):
        queue.transition(item.id, to_state, who="grace", why="because")
    assert queue.get(item.id).state == from_state and len(queue.show(item.id).events) == events


def test_an_unknown_state_or_item_is_refused(queue):
    item = propose(queue).item
    with pytest.raises(IllegalTransition, match="unknown state 'done'"):
        queue.transition(item.id, "done", who="grace", why="x")
    with pytest.raises(ItemNotFound, match="no queue item 99"):
        queue.approve(99, who="grace")
    with pytest.raises(InvalidFact, match="unknown state"):
        queue.list(state="done")


def test_reject_and_retract_need_a_reason_and_a_who(queue):
    item = propose(queue).item
    with pytest.raises(InvalidFact, match="'why' is empty"):
        queue.reject(item.id, who="grace", why=" ")
    with pytest.raises(InvalidFact, match="'who' is empty"):
        queue.reject(item.id, who="", why="wrong")
    assert queue.reject(item.id, who="grace", why="the source is a tabloid").state == "rejected"


def test_the_scheduler_methods(queue):
    a, b = propose(queue, fact_id="a").item, propose(queue, fact_id="b").item
    queue.approve(a.id, who="grace")
    with pytest.raises(IllegalTransition, match=f"item {b.id} is proposed"):
        queue.start_applying([a.id, b.id])                 # b is not approved: neither moves
    assert queue.get(a.id).state == "approved"
    queue.approve(b.id, who="grace")
    assert [item.state for item in queue.start_applying([a.id, b.id])] == ["applying", "applying"]
    applied = queue.mark_applied(a.id, edit_id=17)
    assert (applied.state, applied.edit_id) == ("applied", 17)
    failed = queue.mark_failed(b.id, why="the L1 guard refused the batch")
    assert failed.state == "failed" and queue.show(b.id).events[-1].why == "the L1 guard refused the batch"
    retracted = queue.retract(a.id, who="grace", why="the source was wrong")
    assert (retracted.state, retracted.edit_id) == ("retracted", 17)


def test_applying_a_newer_object_supersedes_the_applied_item(queue):
    old = drive(queue, propose(queue, new_object="English").item.id, "applied")
    new = propose(queue, new_object="French", fact_version=2).item
    assert queue.get(old.id).state == "applied"           # only pending items are superseded on proposal
    drive(queue, new.id, "applying")
    queue.mark_applied(new.id, edit_id=5)
    replaced = queue.get(old.id)
    assert (replaced.state, replaced.superseded_by) == ("superseded", new.id)
    assert queue.show(old.id).events[-1].why == f"edit 5 (item {new.id}) replaced it"


def test_list_filters_and_counts(queue):
    for name in ("a", "b", "c"):
        propose(queue, fact_id=name)
    queue.approve(2, who="grace")
    assert [item.id for item in queue.list()] == [1, 2, 3]
    assert [item.id for item in queue.list(state="approved")] == [2]
    assert [item.id for item in queue.list(fact_id="c")] == [3]
    assert [item.id for item in queue.list(limit=2)] == [2, 3]
    assert queue.counts()["proposed"] == 2 and queue.counts()["approved"] == 1


@pytest.mark.parametrize("change, message", [
    ({"origin": "email"}, "origin 'email' is unknown"),
    ({"prompt": "Somebody speaks"}, "does not occur in prompt"),
    ({"new_object": ""}, "'new_object' is empty"),
    ({"evidence": {"when": object()}}, "cannot be stored as JSON"),
    ({"evidence": {"score": float("nan")}}, "cannot be stored as JSON"),
    ({"evidence": ["not", "a", "mapping"]}, "evidence must be a mapping"),
])
def test_bad_proposals_are_refused(queue, change, message):
    with pytest.raises(InvalidFact, match=message):
        propose(queue, **change)
    assert queue.list() == []


def test_propose_a_curated_fact(queue):
    fact = CuratedFact(id="eiffel", subject="the Eiffel Tower", prompt="{} is in", object="Paris",
                       question="Where is the Eiffel Tower?", version=4)
    item = queue.propose_fact(fact, origin="curator", who="grace", why="new source").item
    assert (item.fact_id, item.fact_version, item.new_object, item.question) == ("eiffel", 4, "Paris",
                                                                                "Where is the Eiffel Tower?")
    assert queue.show(item.id).events[0].why == "new source"


def test_the_queue_lives_in_livedit_home(home):
    with EditQueue.open(load_config()) as queue:
        propose(queue)
    assert (home / "queue.sqlite").exists()
    with EditQueue.open(load_config()) as reopened:
        assert [item.new_object for item in reopened.list()] == ["French"]
        assert applied_migrations(reopened.conn) == ["0001_edit_queue", "0002_guard_decisions"]
