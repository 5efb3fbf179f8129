"""The editing engine: MEMIT, sequential MEMIT and D4S on a shadow of the served model.

The shadow shares every parameter with the served model except the edited layers. All
measuring and optimising happens on the shadow. A batch is first solved as a ``Candidate``
(the shadow then holds its weights, so a guard can measure it); ``commit`` persists the new
sums and swaps the new edited-layer weights into the served model under a short lock, and
``discard`` puts the shadow back. ``apply`` is candidate plus commit for each batch.

    with Editor.open(config) as editor:
        report = editor.apply(facts)
        editor.retract(report.edit_ids[0])
"""

from __future__ import annotations

import copy
import itertools
import logging
from collections.abc import Callable
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from assistant.config import METHODS, Config, EditingConfig
from assistant.editing.batch_solve import BatchSolver
from assistant.editing.closed_form import ridged
from assistant.editing.covariance import load_or_compute
from assistant.editing.gate import EditColumns, gated
from assistant.editing.prompts import PromptSettings, check_lengths
from assistant.errors import ConfigError, EditRejected, InvalidFact, StateError
from assistant.facts import Fact
from assistant.model.architectures import architecture_of, get_module, layer_count, stored_weight, weight_matrix
from assistant.model.loading import LoadedModel, load_model
from assistant.model.weights_lock import WeightsLock
from assistant.state.identity import check_identity, state_dir_for
from assistant.state.l1 import LayerNorms, layer_norms
from assistant.state.ledger import EditRecord, Ledger, NewEdit, StateStatus
from assistant.state.sums import EditSums, edited_weight, read_generation, remove_other_generations, strategy_for, \
    write_generation

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


@dataclass
class Candidate:
    """A solved batch that is not committed yet. While it is pending the editor's shadow holds
    ``weights``; the served model and the durable state are as they were."""
    sums: EditSums                       # the state's sums with the batch in (and ended edits out)
    weights: dict[int, torch.Tensor]     # every edited layer's W = W0 + offset(sums)
    norms: list[LayerNorms]              # their L1 figures against W0
    edits: list[NewEdit]                 # per fact: its (k, r) per layer, P(target), realised fraction
    ended: dict[int, str]                # earlier edits it ends: id -> "superseded" | "retracted"
    reason: str
    generation: int                      # the committed generation it was solved on


def check_retractable(record: EditRecord | None, edit_id: int, method: str) -> None:
    """Raise, saying why, unless ``edit_id`` is an active edit that ``method`` can take out."""
    if record is None:
        raise StateError(f"there is no edit {edit_id}; `livedit status` lists the edits")
    if record.status != "active":
        raise StateError(f"edit {edit_id} is already {record.status}")
    if not strategy_for(method).removable:
        raise EditRejected(f"this state uses {method}; exact retraction needs d4s or d4s-null")


class Editor:
    """Owns the served model's edited layers, their durable sums and the ledger."""

    def __init__(self, loaded: LoadedModel, editing: EditingConfig, system_prompt: str, ledger: Ledger,
                 sums: EditSums, sums_dir: Path, covariances: dict[int, torch.Tensor]):
        self.loaded, self.model, self.tokenizer = loaded, loaded.model, loaded.tokenizer
        self.editing, self.system_prompt = editing, system_prompt
        self._ledger, self.sums, self.sums_dir = ledger, sums, sums_dir
        self.C = covariances
        self._priors: dict[int, object] = {}
        self.arch = architecture_of(self.model)
        self.layers = editing.all_layers          # every layer some fact may edit
        self.names = {layer: self.arch.edited_module.format(layer) for layer in self.layers}
        self.weights = WeightsLock()            # generations read the served weights; commits swap them
        self.W0 = {layer: self._weight(self.model, layer).detach().cpu().clone() for layer in self.layers}
        self.shadow = make_shadow(self.model, list(self.names.values()))   # holds a pending candidate
        self._changes: dict[int, dict] = {}   # id(model) -> layer -> gated change (matrix or EditColumns), for the gate
        self._gates = ExitStack()
        if editing.gate > 0:
            for model in (self.model, self.shadow):
                self._changes[id(model)] = {layer: torch.zeros_like(self._weight(model, layer)) for layer in self.layers}
                modules = {layer: get_module(model, name) for layer, name in self.names.items()}
                self._gates.enter_context(gated(modules, self._changes[id(model)], editing.gate))
        self.prompts = PromptSettings.from_editing(editing, system_prompt)
        self._solver = BatchSolver(self)
        self._pending: Candidate | None = None

    @classmethod
    def open(cls, config: Config, state_dir: Path | str | None = None, method: str | None = None,
             loaded: LoadedModel | None = None, progress: bool = True) -> "Editor":
        """The engine over ``state_dir``, with the served model rebuilt to W0 + committed sums."""
        if method is not None and method not in METHODS:
            raise ConfigError(f"method {method!r} is unknown; use one of {', '.join(METHODS)}")
        loaded = loaded or load_model(config)
        check_layers(config.editing, loaded.model)
        folder = state_dir_for(config, state_dir)
        folder.mkdir(parents=True, exist_ok=True)
        ledger = Ledger.in_state(folder)
        try:
            identity = check_identity(ledger, config, loaded.fingerprint, method, folder)
            arch = architecture_of(loaded.model)
            names = {layer: arch.edited_module.format(layer) for layer in config.editing.all_layers}
            last_block = get_module(loaded.model, arch.block_module.format(config.editing.all_layers[-1]))
            covariances = load_or_compute(loaded.model, loaded.tokenizer, names, last_block,
                                          config.paths.home_dir(), config.paths.shared_data_dir(),
                                          loaded.fingerprint, config.covariance, progress)
            sums_dir = folder / "sums"
            _, file = ledger.current_generation()
            remove_other_generations(sums_dir, keep=file)
            if file:
                sums = read_generation(sums_dir, file, identity["method"])
            else:
                shapes = {layer: tuple(weight_matrix(get_module(loaded.model, name), arch.weight_transposed).shape)
                          for layer, name in names.items()}
                sums = EditSums.empty(identity["method"], shapes)
            editor = cls(loaded, config.editing, config.chat.system_prompt, ledger, sums, sums_dir, covariances)
            editor.fill_gated_shares()
            editor.rebuild()
            return editor
        except BaseException:
            ledger.close()
            raise

    def close(self) -> None:
        """Close the ledger and remove the gate's hooks; the served model keeps W0 + the committed edits."""
        self._gates.close()
        self._ledger.close()

    def __enter__(self) -> "Editor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def method(self) -> str:
        return self.sums.method

    # -- the ledger, read ------------------------------------------------------------------
    @property
    def generation(self) -> int:
        """The committed generation (0: nothing edited yet)."""
        return self._ledger.current_generation()[0]

    def status(self) -> StateStatus:
        return self._ledger.status(self.sums_dir.parent)

    def edits(self, status: str | None = None) -> list[EditRecord]:
        return self._ledger.edits(status)

    def edit(self, edit_id: int) -> EditRecord | None:
        return self._ledger.edit(edit_id)

    def active_edit(self, fact_id: str) -> EditRecord | None:
        """The fact's active edit, if any."""
        return self._ledger.active_edit_for_fact(fact_id)

    def vectors(self, edit_id: int) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """Per layer, the keys K (d_in, m) and residuals R (d_out, m) the edit added."""
        return self._ledger.vectors(edit_id)

    def l1_history(self) -> list[dict]:
        return self._ledger.l1_history()

    # -- weights ---------------------------------------------------------------------------
    def _weight(self, model, layer: int) -> torch.Tensor:
        return weight_matrix(get_module(model, self.names[layer]), self.arch.weight_transposed)

    def _prepared(self, model, layer: int, W: torch.Tensor, gated: torch.Tensor | None = None) -> Callable[[], None]:
        """The work of setting ``layer``'s weight to W, done now, and the install, done when called
        (a copy and, behind the gate, the part of W - W0 the gate acts on: ``gated``, or all of
        it for weights not solved from sums): a swap holds the lock for the install only."""
        parameter = get_module(model, self.names[layer]).weight
        stored = stored_weight(W, self.arch.weight_transposed).to(parameter.device, parameter.dtype)
        changes = self._changes.get(id(model))
        change = None
        if changes is not None:
            change = (W - self.W0[layer] if gated is None else gated).to(parameter.device, parameter.dtype)

        @torch.no_grad()
        def install() -> None:
            parameter.copy_(stored)
            if changes is not None:
                changes[layer] = change
        return install

    def _set_weight(self, model, layer: int, W: torch.Tensor, gated: torch.Tensor | None = None) -> None:
        self._prepared(model, layer, W, gated)()

    def set_solved(self, model, sums: EditSums, layer: int) -> torch.Tensor:
        """Set ``model``'s ``layer`` to what ``sums`` give, with its gated change; returns W."""
        W = self.solve_weight(sums, layer)
        self._set_weight(model, layer, W, self.gated_change(sums, layer))
        return W

    def gated_change(self, sums: EditSums, layer: int) -> torch.Tensor | EditColumns | None:
        """The chat edits' part of ``layer``'s W - W0, which the gate keeps or drops per token
        (cloze edits' change is always served: their subjects' change ratio is no larger than
        unrelated keys' spill-over, so a gate cannot tell them apart): as one matrix, or with
        ``gate_by = "edit"`` as the edits' columns where the method keeps them; None without
        the gate."""
        if self.editing.gate <= 0:
            return None
        prior, lam, dtype = self.prior(layer), self.editing.layer_lambda(layer), self.W0[layer].dtype
        if self.editing.gate_by == "edit":
            columns = sums.gated_columns(layer, prior, lam)
            if columns is not None:
                return columns                       # float64; installed in the layer's device and dtype
        return sums.gated_offset(layer, prior, lam).to(dtype)

    def fill_gated_shares(self) -> None:
        """A state written before the gated share was kept gets it now, from the ledger (d4s:
        the active chat edits' columns) or as all of its change (the stacked methods, whose
        edits cannot be told apart; they were all behind the gate)."""
        missing = [layer for layer in self.layers if self.sums.lacks_gated_share(layer)]
        if not missing:
            return
        chat = [e.id for e in self.edits("active") if e.fact.question]
        vectors = [self.vectors(edit_id) for edit_id in chat]
        for layer in missing:
            self.sums.strategy.fill_gated_share(self.sums, layer, [v[layer] for v in vectors if layer in v])
        log.info("filled the gated share of layer(s) %s from %d chat edit(s)", missing, len(chat))

    def check_plain_weights(self, what: str) -> None:
        """Refuse ``what`` (an export or a weight patch) when the gate is on: plain weights cannot hold it."""
        if self.editing.gate > 0:
            raise ConfigError(f"{what} holds plain weights, which cannot carry the gate ([editing] gate = "
                              f"{self.editing.gate}): set [editing] gate = 0 (or --set editing.gate=0) to write "
                              "it; the same edits then answer without the gate, as a replica would")

    def prior(self, layer: int):
        """What the state's method solves ``layer`` with: C itself, or the projector onto C's
        null space for the null-space methods (an eigendecomposition, made once per layer)."""
        if layer not in self._priors:
            self._priors[layer] = self.sums.strategy.prior(self.covariance(layer), self.editing)
        return self._priors[layer]

    def covariance(self, layer: int) -> torch.Tensor:
        """The C that ``layer`` is solved against: its keys' second moment, with the layer's
        ridge ([editing] chat_ridge on a layer only chat facts edit)."""
        return ridged(self.C[layer], self.editing.layer_ridge(layer))

    def solve_weight(self, sums: EditSums, layer: int) -> torch.Tensor:
        """W0 + the offset ``sums`` give ``layer``; refused if it is not finite."""
        W = edited_weight(self.W0[layer], sums.offset(layer, self.prior(layer), self.editing.layer_lambda(layer)))
        if not torch.isfinite(W).all():
            raise EditRejected(f"the edit made layer {layer}'s weights non-finite; nothing was applied")
        return W

    def current_weights(self) -> dict[int, torch.Tensor]:
        return {layer: self._weight(self.model, layer).detach().cpu().clone() for layer in self.layers}

    def shadow_weights(self) -> dict[int, torch.Tensor]:
        return {layer: self._weight(self.shadow, layer).detach().cpu().clone() for layer in self.layers}

    @contextmanager
    def unedited(self):
        """The served model with its original edited-layer weights while the block runs
        (holding the lock, so no chat sees the swap); the edited weights come back after."""
        with self.weights.swapping():
            edited, gated = self.current_weights(), dict(self._changes.get(id(self.model), {}))
            for layer in self.layers:
                self._set_weight(self.model, layer, self.W0[layer])
            try:
                yield self.model
            finally:
                for layer, W in edited.items():
                    self._set_weight(self.model, layer, W, gated.get(layer))

    @contextmanager
    def base_shadow(self):
        """The shadow with W0's edited layers while the block runs: the unedited model, for
        reference figures, without pausing chat. Refused while a candidate is pending."""
        if self._pending is not None:
            raise StateError("a candidate is pending; commit or discard it first")
        for layer in self.layers:
            self._set_weight(self.shadow, layer, self.W0[layer])
        try:
            yield self.shadow
        finally:
            self._restore_shadow()

    def rebuild(self) -> None:
        """Set the shadow and the served model to W0 + the committed sums."""
        self.swap_in({layer: self.solve_weight(self.sums, layer) for layer in self.layers}, self.sums)

    def swap_in(self, weights: dict[int, torch.Tensor], sums: EditSums | None = None) -> None:
        """Serve ``weights`` (layer -> W), on the shadow too, under the lock. The durable state is
        untouched: ``rebuild`` returns to it. Benchmarks use it to try other solutions. The gate
        acts on the chat edits' part of the change that ``sums`` give, or on all of it without."""
        gated = {layer: self.gated_change(sums, layer) if sums is not None else None for layer in weights}
        installs = [self._prepared(self.model, layer, W, gated[layer]) for layer, W in weights.items()]
        with self.weights.swapping():
            for install in installs:
                install()
        for layer, W in weights.items():            # the engine's own copy: no chat reads it
            self._set_weight(self.shadow, layer, W, gated[layer])

    def _restore_shadow(self) -> None:
        served = self._changes.get(id(self.model), {})
        for layer in self.layers:
            self._set_weight(self.shadow, layer, self._weight(self.model, layer).detach(), served.get(layer))

    # -- editing ---------------------------------------------------------------------------
    def max_prompt_tokens(self) -> int:
        limit = self.editing.max_prompt_tokens
        return limit or int(getattr(self.model.config, "max_position_embeddings", 1024))

    def check_lengths(self, facts: list[Fact]) -> None:
        """Reject, naming the fact, any prompt form longer than the model's context."""
        check_lengths(facts, self.tokenizer, self.prompts, self.max_prompt_tokens())

    def _check_batch(self, facts: list[Fact]) -> None:
        repeated = sorted({f.id for f in facts if sum(g.id == f.id for g in facts) > 1})
        if repeated:
            raise InvalidFact(f"fact id(s) {', '.join(repeated)} appear more than once; give each fact once")
        self.check_lengths(facts)

    def _superseded_by(self, facts: list[Fact]) -> dict[int, str]:
        """The active edits of these facts, which writing them ends; refused where the method
        cannot take an edit out (its Delta would stay in the weights)."""
        ended = {}
        for fact in facts:
            old = self.active_edit(fact.id)
            if old is None:
                continue
            if not self.sums.strategy.removable:
                raise EditRejected(
                    f"fact {fact.id} already has edit {old.id} ({old.fact.target_new!r}); this state uses "
                    f"{self.method}, which cannot take that edit out of the weights, so superseding it would keep "
                    "both. Correct facts in a d4s state, or edit into a new state (--state-dir)")
            ended[old.id] = "superseded"
        return ended

    def apply(self, facts: list[Fact], batch_size: int | None = None, progress=None) -> ApplyReport:
        """Write facts into the weights in batches; each batch is one atomic commit."""
        self._check_batch(facts)
        report = ApplyReport()
        todo = []
        for fact in facts:
            active = self.active_edit(fact.id)
            if active and active.fact.target_new == fact.target_new:
                report.unchanged.append(fact.id)
            else:
                todo.append(fact)
        self._superseded_by(todo)                      # refuse before the first batch commits
        size = len(todo) if self.sums.strategy.one_batch else (batch_size or self.editing.batch_size)
        for start in range(0, len(todo), max(size, 1)):
            batch = todo[start:start + size]
            candidate = self.solve_candidate(batch)
            report.edit_ids += self.commit(candidate)
            report.superseded += list(candidate.ended)
            report.probabilities += [e.target_probability for e in candidate.edits]
            if progress:
                progress(len(batch))
        return report

    def solve_candidate(self, facts: list[Fact]) -> Candidate:
        """Solve one batch on the shadow without committing: keys, targets and each layer's
        weights. Facts with a question are solved with the chat_ settings of [editing] and the
        others with the plain ones (one pass per kind, on the same sums); an active edit of the
        same fact is superseded.
        The shadow keeps the candidate's weights until ``commit`` or ``discard``."""
        if self._pending is not None:
            raise StateError("a candidate is pending; commit or discard it first")
        self._check_batch(facts)
        ended = self._superseded_by(facts)
        sums, weights = self.sums.copy(), self.current_weights()
        try:
            self._take_out(sums, weights, ended)
            new_edits = {}
            for settings, chosen in by_kind(facts, self.editing):
                edits = self._solver.edit_batch(chosen, sums, settings, weights)
                new_edits.update(zip((f.id for f in chosen), edits))
        except BaseException:
            self._restore_shadow()
            raise
        return self._pending_candidate(sums, weights, [new_edits[f.id] for f in facts], ended,
                                       f"edit {len(facts)} fact(s) with {self.method}")

    def _take_out(self, sums: EditSums, weights: dict[int, torch.Tensor], ended: dict[int, str]) -> None:
        """Subtract the ended edits' terms from ``sums`` and solve the layers they touched."""
        touched = set()
        for edit_id in ended:
            gated = bool(self.edit(edit_id).fact.question)
            for layer, (K, R) in self.vectors(edit_id).items():
                self.sums.strategy.remove(sums, layer, K, R, gated)
                touched.add(layer)
        for layer in sorted(touched):
            weights[layer] = self.set_solved(self.shadow, sums, layer)

    def _pending_candidate(self, sums, weights, new_edits, ended, reason) -> Candidate:
        norms = [layer_norms(layer, weights[layer], self.W0[layer]) for layer in self.layers]
        self._pending = Candidate(sums, weights, norms, new_edits, ended, reason, self.generation)
        return self._pending

    def _check_pending(self, candidate: Candidate) -> None:
        if candidate is not self._pending:
            raise StateError("this candidate is not the pending one (committed, discarded, or from another editor)")

    def discard(self, candidate: Candidate) -> None:
        """Drop a pending candidate: the shadow gets the served weights back."""
        self._check_pending(candidate)
        self._pending = None
        self._restore_shadow()

    def commit(self, candidate: Candidate) -> list[int]:
        """Persist a pending candidate as the next generation and serve its weights; returns the
        new edit ids. On any failure nothing is committed and the shadow is restored."""
        self._check_pending(candidate)
        self._pending = None
        try:
            if candidate.generation != self.generation:
                raise StateError("the state moved on since this candidate was solved; solve it again")
            generation = candidate.generation + 1
            name = write_generation(self.sums_dir, generation, candidate.sums)
            try:
                ids = self._ledger.record_generation(generation, name, candidate.reason, candidate.edits,
                                                     self.method, candidate.ended, candidate.norms)
            except BaseException:
                (self.sums_dir / name).unlink(missing_ok=True)
                raise
        except BaseException:
            self._restore_shadow()
            raise
        self.sums = candidate.sums
        remove_other_generations(self.sums_dir, keep=name)
        self.swap_in(candidate.weights, candidate.sums)
        log.info("%s: generation %d committed", candidate.reason, generation)
        return ids

    def retract(self, edit_id: int) -> None:
        """Remove one edit exactly (D4S): subtract its terms from the sums and solve again."""
        check_retractable(self.edit(edit_id), edit_id, self.method)
        if self._pending is not None:
            raise StateError("a candidate is pending; commit or discard it first")
        sums, weights, ended = self.sums.copy(), self.current_weights(), {edit_id: "retracted"}
        try:
            self._take_out(sums, weights, ended)
        except BaseException:
            self._restore_shadow()
            raise
        self.commit(self._pending_candidate(sums, weights, [], ended, f"retract edit {edit_id}"))

    # -- reports ---------------------------------------------------------------------------
    def norms(self) -> list[LayerNorms]:
        current = self.current_weights()
        return [layer_norms(layer, current[layer], self.W0[layer]) for layer in self.layers]

    def export(self, out: Path) -> Path:
        """A standard Hugging Face checkpoint of the edited model."""
        self.check_plain_weights("an exported checkpoint")
        out = Path(out)
        if out.exists() and any(out.iterdir()):
            raise StateError(f"{out} exists and is not empty; choose a new folder")
        with self.weights.reading():
            self.model.save_pretrained(out)
        self.tokenizer.save_pretrained(out)
        return out


def by_kind(facts: list[Fact], editing: EditingConfig) -> list[tuple[EditingConfig, list[Fact]]]:
    """The facts grouped by kind (with a question or without), in order of first appearance,
    each with the settings its kind is solved with. The kinds stay apart even with the same
    settings: only chat facts' change is gated."""
    groups: dict[bool, list[Fact]] = {}
    for fact in facts:
        groups.setdefault(bool(fact.question), []).append(fact)
    return [(editing.for_kind(asked), chosen) for asked, chosen in groups.items()]


def check_layers(editing: EditingConfig, model) -> None:
    count = layer_count(model)
    for key in ("layers", "chat_layers"):
        layers = getattr(editing, key)
        if layers and max(layers) >= count:
            raise ConfigError(f"[editing] {key} {layers}: this model has layers 0 to {count - 1}")
        if layers and max(layers) == count - 1:
            raise ConfigError(f"[editing] {key} {layers}: layer {count - 1} is this model's last block; the "
                              "target enters after the last edited layer at the subject and needs later "
                              f"layers to reach the answer, so end the window at {count - 2} or below")
