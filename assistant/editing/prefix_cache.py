"""Run the tokens before each subject once, and only the rest at every optimisation step.

The target delta enters at the subject's last token, so under causal attention every
earlier token computes the same thing at every step. A row is split there: its prefix
(left-padded) runs once into a key/value cache; each step runs only the suffix, which
starts at the subject's last token, against a copy-free cropped cache.

The delta enters at one block's output, so the suffix's blocks up to that one compute the
same thing at every step too: they run once, and each step replays what they returned
and computes only the blocks above.

Rows differ in suffix length (a cloze form's few tokens, a question's chat template, a
lead-in), and a pass computes every row to the widest: ``width_buckets`` groups rows of
similar length into passes, so padding costs little.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import torch

from assistant.editing.prompts import RowBatch
from assistant.model.hooks import recording_forwards, replaying_forwards


@dataclass
class SplitRows:
    suffix_ids: torch.Tensor       # (B, S) right-padded; column 0 is the subject's last token
    mask: torch.Tensor             # (B, P + S) prefix (left-padded) then suffix (right-padded)
    positions: torch.Tensor        # (B, S) position ids of the suffix tokens
    cache: object                  # the prefix's key/value cache, P positions
    prefix_width: int
    source: RowBatch
    blocks_below: list = field(default_factory=list)   # the blocks up to the delta's, replayed at each step
    returned_below: list = field(default_factory=list)  # what each returned for the suffix


def _left_padded(rows: list[list[int]], pad: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(1, max(map(len, rows)))
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            ids[i, width - len(row):] = torch.tensor(row)
            mask[i, width - len(row):] = 1
    return ids.to(device), mask.to(device)


PASS_COST_TOKENS = 64   # what one more pass costs, in padded suffix tokens (CPU, SmolLM2-135M: ~1.5 ms a token)


def width_buckets(batch: RowBatch, pass_cost: int = PASS_COST_TOKENS) -> list[torch.Tensor]:
    """The rows as masks (n_rows,) of passes, rows of similar suffix length together: the
    split of the rows sorted by suffix length that computes the fewest padded tokens, each
    pass costing ``pass_cost`` tokens more."""
    lengths = (batch.lengths - batch.subject_pos).tolist()
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    widths = [lengths[i] for i in order]
    best, cut = [0] + [None] * len(widths), [0] * (len(widths) + 1)     # best[j]: cost of the first j rows
    for end in range(1, len(widths) + 1):
        for start in range(end):
            cost = best[start] + (end - start) * widths[end - 1] + pass_cost
            if best[end] is None or cost < best[end]:
                best[end], cut[end] = cost, start
    masks, end = [], len(widths)
    while end:
        mask = torch.zeros(len(lengths), dtype=torch.bool, device=batch.fact.device)
        mask[order[cut[end]:end]] = True
        masks.append(mask)
        end = cut[end]
    return masks[::-1]


def blocks_through(model, block: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's blocks from the first up to ``block``, in order; [] when ``block`` is not in
    a list of blocks."""
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList):
            for index, candidate in enumerate(module):
                if candidate is block:
                    return list(module[:index + 1])
    return []


@torch.no_grad()
def split_rows(model, batch: RowBatch, pad: int, through: torch.nn.Module | None = None) -> SplitRows:
    """Cache every row's prefix (the tokens before its subject's last token). With
    ``through`` (the block whose output the delta edits), also run the suffix once through
    the blocks up to it, for ``suffix_hidden`` to replay."""
    device = batch.input_ids.device
    prefixes = [row.ids[:row.subject_pos] for row in batch.rows]
    prefix_ids, prefix_mask = _left_padded(prefixes, pad, device)
    prefix_positions = (prefix_mask.cumsum(1) - 1).clamp(min=0)
    out = model.base_model(input_ids=prefix_ids, attention_mask=prefix_mask,
                           position_ids=prefix_positions, use_cache=True)
    suffixes = [row.ids[row.subject_pos:] for row in batch.rows]
    width = max(map(len, suffixes))
    suffix_ids = torch.full((len(suffixes), width), pad, dtype=torch.long, device=device)
    suffix_mask = torch.zeros((len(suffixes), width), dtype=torch.long, device=device)
    for i, suffix in enumerate(suffixes):
        suffix_ids[i, :len(suffix)] = torch.tensor(suffix, device=device)
        suffix_mask[i, :len(suffix)] = 1
    starts = torch.tensor([row.subject_pos for row in batch.rows], device=device)
    positions = starts[:, None] + torch.arange(width, device=device)[None, :]
    cache = getattr(out, "cache", None) or out.past_key_values
    split = SplitRows(suffix_ids, torch.cat([prefix_mask, suffix_mask], 1), positions, cache,
                      prefix_ids.shape[1], batch)
    blocks = blocks_through(model, through) if through is not None else []
    if blocks:
        with recording_forwards(blocks) as returned:
            suffix_hidden(model, split)
        split.blocks_below, split.returned_below = blocks, returned
    return split


def _cache_argument(model) -> str:
    """transformers renamed ``past_key_values`` to ``cache``; use whichever this version takes."""
    return "cache" if "cache" in inspect.signature(model.base_model.forward).parameters else "past_key_values"


def suffix_hidden(model, split: SplitRows) -> torch.Tensor:
    """The final hidden states of the suffix tokens, (B, S, d), reusing the prefix cache
    and replaying the blocks below the delta when ``split_rows`` recorded them."""
    try:
        with replaying_forwards(split.blocks_below, split.returned_below):
            out = model.base_model(input_ids=split.suffix_ids, attention_mask=split.mask,
                                   position_ids=split.positions, use_cache=True,
                                   **{_cache_argument(model): split.cache})
        return out.last_hidden_state
    finally:
        _restore_prefix(split)


def _restore_prefix(split: SplitRows) -> None:
    """Put the cache back to the prefix alone, detached from this step's graph. Each layer
    is cropped on its own: a replayed block leaves its layer of the cache as it was."""
    for layer in split.cache.layers:
        grown = layer.get_seq_length() - split.prefix_width
        if grown:
            layer.crop(-grown)                # a negative count removes that many tokens
        layer.keys, layer.values = layer.keys.detach(), layer.values.detach()
