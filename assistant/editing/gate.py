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


def edit_gate_change(keys: torch.Tensor, base: torch.Tensor, M: torch.Tensor, R: torch.Tensor,
                     threshold: float, sizes: list[float] | None = None) -> torch.Tensor:
    """The gated change of a layer gated edit by edit. With Delta = R M^T (D4S: M = A^-1 K for the
    gated edits' keys K (d_in, n) and residuals R (d_out, n)), a key k gets sum_j r_j (m_j . k);
    each column's term is kept only where its size |m_j . k| ||r_j|| exceeds ``threshold`` of the
    unedited output's norm, so unrelated keys do not collect the spill-over of every edit.
    ``keys`` (..., d_in), ``base`` (..., d_out); returns (..., d_out). ``sizes``, when given,
    collects the call's largest column ratio (to choose the threshold)."""
    coefficients = keys @ M.to(keys.dtype)                               # (..., n)
    ratios = coefficients.abs() * R.norm(dim=0).to(keys.dtype) / base.norm(dim=-1, keepdim=True).clamp_min(
        torch.finfo(base.dtype).tiny)
    if sizes is not None and ratios.numel():
        sizes.append(ratios.max().item())
    return (coefficients * (ratios > threshold)) @ R.T.to(keys.dtype)


@contextmanager
def gated_by_edit(modules: dict[int, torch.nn.Module], columns: dict[int, tuple[torch.Tensor, torch.Tensor]],
                  threshold: float, sizes: dict[int, list[float]] | None = None) -> Iterator[None]:
    """``gated`` edit by edit: ``columns`` holds each layer's (M, R) with Delta_gated = R M^T
    (``edit_gate_change``); the module's output must include that whole change, which the
    hook takes out and puts back column by column."""
    def hook_for(layer: int):
        M, R = columns[layer]

        def hook(_module, args, output):
            keys = args[0]
            base = output - (keys @ M.to(output.dtype)) @ R.T.to(output.dtype)
            found = None if sizes is None else sizes.setdefault(layer, [])
            return base + edit_gate_change(keys, base, M, R, threshold, found)
        return hook
    handles = [module.register_forward_hook(hook_for(layer)) for layer, module in modules.items()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


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
