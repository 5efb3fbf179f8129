"""The gate on an edited layer's change: kept where large against the unedited output,
dropped elsewhere, and gone after its block."""

import pytest
import torch

from assistant.editing.gate import EditColumns, change_ratio, edit_gate_change, gate_change, gated


def test_change_ratio_and_gate_on_hand_made_outputs():
    base = torch.tensor([[3.0, 4.0], [3.0, 4.0]])                  # norm 5
    edited = base + torch.tensor([[0.5, 0.0], [0.0, 5.0]])         # changes of 0.1 and 1.0 of it
    assert change_ratio(base, edited).tolist() == pytest.approx([0.1, 1.0])
    gated_out = gate_change(base, edited, threshold=0.5)
    assert torch.equal(gated_out[0], base[0]) and torch.equal(gated_out[1], edited[1])
    assert torch.equal(gate_change(base, edited, threshold=0.05), edited)
    assert torch.equal(gate_change(base, edited, threshold=2.0), base)


def test_gated_layer_keeps_the_edited_key_and_answers_others_unedited():
    torch.manual_seed(0)
    layer = torch.nn.Linear(4, 3)
    with torch.no_grad():
        layer.bias.fill_(1.0)                                       # an unedited output of norm about 1.7
    W0 = layer.weight.detach().clone()
    edited_key = torch.tensor([1.0, 0.0, 0.0, 0.0])
    change = torch.outer(torch.tensor([2.0, -1.0, 3.0]), edited_key) + 0.01 * torch.randn(3, 4)
    with torch.no_grad():
        layer.weight.add_(change)
    other_key = torch.tensor([0.0, 1.0, -1.0, 0.5])
    keys = torch.stack([edited_key, other_key]).unsqueeze(0)       # (1, 2, 4): two tokens
    ungated = layer(keys)
    unedited = keys @ W0.T + layer.bias
    ratios: dict[int, list[float]] = {}
    with gated({7: layer}, {7: change}, threshold=0.5, ratios=ratios):
        out = layer(keys)
    assert torch.allclose(out[0, 0], ungated[0, 0])                 # the edited key keeps its change
    assert torch.allclose(out[0, 1], unedited[0, 1], atol=1e-6)     # the other answers as unedited
    assert not torch.allclose(ungated[0, 1], unedited[0, 1], atol=1e-6)
    assert list(ratios) == [7] and ratios[7][0] > 0.5
    assert torch.equal(layer(keys), ungated)                        # the hook is gone after the block


def test_the_gate_edit_by_edit_drops_spill_over_that_only_adds_up():
    """Eight edits each move an unrelated key by 0.1 of its output, together by 0.8: the gate on
    the sum passes it at 0.4, the gate edit by edit does not; an edited key keeps its own
    edit's term and drops the others' small ones."""
    d_in, n = 8, 8
    M = torch.eye(d_in)[:, :n]                                       # edit j reads coordinate j
    R = torch.zeros(3, n)
    R[0] = 1.0                                                       # every edit pushes output 0
    base = torch.tensor([[10.0, 0.0, 0.0], [10.0, 0.0, 0.0]])        # unedited outputs of norm 10
    unrelated = torch.full((d_in,), 1.0)                             # each edit's term: 1 = 0.1 of 10
    edited = torch.tensor([9.0] + [0.5] * (d_in - 1))                # edit 0: 0.9 of 10, the rest 0.05 each
    keys = torch.stack([unrelated, edited])
    whole = (keys @ M) @ R.T
    assert change_ratio(base, base + whole).tolist() == pytest.approx([0.8, 1.25])
    assert torch.equal(gate_change(base, base + whole, 0.4), base + whole)    # the sum passes both
    sizes: list[float] = []
    by_edit = edit_gate_change(keys, base, EditColumns(M, R), 0.4, sizes)
    assert by_edit[0].tolist() == [0.0, 0.0, 0.0]                     # no single edit is large there
    assert by_edit[1].tolist() == pytest.approx([9.0, 0.0, 0.0])     # only edit 0's own term
    assert sizes == [pytest.approx(0.9)]
    assert torch.allclose(edit_gate_change(keys, base, EditColumns(M, R), 0.0), whole)      # threshold 0: the whole change


def test_a_layer_gated_edit_by_edit_takes_the_change_out_and_puts_kept_terms_back():
    torch.manual_seed(0)
    layer = torch.nn.Linear(4, 3)
    with torch.no_grad():
        layer.bias.fill_(1.0)
    W0 = layer.weight.detach().clone()
    M = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 0.1], [0.0, 0.0]])    # two edits, reading k0 and k2
    R = torch.tensor([[2.0, 1.0], [-1.0, 1.0], [3.0, 1.0]])
    with torch.no_grad():
        layer.weight.add_(R @ M.T)
    keys = torch.tensor([[[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 1.0, 0.5]]])    # edit 0's key; a key edit 1 grazes
    unedited = keys @ W0.T + layer.bias
    sizes: dict[int, list[float]] = {}
    with gated({5: layer}, {5: EditColumns(M, R)}, threshold=0.5, ratios=sizes):
        out = layer(keys)
    assert torch.allclose(out[0, 0], unedited[0, 0] + R[:, 0])         # edit 0 kept in full
    assert torch.allclose(out[0, 1], unedited[0, 1], atol=1e-6)        # edit 1's small term dropped
    assert list(sizes) == [5] and sizes[5][0] > 0.5
    with gated({5: layer}, {5: EditColumns(M, R)}, threshold=0.0):
        assert torch.allclose(layer(keys), keys @ (W0 + R @ M.T).T + layer.bias, atol=1e-6)
    assert torch.allclose(layer(keys), keys @ (W0 + R @ M.T).T + layer.bias, atol=1e-6)   # hook gone


def logits(model, tokenizer, text: str) -> torch.Tensor:
    with torch.no_grad():
        return model(**tokenizer(text, return_tensors="pt")).logits


def chat_facts(new_fact, count: int, start: int = 0):
    return [new_fact(i, question=f"Where is {new_fact(i).subject}?") for i in range(start, start + count)]


@pytest.mark.parametrize("model,gate_by", [("llama", "sum"), ("gpt2", "sum"), ("llama", "edit"), ("gpt2", "edit")])
def test_the_editor_serves_and_solves_chat_edits_through_the_gate(model, gate_by, open_engine, make_config, new_fact,
                                                                   tokenizer):
    """A gate no change can pass serves the unedited model's answers from chat-edited weights,
    on the served model and the shadow; plain weights are refused; closing removes the gate."""
    from assistant.editing.editor import Editor
    from assistant.errors import ConfigError
    from assistant.model.loading import load_model
    from assistant.state.patch import patch_from_editor

    pristine = load_model(make_config(model)).model
    editor = open_engine(model, gate=1e9, gate_by=gate_by)
    asked = chat_facts(new_fact, 2)
    editor.apply(asked)
    text = asked[0].prompt.format(asked[0].subject)
    assert any(not W.equal(editor.W0[layer]) for layer, W in editor.current_weights().items())
    assert torch.allclose(logits(editor.model, tokenizer, text), logits(pristine, tokenizer, text), atol=1e-5)
    assert torch.allclose(logits(editor.shadow, tokenizer, text), logits(pristine, tokenizer, text), atol=1e-5)
    with pytest.raises(ConfigError, match="gate"):
        editor.export(editor.sums_dir.parent / "exported")
    with pytest.raises(ConfigError, match="gate"):
        patch_from_editor(editor)
    editor.close()
    assert not torch.allclose(logits(editor.model, tokenizer, text), logits(pristine, tokenizer, text), atol=1e-5)
    ungated = Editor.open(make_config(model, gate=0.0), state_dir=editor.sums_dir.parent, progress=False)
    try:
        assert torch.equal(logits(ungated.model, tokenizer, text), logits(editor.model, tokenizer, text))
    finally:
        ungated.close()


def served_without_chat_edits(editor, pristine):
    """``pristine`` with each edited layer at W0 + the cloze edits' part of the change."""
    from assistant.model.architectures import get_module, stored_weight

    for layer in editor.layers:
        prior, lam = editor.prior(layer), editor.editing.mom2_weight
        cloze = editor.sums.offset(layer, prior, lam) - editor.sums.gated_offset(layer, prior, lam)
        parameter = get_module(pristine, editor.names[layer]).weight
        with torch.no_grad():
            parameter.copy_(stored_weight((editor.W0[layer].double() + cloze).float(), editor.arch.weight_transposed))
    return pristine


@pytest.mark.parametrize("gate_by", ["sum", "edit"])
def test_only_the_chat_edits_change_is_gated(gate_by, open_engine, make_config, new_fact, tokenizer, inspect):
    """Behind a gate no change can pass, a state of chat and cloze edits answers as the weights
    with the cloze edits' change alone, on the served model and the shadow, after a retraction
    too; the gated share holds exactly the active chat edits' columns."""
    from assistant.model.loading import load_model

    editor = open_engine("llama", gate=1e9, gate_by=gate_by)
    asked, cloze = chat_facts(new_fact, 2), [new_fact(5), new_fact(6)]
    ids = editor.apply(asked + cloze, batch_size=4).edit_ids
    pristine = load_model(make_config("llama")).model
    text = cloze[0].prompt.format(cloze[0].subject)
    assert not torch.allclose(logits(editor.model, tokenizer, text), logits(pristine, tokenizer, text), atol=1e-4), \
        "the cloze edits' change is served"
    expected = logits(served_without_chat_edits(editor, pristine), tokenizer, text)
    for model in (editor.model, editor.shadow):
        assert torch.allclose(logits(model, tokenizer, text), expected, atol=1e-5)
    editor.retract(ids[0])
    assert_gated_share_holds_the_chat_edits(editor, inspect)
    assert torch.allclose(logits(editor.model, tokenizer, text),
                          logits(served_without_chat_edits(editor, pristine), tokenizer, text), atol=1e-5)


def assert_gated_share_holds_the_chat_edits(editor, inspect) -> None:
    assert any(e.fact.question for e in editor.edits("active")), "the state holds an active chat edit"
    expected = inspect.sums_of_active_edits(editor)
    for layer in editor.layers:
        assert editor.sums.tensors[f"G.{layer}"].any()
        assert inspect.relative_error(editor.sums.tensors[f"G.{layer}"], expected[f"G.{layer}"]) < 1e-9
        for name in (f"GK.{layer}", f"GR.{layer}"):
            assert torch.equal(editor.sums.tensors[name], expected[name])


def test_an_older_state_gets_its_gated_share_from_the_ledger(open_engine, make_config, new_fact, inspect, tmp_path):
    """A state written before the gated share was kept opens with G and its columns rebuilt
    from its active chat edits, and serves as it did."""
    from assistant.state.sums import read_generation, write_generation

    folder = tmp_path / "state"
    editor = open_engine("llama", state_dir=folder, gate=0.4)
    editor.apply(chat_facts(new_fact, 2) + [new_fact(5)], batch_size=3)
    served, shares = editor.current_weights(), dict(editor.sums.tensors)
    name = next(editor.sums_dir.glob("gen-*.safetensors")).name
    editor.close()
    older = read_generation(folder / "sums", name, "d4s")
    older.tensors = {key: value for key, value in older.tensors.items() if not key.startswith(("G.", "GK.", "GR."))}
    write_generation(folder / "sums", int(name[4:10]), older)       # the same file, without G, GK, GR
    reopened = open_engine("llama", state_dir=folder, gate=0.4)
    assert all(f"G.{layer}" in reopened.sums.tensors for layer in reopened.layers)
    for layer in reopened.layers:
        assert inspect.relative_error(reopened.sums.tensors[f"G.{layer}"], shares[f"G.{layer}"]) < 1e-9
        assert torch.equal(reopened.current_weights()[layer], served[layer])
    assert_gated_share_holds_the_chat_edits(reopened, inspect)
