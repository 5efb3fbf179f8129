"""A gate on the edited layers' change (GRACE/WISE-style), measured as a locality candidate.

An edited layer computes W k = W0 k + Delta k for every key k. The gate keeps the change
only where it is large against the unedited output:

    out = W0 k + [ ||Delta k|| > threshold * ||W0 k|| ] Delta k

An edited subject's key gets a change of about its whole unedited output (ratio near 1 on
the default model), while an unrelated key gets a small spill-over; with the gate that
spill-over is dropped, so an unrelated question is answered by the unedited layers.
The gate needs W0 beside W at serving time, so a plain Hugging Face checkpoint cannot hold
it: the Editor installs it on the served model and the shadow when ``[editing] gate`` is set,
and benchmarks/gated_locality.py measures it at several thresholds on one edited state.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch


def change_ratio(base: torch.Tensor, edited: torch.Tensor) -> torch.Tensor:
    """||edited - base|| / ||base|| per token (the last dimension is the hidden state)."""
    return (edited - base).norm(dim=-1) / base.norm(dim=-1).clamp_min(torch.finfo(base.dtype).tiny)


def gate_change(base: torch.Tensor, edited: torch.Tensor, threshold: float) -> torch.Tensor:
    """``edited`` where the change is above ``threshold`` of the unedited output, else ``base``."""
    keep = (change_ratio(base, edited) > threshold).unsqueeze(-1)
    return torch.where(keep, edited, base)


@contextmanager
def gated(modules: dict[int, torch.nn.Module], changes: dict[int, torch.Tensor], threshold: float,
          ratios: dict[int, list[float]] | None = None) -> Iterator[None]:
    """Gate each module's output while the block runs. ``changes`` holds each layer's
    Delta = W - W0 as (d_out, d_in), whatever the module's layout or bias; ``ratios``, when
    given, collects each forward pass's largest change ratio per layer (to choose the threshold)."""
    def hook_for(layer: int):
        def hook(_module, args, output):
            base = output - args[0] @ changes[layer].T.to(output.dtype)
            if ratios is not None:
                ratios.setdefault(layer, []).append(change_ratio(base, output).max().item())
            return gate_change(base, output, threshold)
        return hook
    handles = [module.register_forward_hook(hook_for(layer)) for layer, module in modules.items()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
