"""Durable state: sums files, restart, and a crash's leftovers."""

import dataclasses

import pytest
import torch

from assistant.state.identity import state_dir_for
from assistant.state.ledger import Ledger
from assistant.errors import StateError
from assistant.model.loading import load_model
from assistant.state.sums import EditSums, read_generation, remove_other_generations, write_generation


def test_generation_files_round_trip_bit_for_bit(tmp_path):
    g = torch.Generator().manual_seed(0)
    sums = EditSums("d4s", {"S.1": torch.randn(4, 6, generator=g, dtype=torch.float64),
                            "T.1": torch.randn(6, 6, generator=g, dtype=torch.float64)})
    name = write_generation(tmp_path / "sums", 12, sums)
    assert name == "gen-000012.safetensors"
    assert sorted(p.name for p in (tmp_path / "sums").iterdir()) == [name]      # no temporary file left
    again = read_generation(tmp_path / "sums", name, "d4s")
    assert again.method == "d4s" and again.tensors.keys() == sums.tensors.keys()
    assert all(torch.equal(again.tensors[k], v) for k, v in sums.tensors.items())


def test_remove_other_generations_keeps_the_committed_file(tmp_path):
    for name in ["gen-000001.safetensors", "gen-000002.safetensors", ".gen-000003.safetensors.tmp", "notes.txt"]:
        (tmp_path / name).write_bytes(b"x")
    remove_other_generations(tmp_path, keep="gen-000002.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gen-000002.safetensors", "notes.txt"]
    remove_other_generations(tmp_path / "missing", keep=None)    # no folder yet: nothing to do


def test_state_dir_comes_from_the_environment(make_config, livedit_dirs, monkeypatch, tmp_path):
    config = make_config()
    assert state_dir_for(config) == livedit_dirs["state"]
    assert state_dir_for(config, tmp_path / "given") == tmp_path / "given"
    monkeypatch.delenv("LIVEDIT_STATE_DIR")
    assert state_dir_for(config) == livedit_dirs["home"] / "state"


@pytest.mark.parametrize("model", ["llama", "gpt2"])
def test_restart_rebuilds_identical_weights(model, open_engine, make_config, facts):
    editor = open_engine(model, batch_size=2)
    ids = editor.apply(facts).edit_ids
    superseding = dataclasses.replace(facts[1], target_new="Rome")
    assert editor.apply([superseding]).superseded == [ids[1]]
    editor.retract(ids[0])
    before = editor.current_weights()
    served_before = {k: v.clone() for k, v in editor.model.state_dict().items()}
    editor.close()

    restarted = open_engine(model, loaded=load_model(make_config(model)))
    assert restarted.method == "d4s"
    for layer in editor.layers:
        assert torch.equal(restarted.current_weights()[layer], before[layer])
        assert torch.equal(restarted.shadow_weights()[layer], before[layer])
        assert not torch.equal(restarted.W0[layer], before[layer])
        assert torch.equal(restarted.W0[layer], editor.W0[layer])
    for name, tensor in restarted.model.state_dict().items():
        assert torch.equal(tensor, served_before[name]), name
    assert all(torch.equal(restarted.sums.tensors[k], v) for k, v in editor.sums.tensors.items())
    assert [(e.id, e.status) for e in restarted.edits()] == [
        (1, "retracted"), (2, "superseded"), (3, "active"), (4, "active"), (5, "active")]
    assert [e.fact for e in restarted.edits()] == facts + [superseding]


def test_restart_drops_files_of_an_unrecorded_commit(open_engine, make_config, facts):
    editor = open_engine()
    editor.apply(facts[:2])
    before = editor.current_weights()
    committed = "gen-000001.safetensors"
    assert sorted(p.name for p in editor.sums_dir.iterdir()) == [committed]
    # a crash after the rename but before the ledger transaction, and one during the write
    garbage = editor.sums.copy()
    for tensor in garbage.tensors.values():
        tensor += 1.0
    write_generation(editor.sums_dir, 2, garbage)
    (editor.sums_dir / ".gen-000003.safetensors.tmp").write_bytes(b"partial")
    editor.close()

    restarted = open_engine(loaded=load_model(make_config()))
    assert sorted(p.name for p in restarted.sums_dir.iterdir()) == [committed]
    for layer in restarted.layers:
        assert torch.equal(restarted.current_weights()[layer], before[layer])
    assert restarted.generation == 1
    # the next commit reuses generation 2 cleanly
    restarted.apply([facts[2]])
    assert restarted.generation == 2
    assert sorted(p.name for p in restarted.sums_dir.iterdir()) == ["gen-000002.safetensors"]


def test_state_made_with_other_settings_is_refused(open_engine, facts):
    editor = open_engine()
    editor.apply(facts[:1])
    editor.close()
    with pytest.raises(StateError, match="layers"):
        open_engine(layers=[0, 2])
    with pytest.raises(StateError, match="mom2_weight"):
        open_engine(mom2_weight=20.0)
    with pytest.raises(StateError, match="method"):
        open_engine(method="memit-seq")
    with pytest.raises(StateError, match="chat_layers"):
        open_engine(chat_layers=[0, 1])


def test_layer_factors_are_part_of_the_identity_only_where_the_method_uses_lambda(open_engine, facts):
    """d4s refuses other factors on its edited layers; a factor for a layer no window edits,
    and any factor for a null-space method (solved with alpha), leave the state as it is."""
    editor = open_engine()
    editor.apply(facts[:1])
    editor.close()
    with pytest.raises(StateError, match="layer_mom2_factors = {}"):
        open_engine(layer_mom2_factors={1: 0.5})
    open_engine(layer_mom2_factors={5: 0.5}).close()          # conftest's windows edit layers 1 and 2
    null_space = open_engine(method="d4s-null", state_dir=editor.sums_dir.parent.parent / "null-space")
    null_space.apply(facts[:1])
    null_space.close()
    reopened = open_engine(method="d4s-null", state_dir=null_space.sums_dir.parent, layer_mom2_factors={1: 0.5})
    assert reopened.edits("active")[0].fact == facts[0]


def test_a_state_from_before_chat_layers_opens_as_one_window(open_engine, facts):
    editor = open_engine()
    editor.apply(facts[:1])
    editor.close()
    with Ledger.in_state(editor.sums_dir.parent) as ledger, ledger.conn:     # as written before the key existed
        ledger.conn.execute("DELETE FROM meta WHERE key = 'chat_layers'")
        assert "chat_layers" not in ledger.meta()
    assert open_engine().edits("active")[0].fact == facts[0]
    with pytest.raises(StateError, match="chat_layers = \\[\\]") as refused:
        open_engine(chat_layers=[0, 1])
    assert "or set [editing] chat_layers = [] in config.toml to keep using this state" in str(refused.value)


def test_a_state_from_before_chat_mom2_weight_keeps_its_one_lambda(open_engine, facts):
    editor = open_engine(mom2_weight=10.0, chat_mom2_weight=10.0)
    editor.apply(facts[:1])
    editor.close()
    with Ledger.in_state(editor.sums_dir.parent) as ledger, ledger.conn:     # as written before the key existed
        ledger.conn.execute("DELETE FROM meta WHERE key = 'chat_mom2_weight'")
    assert open_engine(mom2_weight=10.0, chat_mom2_weight=10.0).edits("active")[0].fact == facts[0]
    with pytest.raises(StateError, match="chat_mom2_weight = 10.0") as refused:
        open_engine(mom2_weight=10.0, chat_mom2_weight=3.0)
    assert "or set [editing] chat_mom2_weight = 10.0 in config.toml" in str(refused.value)
