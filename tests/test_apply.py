"""The apply step on the tiny random Llama: approved items become engine edits, a raising
batch fails its items and changes nothing, and `livedit detect` / `livedit apply` work
end to end on the tiny model."""

from __future__ import annotations

from dataclasses import replace

import pytest
from updater_fixtures import FACTS, embedding_function, home, open_store, store  # noqa: F401

from livedit.cli import main
from tests.conftest import write_config_toml
from assistant.config import load_config
from updater.apply import apply_approved, plan_batches
from updater.queue import EditQueue

WHO = "ada"


@pytest.fixture
def queue(home):
    with EditQueue.open(load_config()) as opened:
        yield opened


def approve(queue, facts) -> list[int]:
    """Propose and approve each engine fact as a curator would; the item ids, oldest first."""
    ids = []
    for fact in facts:
        item = queue.propose(fact_id=fact.id, subject=fact.subject, prompt=fact.prompt, new_object=fact.target_new,
                             origin="curator", who=WHO).item
        ids.append(queue.approve(item.id, who=WHO).id)
    return ids


def assert_applied(editor, queue, item_id: int, edit_id: int) -> None:
    item = queue.get(item_id)
    assert item.state == "applied" and item.edit_id == edit_id
    record = editor.edit(edit_id)
    assert record.status == "active" and record.fact.id == item.fact_id
    assert record.fact.target_new == item.new_object
    assert editor.active_edit(item.fact_id).id == edit_id


def test_approved_items_are_applied_with_their_engine_edit_ids(open_engine, queue, new_fact):
    editor = open_engine("llama")
    ids = approve(queue, [new_fact(i) for i in range(3)])
    waiting = queue.propose(fact_id="fact-9", subject="Paris", prompt="Paris is in", new_object="Spain",
                            origin="curator", who=WHO).item
    seen = []
    outcome = apply_approved(editor, queue, batch_size=2, who="test", progress=lambda d, t: seen.append((d, t)))
    assert list(outcome.applied) == ids and outcome.failed == {} and not outcome.stopped
    for item_id, edit_id in outcome.applied.items():
        assert_applied(editor, queue, item_id, edit_id)
    assert seen == [(2, 3), (3, 3)] and editor.generation == 2
    assert queue.get(waiting.id).state == "proposed"
    events = queue.show(ids[0]).events
    assert [(e.to_state, e.who) for e in events][-2:] == [("applying", "test"), ("applied", "test")]


def test_a_raising_batch_fails_its_items_and_applies_nothing(open_engine, queue, new_fact, inspect):
    editor = open_engine("llama")
    ids = approve(queue, [new_fact(i) for i in range(4)])
    original, before = editor._solver.edit_batch, {}

    def fails_on_the_second_batch(facts, sums, layers, weights):
        if any(fact.id == "fact-2" for fact in facts):
            before["snapshot"] = inspect.snapshot(editor)
            original(facts, sums, layers, weights)         # the math runs, then the batch raises
            raise OSError("disk full\nwhile writing")
        return original(facts, sums, layers, weights)

    editor._solver.edit_batch = fails_on_the_second_batch
    outcome = apply_approved(editor, queue, batch_size=2)
    assert list(outcome.applied) == ids[:2] and list(outcome.failed) == ids[2:]
    inspect.assert_unchanged(editor, before["snapshot"])
    for item_id in ids[2:]:
        item = queue.get(item_id)
        assert item.state == "failed" and item.edit_id is None
        assert queue.show(item_id).events[-1].why == "the batch failed: OSError: disk full while writing"
        assert editor.active_edit(item.fact_id) is None

    del editor._solver.edit_batch                        # the engine's own method again
    for item_id in ids[2:]:
        queue.approve(item_id, who=WHO, why="try again")
    retried = apply_approved(editor, queue, batch_size=2)
    assert list(retried.applied) == ids[2:] and retried.failed == {}
    for item_id, edit_id in retried.applied.items():
        assert_applied(editor, queue, item_id, edit_id)


def test_a_bug_while_applying_surfaces_and_loses_no_item(open_engine, queue, new_fact, inspect):
    editor = open_engine("llama")
    ids = approve(queue, [new_fact(0), new_fact(1)])
    snapshot = inspect.snapshot(editor)

    def buggy(facts, sums, layers, weights):
        raise TypeError("unsupported operand type(s) for +: 'int' and 'str'")

    editor._solver.edit_batch = buggy
    with pytest.raises(TypeError, match="unsupported operand"):
        apply_approved(editor, queue, batch_size=2)
    inspect.assert_unchanged(editor, snapshot)
    for item_id in ids:
        assert queue.get(item_id).state == "approved"
        assert "TypeError in livedit (a bug)" in queue.show(item_id).events[-1].why
    del editor._solver.edit_batch
    assert sorted(apply_approved(editor, queue, batch_size=2).applied) == ids


def test_an_item_the_engine_cannot_take_fails_alone(open_engine, queue, new_fact):
    editor = open_engine("llama", max_prompt_tokens=40)
    long_prompt = "Paris " + "and so on " * 30 + "is in"
    ids = approve(queue, [new_fact(0), new_fact(1, subject="Paris", id="long")])
    queue.reject(ids[1], who=WHO, why="replace with a long one")
    long_item = queue.propose(fact_id="long", subject="Paris", prompt=long_prompt, new_object="Spain",
                              origin="curator", who=WHO).item
    queue.approve(long_item.id, who=WHO)
    outcome = apply_approved(editor, queue)
    assert list(outcome.applied) == [ids[0]] and list(outcome.failed) == [long_item.id]
    assert outcome.failed[long_item.id].startswith("cannot be edited: fact long: a prompt form has")
    assert queue.get(long_item.id).state == "failed"


def test_an_object_the_model_already_holds_is_marked_applied_with_that_edit(open_engine, queue, new_fact):
    editor = open_engine("llama")
    edit_id = editor.apply([new_fact(0)]).edit_ids[0]
    generation = editor.generation
    ids = approve(queue, [new_fact(0)])
    assert apply_approved(editor, queue).applied == {ids[0]: edit_id}
    assert_applied(editor, queue, ids[0], edit_id)
    assert editor.generation == generation


def test_items_left_applying_by_a_crash_are_settled(open_engine, queue, new_fact):
    editor = open_engine("llama")
    facts = [new_fact(0), new_fact(1)]
    ids = approve(queue, facts)
    queue.start_applying(ids)
    committed = editor.apply(facts[:1]).edit_ids[0]          # the process died after this commit
    outcome = apply_approved(editor, queue)
    assert outcome.settled == {ids[0]: "applied", ids[1]: "approved"}
    assert_applied(editor, queue, ids[0], committed)
    assert list(outcome.applied) == [ids[1]]                 # approved again, then applied by this run
    assert_applied(editor, queue, ids[1], outcome.applied[ids[1]])
    states = [e.to_state for e in queue.show(ids[1]).events]
    assert states[-3:] == ["approved", "applying", "applied"]


def test_plan_batches_keeps_a_facts_items_in_order_and_apart(queue, new_fact):
    ids = approve(queue, [new_fact(i) for i in range(3)])
    items = [queue.get(i) for i in ids]
    twin = replace(items[0], id=99)
    batches = plan_batches(items + [twin], 2)
    assert [[item.id for item in batch] for batch in batches] == [ids[:2], [ids[2], 99]]
    assert [[item.id for item in batch] for batch in plan_batches([items[0], twin, items[1]], 5)] == \
        [[ids[0], ids[1]], [99]]


def test_detect_approve_and_apply_through_the_cli(store, queue, make_config, tmp_path, capsys):
    store.import_records([(f"record {i}", record) for i, record in enumerate(FACTS)], who=WHO)
    config = write_config_toml(tmp_path / "tiny.toml", make_config("llama"))
    assert main(["-q", "--config", config, "detect", "--limit", "2"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[-1] == "checked 2 of 2 due fact(s): 2 outdated, 0 current; 2 queued, 0 already in the queue"
    assert main(["-q", "--config", config, "detect"]) == 0
    assert "checked 3 of 3 due fact(s): 3 outdated" in capsys.readouterr().out
    ids = [item.id for item in queue.list(state="proposed")]
    assert len(ids) == 5
    assert main(["-q", "--config", config, "queue", "approve", *map(str, ids)]) == 0
    guard_off = ["--set", "guard.enabled=false"]            # the guard's figures are tested in test_guard
    assert main(["-q", "--config", config, *guard_off, "apply", "--limit", "4", "--who", "grace"]) == 0
    out = capsys.readouterr().out
    assert "applied 4 item(s), 0 failed, 0 rejected by the guard; L1 growth layer 1 " in out
    assert [item.state for item in queue.list()] == ["applied"] * 4 + ["approved"]
    assert queue.show(ids[0]).events[-1].who == "grace"
    assert main(["-q", "--config", config, "detect", "--all"]) == 0
    assert "checked 5 of 5 due fact(s)" in capsys.readouterr().out
