"""Target vectors: a delta at the last edited block's output, at the subject's last
token, optimised so that the model produces the new object after every prompt form.

Loss per fact = NLL of the target over its forms
              + kl_weight * KL(initial || current) on "{subject} is a"
              + weight_decay * ||delta||^2 / ||h||^2,
with the delta's norm clamped to clamp_norm_factor * ||h||, and a fact frozen as soon
as its target probability passes stop_probability in every form. All facts of a batch share each
step's passes, rows of similar length together (``prefix_cache.width_buckets``).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from assistant.model.hooks import edit_output
from assistant.editing.prefix_cache import split_rows, suffix_hidden, width_buckets
from assistant.editing.prompts import RowBatch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TargetSettings:
    """The values the target optimisation uses (the [editing] keys of the same names)."""
    steps: int                    # most gradient steps
    learning_rate: float          # Adam's
    clamp_norm_factor: float      # ||delta|| <= this * ||h||
    kl_weight: float
    weight_decay: float           # weight of ||delta||^2 / ||h||^2
    stop_probability: float       # a fact stops once P(target) passes this in every form
    tokens_per_pass: int          # most prompt tokens per forward/backward pass; 0 = no limit

    @classmethod
    def from_editing(cls, editing) -> "TargetSettings":
        """These values out of an [editing] section (EditingConfig)."""
        return cls(**{f.name: getattr(editing, f.name) for f in dataclasses.fields(cls)})


@dataclass
class Targets:
    delta: torch.Tensor         # (n, d) float32, to add at the last edited block
    probability: torch.Tensor   # (n,) final P(target) in the fact's hardest form
    steps: int


def add_delta_at(sites: tuple[torch.Tensor, ...], delta: torch.Tensor):
    """A hidden-state edit adding delta[fact[i]] at (row[i], position[i]) for the sites
    (row, position, fact)."""
    rows, positions, facts = sites

    def edit(hidden):                                  # (B, T, d)
        shift = torch.zeros_like(hidden)
        shift[rows, positions] = delta[facts].to(hidden.dtype)
        return hidden + shift
    return edit


def delta_sites(batch: RowBatch, from_subject: bool = False) -> tuple[torch.Tensor, ...]:
    """(row, position, fact) of the place each row gets its fact's delta: the subject's
    last token, counted from the row's start, or 0 with ``from_subject`` (the suffix that
    the prefix cache runs starts there)."""
    rows = torch.arange(len(batch.rows), device=batch.fact.device)
    positions = torch.zeros_like(rows) if from_subject else batch.subject_pos
    return rows, positions, batch.fact


def _target_positions(batch: RowBatch, from_subject: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(row, position predicting the token, token id) for every target token; positions
    count from the row's subject token, or from its start without ``from_subject``."""
    rows, positions, tokens = [], [], []
    for i, row in enumerate(batch.rows):
        first = len(row.ids) - row.target_len
        for t in range(first, len(row.ids)):
            rows.append(i)
            positions.append(t - 1 - (row.subject_pos if from_subject else 0))
            tokens.append(row.ids[t])
    device = batch.input_ids.device
    return (torch.tensor(rows, device=device), torch.tensor(positions, device=device),
            torch.tensor(tokens, device=device))


def _row_nll(model, hidden: torch.Tensor, batch: RowBatch, from_subject: bool = True) -> torch.Tensor:
    """Each row's mean per-token NLL of its target, (n_rows,), from the final hidden states."""
    rows, positions, tokens = _target_positions(batch, from_subject)
    logprobs = torch.log_softmax(model.get_output_embeddings()(hidden[rows, positions]).float(), dim=-1)
    token_nll = -logprobs.gather(1, tokens[:, None]).squeeze(1)          # (N_tok,)
    row_nll = torch.zeros(len(batch.rows), device=token_nll.device).index_add_(0, rows, token_nll)
    return row_nll / torch.tensor([r.target_len for r in batch.rows], device=row_nll.device)


def _per_fact_nll(row_nll: torch.Tensor, fact: torch.Tensor, n_facts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per fact, over its forms (rows, with ``fact`` the fact of each): the mean, and the
    worst, of the rows' mean per-token NLL of the target. Both (n_facts,)."""
    fact_nll = torch.zeros(n_facts, device=row_nll.device).index_add_(0, fact, row_nll)
    worst = torch.zeros(n_facts, device=row_nll.device).scatter_reduce(0, fact, row_nll.detach(), "amax")
    return fact_nll / torch.bincount(fact, minlength=n_facts).clamp(min=1), worst


@torch.no_grad()
def asked_probability(model, batch: RowBatch, n_facts: int) -> torch.Tensor:
    """P(target) (the exp of its mean per-token NLL) of each fact in the form it is asked
    in (``Row.asked``), on the model as it is. (n_facts,)"""
    asked = batch.only_rows(torch.tensor([row.asked for row in batch.rows], device=batch.fact.device))
    hidden = model.base_model(input_ids=asked.input_ids, attention_mask=asked.attention_mask).last_hidden_state
    probability = torch.zeros(n_facts, device=hidden.device)
    probability[asked.fact] = torch.exp(-_row_nll(model, hidden, asked, from_subject=False))
    return probability


def fact_groups(batch: RowBatch, active: torch.Tensor, tokens_per_pass: int) -> list[torch.Tensor]:
    """The active facts in consecutive groups (masks over all facts) whose rows hold at most
    ``tokens_per_pass`` tokens, a fact never split and every group at least one fact; one
    group when ``tokens_per_pass`` is 0."""
    tokens = torch.zeros(active.shape[0], dtype=torch.long)
    tokens.index_add_(0, batch.fact.cpu(), batch.lengths.cpu())
    groups, current, used = [], [], 0
    for fact in active.nonzero().squeeze(1).tolist():
        if current and tokens_per_pass and used + int(tokens[fact]) > tokens_per_pass:
            groups.append(current)
            current, used = [], 0
        current.append(fact)
        used += int(tokens[fact])
    groups += [current] if current else []
    masks = []
    for group in groups:
        mask = torch.zeros_like(active)
        mask[group] = True
        masks.append(mask)
    return masks


def _last_logprobs(model, batch: RowBatch) -> torch.Tensor:
    hidden = model.base_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
    last = hidden[torch.arange(hidden.shape[0], device=hidden.device), batch.lengths - 1]
    return torch.log_softmax(model.get_output_embeddings()(last).float(), dim=-1)   # (n, V)


def optimise_targets(model, train: RowBatch, kl: RowBatch, block: torch.nn.Module, h_norm: torch.Tensor,
                     cfg: TargetSettings, pad: int, only: torch.Tensor | None = None,
                     on_step: Callable[[int, torch.Tensor], None] | None = None) -> Targets:
    """Optimise one delta per fact. ``h_norm`` (n,) is ||h|| at each subject. With ``only``
    (n,) bool, the other facts keep a zero delta and a probability of 0. ``on_step(step,
    probability)`` sees each step's P(target) per fact in its hardest form, before the step's
    update (a stopped fact keeps its last)."""
    n, started = h_norm.shape[0], time.perf_counter()
    device = train.input_ids.device
    delta = torch.zeros(n, model.config.hidden_size, device=device, requires_grad=True)
    optimiser = torch.optim.Adam([delta], lr=cfg.learning_rate)
    with torch.no_grad():
        initial_kl = _last_logprobs(model, kl)
    active = torch.ones(n, dtype=torch.bool, device=device) if only is None else only.to(device).clone()
    probability = torch.zeros(n, device=device)
    max_norm = cfg.clamp_norm_factor * h_norm.to(device)
    step, splits, splits_for = 0, [], None
    for step in range(1, cfg.steps + 1):
        optimiser.zero_grad()
        if splits_for is None or not torch.equal(splits_for, active):    # converged facts cost nothing
            splits, splits_for = [], active.clone()
            for group in fact_groups(train, active, cfg.tokens_per_pass):
                rows = train.only_facts(group)
                passes = [split_rows(model, rows.only_rows(bucket), pad, through=block)
                          for bucket in width_buckets(rows)]
                splits.append((group, [(split, delta_sites(split.source, from_subject=True)) for split in passes]))
        for group, passes in splits:                 # one backward pass per group of facts
            kl_rows = kl.only_facts(group)
            row_nll = []
            for split, sites in passes:              # forward passes of rows of similar length
                with edit_output(block, add_delta_at(sites, delta)):
                    row_nll.append(_row_nll(model, suffix_hidden(model, split), split.source))
            nll, worst_nll = _per_fact_nll(torch.cat(row_nll), torch.cat([split.source.fact for split, _ in passes]), n)
            with edit_output(block, add_delta_at(delta_sites(kl_rows), delta)):
                current = _last_logprobs(model, kl_rows)
            kl_term = torch.zeros(n, device=device)
            kl_term[kl_rows.fact] = torch.nn.functional.kl_div(
                current, initial_kl[kl_rows.fact], log_target=True, reduction="none").sum(-1)
            decay = (delta.norm(dim=1) / h_norm.to(device)) ** 2
            probability = torch.where(group, torch.exp(-worst_nll), probability)
            behind = group & (probability < cfg.stop_probability)
            if behind.any():
                ((nll + cfg.kl_weight * kl_term + cfg.weight_decay * decay) * behind).sum().backward()
        if on_step is not None:
            on_step(step, probability.detach().clone())
        active &= probability < cfg.stop_probability
        if not active.any():
            break
        frozen = delta.detach()[~active].clone()
        optimiser.step()
        with torch.no_grad():
            delta[~active] = frozen
            norms = delta.norm(dim=1, keepdim=True)
            delta.mul_(torch.clamp(max_norm[:, None] / norms.clamp(min=1e-12), max=1.0))
    log.info("targets for %d fact(s): %d steps in %.1f s, lowest P(target) %.3f", n, step,
             time.perf_counter() - started, float(probability.min()))
    return Targets(delta.detach(), probability.detach(), step)
