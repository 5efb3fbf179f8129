"""L1-norm accounting of edited layers (the paper's "L1 norm" is W.abs().mean())."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LayerNorms:
    layer: int
    mean_abs: float        # L1 of the edited weight
    growth: float          # L1(W) / L1(W0) - 1
    mean_abs_delta: float  # mean |W - W0|


def layer_norms(layer: int, W: torch.Tensor, W0: torch.Tensor) -> LayerNorms:
    W, W0 = W.double(), W0.double()
    base = W0.abs().mean().item()
    current = W.abs().mean().item()
    return LayerNorms(layer, current, current / base - 1.0, (W - W0).abs().mean().item())
