"""Architecture facts as data: which module is edited and how its weight is stored.

The edited module is the MLP's output projection. Its weight, read as a matrix W of
shape (d_out, d_in), maps the key k (the projection's input) to the value it adds to
the residual stream. GPT-2's Conv1D stores W transposed, as (d_in, d_out).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from assistant.errors import ModelNotReady


@dataclass(frozen=True)
class Architecture:
    edited_module: str        # template of the edited projection, "{}" = layer index
    block_module: str         # template of the transformer block whose output is the residual stream
    weight_transposed: bool   # True when the parameter is stored as (d_in, d_out)


_LLAMA_LIKE = Architecture("model.layers.{}.mlp.down_proj", "model.layers.{}", False)

ARCHITECTURES: dict[str, Architecture] = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gpt2": Architecture("transformer.h.{}.mlp.c_proj", "transformer.h.{}", True),
    "gptj": Architecture("transformer.h.{}.mlp.fc_out", "transformer.h.{}", False),
    "gpt_neox": Architecture("gpt_neox.layers.{}.mlp.dense_4h_to_h", "gpt_neox.layers.{}", False),
}


def architecture_of(model: torch.nn.Module) -> Architecture:
    model_type = getattr(model.config, "model_type", None)
    if model_type not in ARCHITECTURES:
        raise ModelNotReady(
            f"model type {model_type!r} is not supported; supported: {', '.join(sorted(ARCHITECTURES))}"
        )
    return ARCHITECTURES[model_type]


def get_module(model: torch.nn.Module, dotted_name: str) -> torch.nn.Module:
    """The submodule at a dotted path; a wrong name fails loudly with the name."""
    modules = dict(model.named_modules())
    if dotted_name not in modules:
        raise ModelNotReady(f"model has no module named {dotted_name!r}")
    return modules[dotted_name]


def layer_count(model: torch.nn.Module) -> int:
    return int(model.config.num_hidden_layers)


def weight_matrix(module: torch.nn.Module, transposed: bool) -> torch.Tensor:
    """The module's weight as W (d_out, d_in); a view, never a copy."""
    return module.weight.T if transposed else module.weight


def stored_weight(matrix: torch.Tensor, transposed: bool) -> torch.Tensor:
    """W (d_out, d_in) laid out the way the module stores it."""
    return matrix.T.contiguous() if transposed else matrix.contiguous()
