"""The editing engine: MEMIT, sequential MEMIT and D4S on a shadow of the served model.

The shadow shares every parameter with the served model except the edited layers. All
measuring and optimising happens on the shadow; a commit persists the new sums and then
swaps the new edited-layer weights into the served model under a short lock.
"""

from __future__ import annotations

import copy
import itertools
import logging
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from assistant.model.architectures import architecture_of, get_module, layer_count, stored_weight, weight_matrix
from assistant.editing.closed_form import memit_delta, realised_fraction, spread_residual
from assistant.config import Config
from assistant.errors import ConfigError, EditRejected, InvalidFact, StateError
from assistant.facts import Fact
from assistant.editing.keys import average_by_fact, keys_and_hidden
from assistant.state.l1 import LayerNorms, layer_norms
from assistant.editing.lead_ins import answer_lead_ins
from assistant.state.ledger import Ledger, NewEdit
from assistant.model.loading import LoadedModel
from assistant.editing.prompts import PromptSettings, RowBatch, check_lengths, collate, fact_rows, kl_row
from assistant.state.sums import EditSums, edited_weight, remove_other_generations, write_generation
from assistant.editing.targets import TargetSettings, optimise_targets

log = logging.getLogger(__name__)


def make_shadow(model: torch.nn.Module, edited_names: list[str]) -> torch.nn.Module:
    """A copy of the model's modules that shares every tensor but the edited weights."""
    edited = {id(get_module(model, name).weight) for name in edited_names}
    shared = itertools.chain(model.parameters(), model.buffers())
    memo = {id(tensor): tensor for tensor in shared if id(tensor) not in edited}
    return copy.deepcopy(model, memo)


@dataclass
class ApplyReport:
    edit_ids: list[int] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)     # fact ids already edited to the same object
    superseded: list[int] = field(default_factory=list)    # earlier edits that a new object replaced
    probabilities: list[float] = field(default_factory=list)


class Editor:
    """Owns the served model's edited layers, their durable sums and the ledger."""

    def __init__(self, loaded: LoadedModel, config: Config, ledger: Ledger, sums: EditSums,
                 sums_dir: Path, covariances: dict[int, torch.Tensor]):
        self.loaded, self.model, self.tokenizer = loaded, loaded.model, loaded.tokenizer
        self.config, self.ledger, self.sums, self.sums_dir = config, ledger, sums, sums_dir
        self.C = covariances
        self.arch = architecture_of(self.model)
        self.layers = config.editing.all_layers          # every layer some fact may edit
        self.names = {layer: self.arch.edited_module.format(layer) for layer in self.layers}
        self.lock = threading.RLock()           # held by chat generation and by weight swaps
        self.W0 = {layer: self._weight(self.model, layer).detach().cpu().clone() for layer in self.layers}
        self.shadow = make_shadow(self.model, list(self.names.values()))

    @property
    def method(self) -> str:
        return self.sums.method

    # -- weights ---------------------------------------------------------------------------
    def _weight(self, model, layer: int) -> torch.Tensor:
        return weight_matrix(get_module(model, self.names[layer]), self.arch.weight_transposed)

    @torch.no_grad()
    def _set_weight(self, model, layer: int, W: torch.Tensor) -> None:
        parameter = get_module(model, self.names[layer]).weight
        parameter.copy_(stored_weight(W, self.arch.weight_transposed).to(parameter.device))

    def weights_from(self, sums: EditSums) -> dict[int, torch.Tensor]:
        lam = self.config.editing.mom2_weight
        weights = {layer: edited_weight(self.W0[layer], sums.offset(layer, self.C[layer], lam))
                   for layer in self.layers}
        for layer, W in weights.items():
            if not torch.isfinite(W).all():
                raise EditRejected(f"the edit made layer {layer}'s weights non-finite; nothing was applied")
        return weights

    def current_weights(self) -> dict[int, torch.Tensor]:
        return {layer: self._weight(self.model, layer).detach().cpu().clone() for layer in self.layers}

    @contextmanager
    def unedited(self):
        """The served model with its original edited-layer weights while the block runs
        (holding the lock, so no chat sees the swap); the edited weights come back after."""
        with self.lock:
            edited = self.current_weights()
            for layer in self.layers:
                self._set_weight(self.model, layer, self.W0[layer])
            try:
                yield self.model
            finally:
                for layer, W in edited.items():
                    self._set_weight(self.model, layer, W)

    def rebuild(self) -> None:
        """Set the shadow and the served model to W0 + the committed sums."""
        weights = self.weights_from(self.sums)
        with self.lock:
            for layer, W in weights.items():
                self._set_weight(self.shadow, layer, W)
                self._set_weight(self.model, layer, W)

    # -- editing ---------------------------------------------------------------------------
    def max_prompt_tokens(self) -> int:
        limit = self.config.editing.max_prompt_tokens
        return limit or int(getattr(self.model.config, "max_position_embeddings", 1024))

    def check_lengths(self, facts: list[Fact]) -> None:
        """Reject, naming the fact, any prompt form longer than the model's context."""
        settings = PromptSettings.from_editing(self.config.editing, self.config.chat.system_prompt)
        check_lengths(facts, self.tokenizer, settings, self.max_prompt_tokens())

    def apply(self, facts: list[Fact], batch_size: int | None = None, progress=None) -> ApplyReport:
        """Write facts into the weights in batches; each batch is one atomic commit."""
        cfg = self.config.editing
        repeated = sorted({f.id for f in facts if sum(g.id == f.id for g in facts) > 1})
        if repeated:
            raise InvalidFact(f"fact id(s) {', '.join(repeated)} appear more than once; give each fact once")
        self.check_lengths(facts)
        report = ApplyReport()
        todo = []
        for fact in facts:
            active = self.ledger.active_edit_for_fact(fact.id)
            if active and active.fact.target_new == fact.target_new:
                report.unchanged.append(fact.id)
            else:
                todo.append(fact)
        size = len(todo) if self.method == "memit" else (batch_size or cfg.batch_size)
        for start in range(0, len(todo), max(size, 1)):
            batch = todo[start:start + size]
            ids, superseded, probabilities = self._apply_batch(batch)
            report.edit_ids += ids
            report.superseded += superseded
            report.probabilities += probabilities
            if progress:
                progress(len(batch))
        return report

    def _apply_batch(self, facts: list[Fact]) -> tuple[list[int], list[int], list[float]]:
        """Edit the batch and commit it once. Facts with a question edit [editing] chat_layers
        and the others layers: one pass of _edit_batch per window, on the same sums."""
        sums = self.sums.copy()
        ended = {}
        for fact in facts:
            old = self.ledger.active_edit_for_fact(fact.id)
            if old:
                ended[old.id] = "superseded"
                if self.method == "d4s":
                    self._subtract(sums, old.id)
        try:
            if ended and self.method == "d4s":
                for layer, W in self.weights_from(sums).items():
                    self._set_weight(self.shadow, layer, W)
            by_window: dict[tuple[int, ...], list[Fact]] = {}
            for fact in facts:
                by_window.setdefault(tuple(self.config.editing.window(bool(fact.question))), []).append(fact)
            new_edits = {}
            for window, chosen in by_window.items():
                new_edits.update(zip((f.id for f in chosen), self._edit_batch(chosen, sums, list(window))))
            new_edits = [new_edits[f.id] for f in facts]
            ids = self._commit(sums, new_edits, ended, f"edit {len(facts)} fact(s) with {self.method}")
        except BaseException:
            self._restore_shadow()
            raise
        return ids, list(ended), [e.target_probability for e in new_edits]

    def _subtract(self, sums: EditSums, edit_id: int) -> None:
        for layer, (K, R) in self.ledger.vectors(edit_id).items():
            sums.add(layer, K, R, sign=-1.0)

    def _restore_shadow(self) -> None:
        for layer in self.layers:
            self._set_weight(self.shadow, layer, self._weight(self.model, layer).detach())

    def _edit_batch(self, facts: list[Fact], sums: EditSums, layers: list[int]) -> list[NewEdit]:
        """Measure keys and targets on the shadow, solve ``layers`` one by one (MEMIT's spread),
        then, for ``refine_rounds``, re-check every fact on the edited shadow and raise the
        residuals of those still below the stop probability."""
        cfg, tok = self.config.editing, self.tokenizer
        system, device = self.config.chat.system_prompt, next(self.model.parameters()).device
        n = len(facts)
        lead_ins = (answer_lead_ins(self.shadow, tok, facts, system, cfg.lead_in_tokens)
                    if cfg.lead_in_tokens else [[] for _ in facts])
        settings = PromptSettings.from_editing(cfg, system)
        rows = lambda i, fact, with_targets: fact_rows(i, fact, tok, settings, with_targets, lead_ins[i])  # noqa: E731
        train, key_rows, kl_rows = [], [], []
        for i, fact in enumerate(facts):
            train += rows(i, fact, True)
            key_rows += rows(i, fact, False)
            kl_rows.append(kl_row(i, fact, tok, cfg.kl_prompt))
        if cfg.lead_in_tokens:
            log.info("%d lead-in(s) for %d of %d fact(s)", sum(map(len, lead_ins)), sum(map(bool, lead_ins)), n)
        pad = tok.pad_token_id
        key_batch, train_batch, kl_batch = (collate(part, pad, device) for part in (key_rows, train, kl_rows))
        last_block = get_module(self.shadow, self.arch.block_module.format(layers[-1]))
        edited = lambda layer: get_module(self.shadow, self.names[layer])  # noqa: E731

        measure = lambda layer: keys_and_hidden(self.shadow, key_batch, n, edited(layer), last_block,  # noqa: E731
                                                cfg.key_mode == "per_form")
        first = measure(layers[0])
        K, H, owner = first
        h_norm = average_by_fact(H.norm(dim=0)[:, None], owner, n)[:, 0].float()
        targets = self._targets(facts, train_batch, kl_batch, last_block, h_norm)
        fraction = realised_fraction(K, self.C[layers[0]], cfg.mom2_weight, sums.T(layers[0]))
        fraction = average_by_fact(fraction[:, None], owner, n)[:, 0]
        keys, residuals = self._solve_layers(layers, targets.delta, first, sums, measure)
        probability = targets.probability
        for _ in range(cfg.refine_rounds):
            more = self._targets(facts, train_batch, kl_batch, last_block, h_norm)
            probability = more.probability
            behind = more.delta.norm(dim=1).cpu() > 0      # facts that passed at once keep a zero delta
            if not behind.any():
                break
            log.info("refining %d of %d fact(s) below P = %.2f", int(behind.sum()), n, cfg.stop_probability)
            _, extra = self._solve_layers(layers, more.delta, measure(layers[0]), sums, measure, keys, behind)
            for layer in layers:
                residuals[layer] = residuals[layer] + extra[layer]
        vectors = [{layer: (keys[layer][:, owner == i].clone(), residuals[layer][:, owner == i].clone())
                    for layer in layers} for i in range(n)]
        return [NewEdit(f, vectors[i], float(probability[i]), float(fraction[i])) for i, f in enumerate(facts)]

    def _targets(self, facts: list[Fact], train: RowBatch, kl: RowBatch, last_block, h_norm: torch.Tensor):
        settings = TargetSettings.from_editing(self.config.editing)
        targets = optimise_targets(self.shadow, train, kl, last_block, h_norm, settings, self.tokenizer.pad_token_id)
        bad = [f.id for f, d in zip(facts, targets.delta) if not torch.isfinite(d).all()]
        if bad:
            raise InvalidFact(f"fact(s) {', '.join(bad)} gave NaN targets; nothing was applied")
        return targets

    def _solve_layers(self, layers: list[int], delta: torch.Tensor, first: tuple, sums: EditSums, measure,
                      known_keys: dict[int, torch.Tensor] | None = None, only: torch.Tensor | None = None):
        """Move the last edited block's output at each key toward Z = H + delta, spreading
        the residual over the layers and re-measuring after each; update ``sums`` and the
        shadow. Layer j takes (z - h_j) / (L - j), so the last layer inherits whatever the
        earlier ones did not realise. A new batch adds its (k, r) columns; a refinement
        (``known_keys``) only raises the residuals of the facts in ``only`` at the keys
        already in the sums. Returns each layer's keys and residuals (d, m)."""
        lam = self.config.editing.mom2_weight
        K, H, owner = first
        Z = H + delta[owner].T.double().cpu()                           # (d, m)
        keys, residuals = {}, {}
        for j, layer in enumerate(layers):
            if j:
                K, H, owner = measure(layer)
            R = spread_residual(Z, H, len(layers) - j)              # (d, m)
            if known_keys is not None:
                K, R = known_keys[layer], R * only[owner].to(R.dtype)
            if self.method != "d4s":
                sums.stack(layer, memit_delta(K, R, self.C[layer], lam))
            elif known_keys is None:
                sums.add(layer, K, R)
            else:
                sums.raise_residuals(layer, K, R)
            W = edited_weight(self.W0[layer], sums.offset(layer, self.C[layer], lam))
            if not torch.isfinite(W).all():
                raise EditRejected(f"the edit made layer {layer} non-finite; nothing was applied")
            self._set_weight(self.shadow, layer, W)
            keys[layer], residuals[layer] = K, R
        return keys, residuals

    def retract(self, edit_id: int) -> None:
        """Remove one edit exactly (D4S): subtract its terms from the sums and solve again."""
        record = self.ledger.edit(edit_id)
        if record is None:
            raise StateError(f"there is no edit {edit_id}; `livedit status` lists the edits")
        if record.status != "active":
            raise StateError(f"edit {edit_id} is already {record.status}")
        if self.method != "d4s":
            raise EditRejected(f"this state uses {self.method}; exact retraction needs d4s")
        sums = self.sums.copy()
        self._subtract(sums, edit_id)
        self._commit(sums, [], {edit_id: "retracted"}, f"retract edit {edit_id}")

    def _commit(self, sums: EditSums, new_edits: list[NewEdit], ended: dict[int, str], reason: str) -> list[int]:
        weights = self.weights_from(sums)
        norms = [layer_norms(layer, weights[layer], self.W0[layer]) for layer in self.layers]
        generation = self.ledger.current_generation()[0] + 1
        name = write_generation(self.sums_dir, generation, sums)
        try:
            ids = self.ledger.record_generation(generation, name, reason, new_edits, self.method, ended, norms)
        except BaseException:
            (self.sums_dir / name).unlink(missing_ok=True)
            raise
        self.sums = sums
        remove_other_generations(self.sums_dir, keep=name)
        with self.lock:
            for layer, W in weights.items():
                self._set_weight(self.shadow, layer, W)
                self._set_weight(self.model, layer, W)
        log.info("%s: generation %d committed", reason, generation)
        return ids

    # -- reports ---------------------------------------------------------------------------
    def norms(self) -> list[LayerNorms]:
        current = self.current_weights()
        return [layer_norms(layer, current[layer], self.W0[layer]) for layer in self.layers]

    def export(self, out: Path) -> Path:
        """A standard Hugging Face checkpoint of the edited model."""
        out = Path(out)
        if out.exists() and any(out.iterdir()):
            raise StateError(f"{out} exists and is not empty; choose a new folder")
        with self.lock:
            self.model.save_pretrained(out)
        self.tokenizer.save_pretrained(out)
        return out


def check_layers(config: Config, model) -> None:
    count = layer_count(model)
    for key in ("layers", "chat_layers"):
        layers = getattr(config.editing, key)
        if layers and max(layers) >= count:
            raise ConfigError(f"[editing] {key} {layers}: this model has layers 0 to {count - 1}")
        if layers and max(layers) == count - 1:
            raise ConfigError(f"[editing] {key} {layers}: layer {count - 1} is this model's last block; the "
                              "target enters after the last edited layer at the subject and needs later "
                              f"layers to reach the answer, so end the window at {count - 2} or below")
