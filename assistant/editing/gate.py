"""A gate on the edited layers' change (GRACE/WISE-style), measured as a locality candidate.

An edited layer computes W k = W0 k + Delta k for every key k. The gate keeps the change
only where it is large against the unedited output:

    out = W0 k + [ ||Delta k|| > threshold * ||W0 k|| ] Delta k

An edited subject's key gets a change of about its whole unedited output (ratio near 1 on
the default model), while an unrelated key gets a small spill-over; with the gate that
spill-over is dropped, so an unrelated question is answered by the unedited layers.
With ``[editing] gate_by = "edit"`` the gate acts on each chat edit's term apart
(``EditColumns``): summed, an unrelated key's spill-over grows with the number of edits;
edit by edit, it does not. The gate needs W0 beside W at serving time, so a plain Hugging
Face checkpoint cannot hold it: the Editor installs it on the served model and the shadow
when ``[editing] gate`` is set, and benchmarks/gated_locality.py measures it at several
thresholds on one edited state.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch


def change_ratio(base: torch.Tensor, edited: torch.Tensor) -> torch.Tensor:
    """||edited - base|| / ||base|| per token (the last dimension is the hidden state)."""
    return (edited - base).norm(dim=-1) / base.norm(dim=-1).clamp_min(torch.finfo(base.dtype).tiny)


def gate_change(base: torch.Tensor, edited: torch.Tensor, threshold: float) -> torch.Tensor:
    """``edited`` where the change is above ``threshold`` of the unedited output, else ``base``."""
    keep = (change_ratio(base, edited) > threshold).unsqueeze(-1)
    return torch.where(keep, edited, base)


@dataclass(frozen=True)
class EditColumns:
    """A gated change kept edit by edit: Delta = R M^T with one column per edit (D4S: M =
    (lambda C + T)^-1 K over the gated edits' keys K, and R their residuals). The gate then
    keeps each edit's term r_j (m_j . k) only where that term alone is large, so an unrelated
    key does not collect the spill-over of every edit."""
    M: torch.Tensor     # (d_in, n)
    R: torch.Tensor     # (d_out, n)

    @property
    def R_norms(self) -> torch.Tensor:
        """||r_j|| per column, computed once per EditColumns (the gate reads it every call)."""
        if "_R_norms" not in self.__dict__:
            object.__setattr__(self, "_R_norms", self.R.norm(dim=0))
        return self.__dict__["_R_norms"]

    def to(self, device, dtype) -> "EditColumns":
        return EditColumns(self.M.to(device, dtype), self.R.to(device, dtype))


def edit_gate_change(keys: torch.Tensor, base: torch.Tensor, columns: EditColumns, threshold: float,
                     sizes: list[float] | None = None) -> torch.Tensor:
    """The change a layer keeps behind the gate, edit by edit: each column's term
    r_j (m_j . k) where its size |m_j . k| ||r_j|| exceeds ``threshold`` of the unedited
    output's norm ||base||. ``keys`` (..., d_in), ``base`` (..., d_out); returns (..., d_out).
    ``sizes``, when given, collects the call's largest single-edit ratio."""
    columns = columns.to(keys.device, keys.dtype)
    return _kept_terms(keys @ columns.M, base, columns, threshold, sizes)


def _kept_terms(coefficients: torch.Tensor, base: torch.Tensor, columns: EditColumns, threshold: float,
                sizes: list[float] | None) -> torch.Tensor:
    ratios = coefficients.abs() * columns.R_norms / base.norm(dim=-1, keepdim=True).clamp_min(
        torch.finfo(base.dtype).tiny)
    if sizes is not None and ratios.numel():
        sizes.append(ratios.max().item())
    return (coefficients * (ratios > threshold)) @ columns.R.T


@contextmanager
def gated(modules: dict[int, torch.nn.Module], changes: dict[int, "torch.Tensor | EditColumns"], threshold: float,
          ratios: dict[int, list[float]] | None = None) -> Iterator[None]:
    """Gate each module's output while the block runs. ``changes`` holds each layer's gated
    change, read at every call: Delta as (d_out, d_in), whatever the module's layout or bias,
    gated as one change, or ``EditColumns``, gated edit by edit. The module's output includes
    that change; the hook takes it out and puts back what passes. ``ratios``, when given,
    collects each forward pass's largest change ratio per layer (the largest single edit's for
    EditColumns), to choose the threshold."""
    def hook_for(layer: int):
        def hook(_module, args, output):
            change, keys = changes[layer], args[0]
            found = None if ratios is None else ratios.setdefault(layer, [])
            if isinstance(change, EditColumns):          # installed in the layer's device and dtype
                coefficients = keys @ change.M
                base = output - coefficients @ change.R.T
                return base + _kept_terms(coefficients, base, change, threshold, found)
            base = output - keys @ change.T.to(output.dtype)
            if found is not None:
                found.append(change_ratio(base, output).max().item())
            return gate_change(base, output, threshold)
        return hook
    handles = [module.register_forward_hook(hook_for(layer)) for layer, module in modules.items()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
