"""The baselines: sequential MEMIT and one-batch MEMIT, and how a state keeps its method."""

import pytest
import torch

from assistant.editing.closed_form import memit_delta
from assistant.errors import EditRejected, StateError
from assistant.state.l1 import layer_norms
from assistant.model.loading import load_model
from assistant.state.sums import edited_weight


def memit_delta_from_ledger(editor, edit_ids, layer):
    vectors = [editor.vectors(i)[layer] for i in edit_ids]
    K = torch.cat([k for k, _ in vectors], dim=1)                # (d_in, columns)
    R = torch.cat([r for _, r in vectors], dim=1)                # (d_out, columns)
    return memit_delta(K, R, editor.C[layer], editor.editing.mom2_weight)


def test_memit_seq_stacks_one_delta_per_batch(open_engine, new_fact, inspect):
    editor = open_engine(method="memit-seq", batch_size=1)
    assert editor.method == "memit-seq" and set(editor.sums.tensors) == {"delta.1", "delta.2", "G.1", "G.2"}
    first = editor.apply([new_fact(0)])
    norms_after_first = editor.norms()
    second = editor.apply([new_fact(1), new_fact(2)])          # batch_size 1: two more generations

    assert editor.generation == 3
    ids = first.edit_ids + second.edit_ids
    assert [e.id for e in editor.edits("active")] == ids
    assert [editor.edit(i).generation for i in ids] == [1, 2, 3]
    assert {e.method for e in editor.edits()} == {"memit-seq"}
    for layer in editor.layers:
        stacked = sum(memit_delta_from_ledger(editor, [i], layer) for i in ids)
        assert inspect.relative_error(editor.sums.tensors[f"delta.{layer}"], stacked) < 1e-8
        assert torch.equal(editor.current_weights()[layer],
                           edited_weight(editor.W0[layer], editor.sums.tensors[f"delta.{layer}"]))

    history = editor.l1_history()
    assert [(row["generation"], row["layer"]) for row in history] == [(g, l) for g in (1, 2, 3) for l in (1, 2)]
    assert [row["active_edits"] for row in history] == [1, 1, 2, 2, 3, 3]
    for rows, norms in ((history[:2], norms_after_first), (history[-2:], editor.norms())):
        for row, expected in zip(rows, norms):
            assert row["mean_abs"] == pytest.approx(expected.mean_abs, rel=1e-12)
            assert row["growth"] == pytest.approx(expected.growth, rel=1e-9, abs=1e-15)
            assert row["mean_abs_delta"] == pytest.approx(expected.mean_abs_delta, rel=1e-9)
    assert all(row["mean_abs_delta"] > 0 for row in history)
    assert history[-1]["mean_abs_delta"] != history[1]["mean_abs_delta"]


def test_memit_seq_cannot_retract(open_engine, new_fact, inspect):
    editor = open_engine(method="memit-seq")
    (edit_id,) = editor.apply([new_fact(0)]).edit_ids
    before = inspect.snapshot(editor)
    with pytest.raises(EditRejected, match="memit-seq"):
        editor.retract(edit_id)
    inspect.assert_unchanged(editor, before)
    assert editor.edit(edit_id).status == "active"



def test_memit_seq_refuses_to_supersede_an_edit(open_engine, new_fact, inspect):
    editor = open_engine(method="memit-seq")
    (edit_id,) = editor.apply([new_fact(3, id="capital", target="Japan")]).edit_ids
    before = inspect.snapshot(editor)
    for batch in ([new_fact(3, id="capital", target="Rome")],
                  [new_fact(4), new_fact(3, id="capital", target="Rome")]):     # refused before any batch commits
        with pytest.raises(EditRejected) as error:
            editor.apply(batch, batch_size=1)
        message = str(error.value)
        assert f"fact capital already has edit {edit_id} ('Japan')" in message
        assert "memit-seq, which cannot take that edit out" in message and "d4s state" in message
        inspect.assert_unchanged(editor, before)
    with pytest.raises(EditRejected, match="cannot take that edit out"):
        editor.solve_candidate([new_fact(3, id="capital", target="Rome")])
    inspect.assert_unchanged(editor, before)
    assert [(e.id, e.status, e.fact.target_new) for e in editor.edits()] == [(edit_id, "active", "Japan")]

def test_memit_edits_all_facts_in_one_batch(open_engine, facts, inspect):
    editor = open_engine(method="memit", batch_size=1)          # memit ignores the batch size
    report = editor.apply(facts)
    assert editor.generation == 1
    assert [editor.edit(i).generation for i in report.edit_ids] == [1] * len(facts)
    for layer in editor.layers:
        expected = memit_delta_from_ledger(editor, report.edit_ids, layer)
        assert inspect.relative_error(editor.sums.tensors[f"delta.{layer}"], expected) < 1e-8
    rows = editor.l1_history()
    assert [(r["generation"], r["layer"], r["active_edits"]) for r in rows] == [(1, 1, 4), (1, 2, 4)]
    for row, norms in zip(rows, editor.norms()):
        assert row["growth"] == pytest.approx(layer_norms(norms.layer, editor.current_weights()[norms.layer],
                                                          editor.W0[norms.layer]).growth, rel=1e-9, abs=1e-15)


def test_one_batch_gives_the_same_weights_with_memit_and_d4s(open_engine, facts, livedit_dirs, inspect):
    d4s = open_engine(method="d4s", state_dir=livedit_dirs["state"] / "d4s")
    memit = open_engine(method="memit", state_dir=livedit_dirs["state"] / "memit")
    d4s.apply(facts)
    memit.apply(facts)
    for layer in d4s.layers:
        assert inspect.relative_error(d4s.current_weights()[layer], memit.current_weights()[layer]) < 1e-5


def test_a_state_keeps_its_method(open_engine, make_config, new_fact, livedit_dirs):
    d4s_state, seq_state = livedit_dirs["state"] / "d4s", livedit_dirs["state"] / "seq"
    open_engine(method="d4s", state_dir=d4s_state).apply([new_fact(0)])
    open_engine(method="memit-seq", state_dir=seq_state).apply([new_fact(0)])

    with pytest.raises(StateError, match="method") as error:
        open_engine(method="memit-seq", state_dir=d4s_state, loaded=load_model(make_config()))
    assert "'d4s'" in str(error.value) and "'memit-seq'" in str(error.value)
    with pytest.raises(StateError, match="method"):
        open_engine(method="d4s", state_dir=seq_state, loaded=load_model(make_config()))
    # without a method the stored one is used
    assert open_engine(state_dir=seq_state, method=None, loaded=load_model(make_config())).method == "memit-seq"
    assert open_engine(state_dir=d4s_state, method=None, loaded=load_model(make_config())).method == "d4s"
