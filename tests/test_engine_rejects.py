"""Every bad input is rejected and leaves the served weights, the ledger and the sums as they were."""

import json
import re
import sqlite3

import pytest
import torch

import assistant.editing.batch_solve
from assistant.errors import ConfigError, EditRejected, InvalidFact
from assistant.facts import load_facts, make_fact
from assistant.model.loading import load_model

GOOD_RECORD = {"id": "good", "subject": "Berlin", "prompt": "Berlin is located in", "target_new": "Japan"}
BAD_RECORDS = {
    "subject not in prompt": {"id": "bad", "subject": "Tokyo", "prompt": "Berlin is located in", "target_new": "Rome"},
    "empty target": {"id": "bad", "subject": "Tokyo", "prompt": "Tokyo is located in", "target_new": ""},
    "unknown field": {"id": "bad", "subject": "Tokyo", "prompt": "Tokyo is located in", "target_new": "Rome",
                      "confidence": 0.9},
}


@pytest.fixture
def editor(open_engine, new_fact):
    """An editor that already holds one committed edit."""
    editor = open_engine()
    editor.apply([new_fact(0)])
    return editor


@pytest.mark.parametrize("problem", sorted(BAD_RECORDS))
def test_bad_record_in_a_file_is_rejected_before_editing(problem, editor, inspect, tmp_path):
    path = tmp_path / "facts.jsonl"
    path.write_text(json.dumps(GOOD_RECORD) + "\n" + json.dumps(BAD_RECORDS[problem]) + "\n", encoding="utf-8")
    before = inspect.snapshot(editor)
    with pytest.raises(InvalidFact) as error:
        editor.apply(load_facts(path))
    assert f"{path} line 2" in str(error.value)
    inspect.assert_unchanged(editor, before)


def test_file_that_is_not_utf8_is_rejected_before_editing(editor, inspect, tmp_path):
    path = tmp_path / "facts.jsonl"
    path.write_bytes(b"\xff\xfe" + json.dumps(GOOD_RECORD).encode("utf-16-le"))
    before = inspect.snapshot(editor)
    with pytest.raises(InvalidFact) as error:
        editor.apply(load_facts(path))
    assert str(path) in str(error.value) and "not UTF-8" in str(error.value)
    inspect.assert_unchanged(editor, before)


def test_prompt_longer_than_the_context_is_rejected(editor, new_fact, inspect):
    long = make_fact(id="too-long", subject="Paris", prompt="Paris" + " the" * 140 + " is in", target_new="Japan")
    before = inspect.snapshot(editor)
    with pytest.raises(InvalidFact) as error:
        editor.apply([new_fact(1), long])                # the good fact is not applied either
    assert "too-long" in str(error.value) and "128" in str(error.value)
    inspect.assert_unchanged(editor, before)


def test_configured_prompt_limit_is_enforced(open_engine, new_fact, inspect):
    editor = open_engine(max_prompt_tokens=4)
    before = inspect.snapshot(editor)
    with pytest.raises(InvalidFact, match="fact-2.*accepts 4"):
        editor.apply([new_fact(2)])
    inspect.assert_unchanged(editor, before)


def test_chat_form_with_system_prompt_counts_against_the_context(make_config, open_engine, chat_tokenizer,
                                                                 new_fact, inspect):
    """The chat form the editor trains on includes the system prompt; the length check must too."""
    config = make_config().replace("chat", system_prompt="Please answer briefly. " * 40)
    loaded = load_model(config)
    loaded.tokenizer = chat_tokenizer
    editor = open_engine(config=config, loaded=loaded)
    fact = new_fact(3, id="asked", question=f"Where is {new_fact(3).subject}?")
    before = inspect.snapshot(editor)
    with pytest.raises(InvalidFact, match="asked"):
        editor.apply([fact])
    inspect.assert_unchanged(editor, before)


def nan_targets(monkeypatch, which):
    """Make optimise_targets return NaN deltas for the facts at the indices in ``which``."""
    real = assistant.editing.batch_solve.optimise_targets

    def poisoned(*args, **kwargs):
        targets = real(*args, **kwargs)
        targets.delta[list(which)] = float("nan")
        return targets
    monkeypatch.setattr(assistant.editing.batch_solve, "optimise_targets", poisoned)


def test_nan_target_rejects_the_batch(editor, new_fact, inspect, monkeypatch):
    nan_targets(monkeypatch, [1])
    before = inspect.snapshot(editor)
    with pytest.raises(InvalidFact) as error:
        editor.apply([new_fact(1), new_fact(2)])
    assert "fact-2" in str(error.value) and "fact-1" not in str(error.value)
    inspect.assert_unchanged(editor, before)


def test_nan_target_while_superseding_keeps_the_old_edit(editor, new_fact, inspect, monkeypatch):
    nan_targets(monkeypatch, [0])
    (old,) = [e.id for e in editor.edits("active")]
    before = inspect.snapshot(editor)
    with pytest.raises(InvalidFact, match="fact-0"):
        editor.apply([new_fact(0, target="Rome")])
    inspect.assert_unchanged(editor, before)          # includes the shadow, which held W0 meanwhile
    assert editor.active_edit("fact-0").id == old


def test_non_finite_weights_are_rejected(editor, new_fact, inspect, monkeypatch):
    monkeypatch.setattr(assistant.editing.batch_solve, "spread_residual",
                        lambda z, h, left: torch.full_like(z, float("inf")))
    before = inspect.snapshot(editor)
    with pytest.raises(EditRejected, match="non-finite"):
        editor.apply([new_fact(1)])
    inspect.assert_unchanged(editor, before)


def test_failed_ledger_transaction_commits_nothing(editor, new_fact, inspect, monkeypatch):
    def broken(*args, **kwargs):
        raise sqlite3.OperationalError("disk I/O error")
    monkeypatch.setattr(editor._ledger, "record_generation", broken)
    before = inspect.snapshot(editor)
    with pytest.raises(sqlite3.OperationalError):
        editor.apply([new_fact(1)])
    with pytest.raises(sqlite3.OperationalError):
        editor.retract(editor.edits("active")[0].id)
    inspect.assert_unchanged(editor, before)
    monkeypatch.undo()
    assert len(editor.apply([new_fact(1)]).edit_ids) == 1        # and the engine still works afterwards


@pytest.mark.parametrize("editing,named", [
    ({"layers": [2, 4]}, "layers [2, 4]: this model has layers 0 to 3"),
    ({"layers": [2, 3]}, "layers [2, 3]: layer 3 is this model's last block"),
    ({"chat_layers": [2, 3]}, "chat_layers [2, 3]: layer 3 is this model's last block"),
])
def test_edited_layers_must_lie_below_the_models_last_block(open_engine, editing, named):
    with pytest.raises(ConfigError, match=re.escape(named)):
        open_engine("llama", **editing)
