"""The guard's default bounds on the real default model: a normal batch of corrections is
committed, and a harmful one (edits of the commonest words, whose keys are close to nearly
every input) is split down to its single facts and every one of them is rejected, with the
figures on the queue items. See benchmarks/guard_bounds.py for the measurements behind the
bounds."""

from __future__ import annotations

import pytest
from test_updater_end_to_end import updater_home  # noqa: F401

from assistant.config import load_config
from assistant.editing.editor import Editor
from assistant.evaluation.datasets import load_edit_facts
from assistant.facts import make_fact
from updater.apply import apply_approved
from updater.guard import Guard
from updater.queue import EditQueue

pytestmark = pytest.mark.integration


def approve(queue, facts) -> list[int]:
    ids = []
    for fact in facts:
        item = queue.propose(fact_id=fact.id, subject=fact.subject, prompt=fact.prompt, new_object=fact.target_new,
                             question=fact.question, origin="curator", who="test").item
        ids.append(queue.approve(item.id, who="test").id)
    return ids


def test_default_bounds_commit_a_normal_batch_and_stop_a_harmful_one(updater_home, real_shared_data):
    config = load_config()
    normal = load_edit_facts(real_shared_data, "counterfact", 100, 8)       # not a slice the bounds were set on
    harmful = [make_fact(id=f"harm-{word}", subject=word, prompt="{} answer is", target_new="banana")
               for word in ("the", "is")]
    with Editor.open(config, progress=False) as editor, EditQueue.open(config) as queue:
        guard = Guard.for_editor(editor, config)
        good = approve(queue, normal)
        outcome = apply_approved(editor, queue, batch_size=8, guard=guard)
        assert sorted(outcome.applied) == good and outcome.rejected == {}, queue.decisions()[0].reason
        bad = approve(queue, harmful)
        outcome = apply_approved(editor, queue, batch_size=8, guard=guard)
        assert outcome.applied == {} and sorted(outcome.rejected) == bad
        assert editor.generation == 1 and len(editor.edits("active")) == len(normal)
        for item_id in bad:
            why = queue.show(item_id).events[-1].why
            assert why.startswith("rejected by the guard: ") and "agreement" in why
        decisions = queue.decisions()
        print("\nGUARD", [(d.outcome, len(d.item_ids), round(d.figures["agreement"], 3), round(d.figures["kl"], 3),
                           round(d.figures["max_l1_growth"], 4)) for d in reversed(decisions)])
