"""Hooks live only inside their context managers, even when the forward pass raises."""

import pytest
import torch

from assistant.model.architectures import ARCHITECTURES, architecture_of, get_module, stored_weight, weight_matrix
from assistant.errors import ModelNotReady
from assistant.model.hooks import capture_inputs, capture_outputs, edit_output, stop_after


class Boom(RuntimeError):
    pass


class TupleBlock(torch.nn.Module):
    """Returns (hidden, extra) like a transformer block."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(3, 3)

    def forward(self, x):
        return self.linear(x), torch.ones(1)


class Exploding(torch.nn.Module):
    def forward(self, x):
        raise Boom("this layer must not run")


def no_hooks(model: torch.nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


class Forward(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.first = torch.nn.Linear(4, 3)
        self.block = TupleBlock()
        self.last = Exploding()

    def forward(self, x):
        hidden, _ = self.block(self.first(x))
        return self.last(hidden)


def test_capture_records_inputs_and_outputs_and_cleans_up():
    model = Forward()
    x = torch.randn(2, 5, 4)
    with capture_inputs({"block": model.block}) as inputs, capture_outputs({"block": model.block}) as outputs, \
            stop_after(model.block):
        model(x)
    first = model.first(x)
    assert torch.equal(inputs["block"], first)
    assert torch.equal(outputs["block"], model.block.linear(first))     # the tuple's first element
    assert no_hooks(model)


def test_stop_after_ends_the_pass_before_later_layers():
    model = Forward()
    with stop_after(model.block):
        model(torch.randn(1, 4))                 # Exploding never runs, StopForward is swallowed
    assert no_hooks(model)
    with pytest.raises(Boom):
        model(torch.randn(1, 4))


def test_edit_output_replaces_the_hidden_state_of_tuple_outputs():
    block = TupleBlock()
    x = torch.randn(2, 3)
    plain = block(x)[0]
    with edit_output(block, lambda h: 2 * h + 1):
        edited, extra = block(x)
    assert torch.allclose(edited, 2 * plain + 1)
    assert torch.equal(extra, torch.ones(1))
    linear = torch.nn.Linear(3, 3)
    with edit_output(linear, lambda h: h * 0):
        assert not linear(x).any()
    assert no_hooks(block) and no_hooks(linear)


@pytest.mark.parametrize("manager", ["inputs", "outputs", "edit", "stop"])
def test_hooks_are_removed_when_the_forward_raises(manager):
    model = Forward()
    contexts = {
        "inputs": lambda: capture_inputs({"first": model.first, "block": model.block}),
        "outputs": lambda: capture_outputs({"first": model.first, "block": model.block}),
        "edit": lambda: edit_output(model.block, lambda h: h),
        "stop": lambda: stop_after(model.last),      # the forward raises before the hook fires
    }
    with pytest.raises(Boom):
        with contexts[manager]():
            assert not no_hooks(model)
            model(torch.randn(1, 4))
    assert no_hooks(model)


def test_hooks_are_removed_when_a_hook_itself_raises():
    model = Forward()

    def bad_edit(hidden):
        raise Boom("edit failed")

    with pytest.raises(Boom, match="edit failed"):
        with capture_inputs({"block": model.block}), edit_output(model.block, bad_edit), stop_after(model.block):
            model(torch.randn(1, 4))
    assert no_hooks(model)


def test_module_lookup_fails_loudly_with_the_name():
    model = Forward()
    assert get_module(model, "block.linear") is model.block.linear
    with pytest.raises(ModelNotReady, match="block.linaer"):
        get_module(model, "block.linaer")


def test_architecture_table_and_weight_layout():
    class Fake(torch.nn.Module):
        def __init__(self, model_type):
            super().__init__()
            self.config = type("C", (), {"model_type": model_type})()

    assert architecture_of(Fake("llama")) is ARCHITECTURES["llama"]
    assert ARCHITECTURES["gpt2"].weight_transposed and not ARCHITECTURES["llama"].weight_transposed
    with pytest.raises(ModelNotReady, match="bert"):
        architecture_of(Fake("bert"))
    W = torch.arange(6.0).view(2, 3)                 # (d_out, d_in)
    conv = type("Conv", (), {"weight": W.T.contiguous()})()
    assert torch.equal(weight_matrix(conv, True), W)
    assert torch.equal(stored_weight(W, True), W.T) and stored_weight(W, True).is_contiguous()
    assert torch.equal(stored_weight(W, False), W)
