"""The gate on an edited layer's change: kept where large against the unedited output,
dropped elsewhere, and gone after its block."""

import pytest
import torch

from assistant.editing.gate import change_ratio, gate_change, gated


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


def logits(model, tokenizer, text: str) -> torch.Tensor:
    with torch.no_grad():
        return model(**tokenizer(text, return_tensors="pt")).logits


@pytest.mark.parametrize("model", ["llama", "gpt2"])
def test_the_editor_serves_and_solves_through_the_gate(model, open_engine, make_config, facts, tokenizer):
    """A gate no change can pass serves the unedited model's answers from edited weights, on
    the served model and the shadow; plain weights are refused; closing removes the gate."""
    from assistant.editing.editor import Editor
    from assistant.errors import ConfigError
    from assistant.model.loading import load_model
    from assistant.state.patch import patch_from_editor

    pristine = load_model(make_config(model)).model
    editor = open_engine(model, gate=1e9)
    editor.apply(facts[:2])
    text = facts[0].prompt.format(facts[0].subject)
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
