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


def growth_split(W: torch.Tensor, W0: torch.Tensor) -> dict[str, float]:
    """L1 growth of W over W0, split into its first-order part mean(sign(W0) Delta) / mean|W0|
    (exact wherever the change does not flip an entry's sign) and the rest, which comes from the
    entries whose sign flips (second order in Delta for a change small against W0), with the
    change's rms against mean|W0|."""
    W, W0 = W.double(), W0.double()
    delta, base = W - W0, W0.abs().mean()
    growth = (W.abs().mean() / base - 1).item()
    first = ((torch.sign(W0) * delta).mean() / base).item()
    return {"growth": growth, "first_order": first, "sign_flips": growth - first,
            "rms_delta": delta.pow(2).mean().sqrt().item(), "mean_abs_w0": base.item()}


def edits_left(growth_history: list[tuple[int, float]], bound: float, recent: int = 5) -> float | None:
    """How many more edits fit under ``bound`` at the recent rate of L1 growth per edit.

    ``growth_history``: (active edits, largest L1 growth) after each generation, oldest first.
    None when the rate cannot be told yet (fewer than two points, or no growth)."""
    points = growth_history[-(recent + 1):]
    if len(points) < 2:
        return None
    (edits0, growth0), (edits1, growth1) = points[0], points[-1]
    if edits1 <= edits0 or growth1 <= growth0:
        return None
    rate = (growth1 - growth0) / (edits1 - edits0)
    return max(bound - growth1, 0.0) / rate
