"""Keys and hidden states at the subject's last token, averaged over prompt forms."""

from __future__ import annotations

import torch

from assistant.model.hooks import capture_inputs, capture_outputs, stop_after
from assistant.editing.prompts import RowBatch


def average_by_fact(values: torch.Tensor, fact: torch.Tensor, n_facts: int) -> torch.Tensor:
    """Mean of the rows of ``values`` (B, d) that belong to each fact -> (n_facts, d)."""
    sums = torch.zeros(n_facts, values.shape[1], dtype=values.dtype, device=values.device)
    sums.index_add_(0, fact, values)
    counts = torch.bincount(fact, minlength=n_facts).clamp(min=1).to(values.dtype)
    return sums / counts[:, None]


@torch.no_grad()
def keys_and_hidden(model, batch: RowBatch, n_facts: int, edited: torch.nn.Module, last_block: torch.nn.Module,
                    per_form: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """K (d_in, m): the edited module's input at each subject's last token;
    H (d, m): the last edited block's output there; owner (m,): the fact of each column.
    Float64. With per_form, every prompt form is its own column; else one column per
    fact, averaged over its forms."""
    with capture_inputs({"key": edited}) as inputs, capture_outputs({"h": last_block}) as outputs, \
            stop_after(last_block):
        model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    rows = torch.arange(batch.input_ids.shape[0], device=batch.input_ids.device)
    keys = inputs["key"][rows, batch.subject_pos].double()
    hidden = outputs["h"][rows, batch.subject_pos].double()
    if per_form:
        return keys.T.cpu(), hidden.T.cpu(), batch.fact.cpu()
    owner = torch.arange(n_facts)
    return average_by_fact(keys, batch.fact, n_facts).T.cpu(), average_by_fact(hidden, batch.fact, n_facts).T.cpu(), owner
