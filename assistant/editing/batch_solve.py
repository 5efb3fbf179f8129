"""Solving one batch of facts on the editor's shadow: keys, targets, and MEMIT's spread of the
residual over a window of layers, with optional refinement rounds. Nothing here commits.

A batch is one kind of fact (``EditingConfig.for_kind``) with its own lambda. The layers'
sums are shared by both kinds and solved with [editing] mom2_weight, so a kind with lambda
l enters with weighted columns: sqrt(w) k and sqrt(w) r with w = mom2_weight / l. Its term
in the least squares is then w ||Delta k - r||^2, the same as solving it alone with lambda l
(DESIGN.md section 1), and the weighted columns are what the ledger keeps, so retraction and
rebuilding stay exact. A chat batch's terms also enter the gated share of the sums (the part
of the change that the gate acts on).
"""

from __future__ import annotations

import logging
import math

import torch

from assistant.editing.closed_form import realised_fraction, spread_residual
from assistant.editing.keys import average_by_fact, keys_and_hidden
from assistant.editing.lead_ins import answer_lead_ins
from assistant.editing.prompts import RowBatch, collate, fact_rows, kl_row
from assistant.config import EditingConfig
from assistant.editing.targets import TargetSettings, asked_probability, optimise_targets
from assistant.errors import InvalidFact
from assistant.model.answers import said_as_asked
from assistant.facts import Fact
from assistant.model.architectures import get_module
from assistant.state.ledger import NewEdit
from assistant.state.sums import EditSums

log = logging.getLogger(__name__)


class BatchSolver:
    """The measuring and solving half of an Editor: it reads the editor's shadow, covariances
    and settings, adds a batch to a copy of the sums, and sets the shadow's solved layers."""

    def __init__(self, editor):
        self.editor = editor

    def edit_batch(self, facts: list[Fact], sums: EditSums, cfg: EditingConfig,
                   weights: dict[int, torch.Tensor]) -> list[NewEdit]:
        """Measure keys and targets on the shadow, solve the kind's layers (``cfg``, from
        ``EditingConfig.for_kind``) one by one (MEMIT's spread), then, for its
        ``refine_rounds``, re-check every fact on the edited shadow in the form it is asked in
        (``refine_check``: said, or up to the stop probability) and raise the residuals of
        those behind (their new targets are trained in every form, as the first ones).
        ``sums`` and ``weights`` (each solved layer's W, also set on the shadow) are updated in
        place."""
        ed = self.editor
        shadow, layers = ed.shadow, list(cfg.layers)
        gated = one_kind(facts)                      # chat facts: their change is what the gate acts on
        scale = math.sqrt(ed.editing.mom2_weight / cfg.mom2_weight)     # the kind's lambda, as column weights
        targets = TargetSettings.from_editing(cfg)
        n = len(facts)
        key_batch, train_batch, kl_batch = self.rows(facts, cfg)
        last_block = get_module(shadow, ed.arch.block_module.format(layers[-1]))
        edited = lambda layer: get_module(shadow, ed.names[layer])  # noqa: E731

        measure = lambda layer: keys_and_hidden(shadow, key_batch, n, edited(layer), last_block,  # noqa: E731
                                                cfg.key_mode == "per_form")
        first = measure(layers[0])
        K, H, owner = first
        h_norm = average_by_fact(H.norm(dim=0)[:, None], owner, n)[:, 0].float()
        optimise = lambda only=None: self._targets(facts, train_batch, kl_batch, last_block, h_norm,  # noqa: E731
                                                   targets, only)
        found = optimise()
        fraction = realised_fraction(K * scale, ed.covariance(layers[0]), ed.editing.layer_lambda(layers[0]),
                                     sums.T(layers[0]))
        fraction = average_by_fact(fraction[:, None], owner, n)[:, 0]
        keys, residuals = self._solve_layers(layers, found.delta, first, sums, weights, measure, scale, gated)
        probability = found.probability
        for _ in range(cfg.refine_rounds):
            lagging = self._behind(facts, train_batch, cfg)
            if not lagging.any():
                break
            more = optimise(lagging)
            probability = torch.where(lagging.to(probability.device), more.probability, probability)
            behind = more.delta.norm(dim=1).cpu() > 0      # facts that passed at once keep a zero delta
            if not behind.any():
                break
            log.info("refining %d of %d fact(s) (%s)", int(behind.sum()), n, {
                "said": "not said yet", "probability": f"below P = {cfg.stop_probability:.2f} as asked",
                "every_form": f"below P = {cfg.stop_probability:.2f} in some form"}[cfg.refine_check])
            _, extra = self._solve_layers(layers, more.delta, measure(layers[0]), sums, weights, measure, scale,
                                          gated, keys, behind)
            for layer in layers:
                residuals[layer] = residuals[layer] + extra[layer]
        vectors = [{layer: (keys[layer][:, owner == i].clone(), residuals[layer][:, owner == i].clone())
                    for layer in layers} for i in range(n)]
        return [NewEdit(f, vectors[i], float(probability[i]), float(fraction[i])) for i, f in enumerate(facts)]

    def rows(self, facts: list[Fact], cfg: EditingConfig) -> tuple[RowBatch, RowBatch, RowBatch]:
        """The batch's rows on the shadow as it is: keys (every prompt form), training (every
        form with the new object, and after the model's own lead-in), and the KL prompt."""
        ed = self.editor
        tok, device = ed.tokenizer, next(ed.model.parameters()).device
        lead_ins = (answer_lead_ins(ed.shadow, tok, facts, ed.system_prompt, cfg.lead_in_tokens)
                    if cfg.lead_in_tokens else [[] for _ in facts])
        rows = lambda i, fact, with_targets: fact_rows(i, fact, tok, ed.prompts, with_targets, lead_ins[i])  # noqa: E731
        train, key_rows, kl_rows = [], [], []
        for i, fact in enumerate(facts):
            train += rows(i, fact, True)
            key_rows += rows(i, fact, False)
            kl_rows.append(kl_row(i, fact, tok, cfg.kl_prompt))
        if cfg.lead_in_tokens:
            log.info("%d lead-in(s) for %d of %d fact(s)", sum(map(len, lead_ins)), sum(map(bool, lead_ins)),
                     len(facts))
        key_batch, train_batch, kl_batch = (collate(part, tok.pad_token_id, device)
                                            for part in (key_rows, train, kl_rows))
        return key_batch, train_batch, kl_batch

    def _behind(self, facts: list[Fact], train: RowBatch, cfg: EditingConfig) -> torch.Tensor:
        """(n,) bool: the facts a refinement round optimises, checked on the edited shadow: not
        said yet (greedy, as asked), below the stop probability as asked, or, for every_form,
        all of them: the optimisation's first step finds those below it in some form, and the
        others keep a zero delta."""
        ed = self.editor
        if cfg.refine_check == "said":
            said = said_as_asked(ed.shadow, ed.tokenizer, facts, ed.system_prompt)
            return ~torch.tensor(said, dtype=torch.bool)
        if cfg.refine_check == "every_form":
            return torch.ones(len(facts), dtype=torch.bool)
        return asked_probability(ed.shadow, train, len(facts)).cpu() < cfg.stop_probability

    def _targets(self, facts: list[Fact], train: RowBatch, kl: RowBatch, last_block, h_norm: torch.Tensor,
                 settings: TargetSettings, only: torch.Tensor | None = None):
        ed = self.editor
        targets = optimise_targets(ed.shadow, train, kl, last_block, h_norm, settings, ed.tokenizer.pad_token_id,
                                   only)
        bad = [f.id for f, d in zip(facts, targets.delta) if not torch.isfinite(d).all()]
        if bad:
            raise InvalidFact(f"fact(s) {', '.join(bad)} gave NaN targets; nothing was applied")
        return targets

    def _solve_layers(self, layers: list[int], delta: torch.Tensor, first: tuple, sums: EditSums,
                      weights: dict[int, torch.Tensor], measure, scale: float, gated: bool,
                      known_keys: dict[int, torch.Tensor] | None = None, only: torch.Tensor | None = None):
        """Move the last edited block's output at each key toward Z = H + delta, spreading
        the residual over the layers and re-measuring after each; update ``sums``, ``weights``
        and the shadow. Layer j takes (z - h_j) / (L - j), so the last layer inherits whatever
        the earlier ones did not realise. A new batch adds its (k, r) columns; a refinement
        (``known_keys``) only raises the residuals of the facts in ``only`` at the keys
        already in the sums. Keys and residuals enter weighted by ``scale`` (the kind's lambda),
        and into the gated share too when ``gated``.
        Returns each layer's keys and residuals (d, m), as they entered the sums."""
        ed = self.editor
        strategy = sums.strategy
        K, H, owner = first
        Z = H + delta[owner].T.double().cpu()                           # (d, m)
        keys, residuals = {}, {}
        for j, layer in enumerate(layers):
            if j:
                K, H, owner = measure(layer)
            R = spread_residual(Z, H, len(layers) - j) * scale      # (d, m)
            if known_keys is None:
                K = K * scale
                strategy.add_batch(sums, layer, K, R, ed.prior(layer), ed.editing.layer_lambda(layer), gated)
            else:
                K, R = known_keys[layer], R * only[owner].to(R.dtype)
                strategy.raise_residuals(sums, layer, K, R, ed.prior(layer), ed.editing.layer_lambda(layer),
                                         gated)
            weights[layer] = ed.set_solved(ed.shadow, sums, layer)
            keys[layer], residuals[layer] = K, R
        return keys, residuals


def one_kind(facts: list[Fact]) -> bool:
    """Whether a batch's facts carry a question; a batch holds one kind (``editor.by_kind``)."""
    kinds = {bool(f.question) for f in facts}
    if len(kinds) != 1:
        raise ValueError("a batch is solved one kind at a time: group it with editor.by_kind first")
    return kinds.pop()
