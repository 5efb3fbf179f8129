"""The guard: every batch is checked as a candidate (solved, not committed) before it lands.

Three figures, each against a bound of [guard] in config.toml:
- the largest per-layer L1 growth over W0 of the whole state after the batch;
- the batch's own efficacy: the share of its facts whose answer on the candidate holds the
  new object (the chat answer for a fact with a question, a short completion otherwise);
- drift on a fixed set of unrelated probes (QAEdit locality questions and held-out WikiText)
  against the unedited model: top-1 token agreement and mean KL (assistant.evaluation.drift),
  for the whole state after the batch (a capacity, like the L1 bound), and the agreement
  that this batch alone takes away from the served model (its own harm).

``judge`` turns the figures into a verdict; ``updater.apply`` commits a passing batch, splits
a failing one and retries the halves, and rejects a single failing fact with its figures.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

from assistant.config import Config, GuardConfig
from assistant.evaluation.datasets import edit_records, heldout_text, load_edit_facts
from assistant.evaluation.drift import DriftReference, measure_drift, question_probes, reference, text_probes
from assistant.evaluation.locality import locality_questions
from assistant.model.answers import answer_contains
from assistant.facts import Fact
from updater.detect.probing import ProbeSettings, ask_forms

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class GuardFigures:
    l1_growth: dict[int, float]          # layer -> L1(candidate) / L1(W0) - 1
    hits: int                            # facts of the batch whose answer holds the new object
    facts: int
    agreement: float                     # top-1 agreement with the unedited model on the probes
    kl: float                            # mean KL from the unedited model, nats
    answers: dict[str, str] = field(default_factory=dict)    # fact id -> the candidate's answer
    agreement_drop: float = 0.0          # the batch's own: the served model's agreement minus the candidate's

    @property
    def max_l1_growth(self) -> float:
        return max(self.l1_growth.values(), default=0.0)

    @property
    def efficacy(self) -> float:
        return self.hits / self.facts if self.facts else 1.0

    def to_json(self) -> dict:
        return {**asdict(self), "l1_growth": {str(k): v for k, v in self.l1_growth.items()},
                "max_l1_growth": self.max_l1_growth, "efficacy": self.efficacy}


@dataclass(frozen=True)
class Verdict:
    figures: GuardFigures
    reasons: tuple[str, ...]             # each bound the candidate broke; empty: commit

    @property
    def ok(self) -> bool:
        return not self.reasons

    def summary(self) -> str:
        f = self.figures
        figures = (f"L1 growth {f.max_l1_growth:.2%}, efficacy {f.hits}/{f.facts}, "
                   f"agreement {f.agreement:.3f} (this batch -{f.agreement_drop:.3f}), KL {f.kl:.3f}")
        return figures if self.ok else f"{'; '.join(self.reasons)} ({figures})"


def judge(figures: GuardFigures, bounds: GuardConfig) -> Verdict:
    """The bounds ``figures`` break, each said with its numbers."""
    reasons = []
    if figures.max_l1_growth > bounds.max_l1_growth:
        layer = max(figures.l1_growth, key=figures.l1_growth.get)
        reasons.append(f"layer {layer} L1 growth {figures.max_l1_growth:.2%} > {bounds.max_l1_growth:.2%}")
    if figures.efficacy < bounds.min_efficacy:
        reasons.append(f"efficacy {figures.hits}/{figures.facts} < {bounds.min_efficacy:.0%}")
    if figures.agreement < bounds.min_agreement:
        reasons.append(f"probe agreement {figures.agreement:.3f} < {bounds.min_agreement:.3f}")
    if figures.agreement_drop > bounds.max_agreement_drop_per_fact * figures.facts:
        reasons.append(f"this batch alone lowers probe agreement by {figures.agreement_drop:.3f} > "
                       f"{bounds.max_agreement_drop_per_fact:.3f} x {figures.facts} fact(s)")
    if figures.kl > bounds.max_kl:
        reasons.append(f"probe KL {figures.kl:.3f} > {bounds.max_kl:.3f}")
    return Verdict(figures, tuple(reasons))


def probe_questions(config: Config) -> list[str]:
    """The guard's unrelated chat questions: the first locality question of QAEdit's last
    records, away from the slices that the benchmarks edit and tune on (records 0-499)."""
    count = config.guard.probe_questions
    if not count:
        return []
    shared = config.paths.shared_data_dir()
    total = len(edit_records(shared, "qaedit"))
    return locality_questions(load_edit_facts(shared, "qaedit", max(total - count, 0), count))


class Guard:
    """The bounds, the unedited model's reference on the probes, and the check of a candidate."""

    def __init__(self, bounds: GuardConfig, ref: DriftReference, probe: ProbeSettings):
        self.bounds, self.ref, self.probe = bounds, ref, probe
        self._served: tuple[int, float] | None = None        # (generation, its probe agreement)

    def served_agreement(self, editor) -> float:
        """The probe agreement of the served model (measured once per committed generation)."""
        generation = editor.generation
        if self._served is None or self._served[0] != generation:
            with editor.weights.reading():
                drift = measure_drift(editor.model, self.ref, editor.tokenizer.pad_token_id)
            self._served = (generation, drift.agreement)
        return self._served[1]

    @classmethod
    def for_editor(cls, editor, config: Config, questions: list[str] | None = None,
                   texts: list[str] | None = None) -> "Guard":
        """Build the probes and the unedited reference on the editor's shadow (chat goes on)."""
        bounds = config.guard
        questions = probe_questions(config) if questions is None else questions
        texts = heldout_text(config.paths.shared_data_dir(), bounds.probe_texts) if texts is None else texts
        tok = editor.tokenizer
        with editor.base_shadow() as base:
            probes = question_probes(base, tok, questions, bounds.probe_tokens, editor.system_prompt)
            probes += text_probes(tok, texts, bounds.probe_tokens)
            ref = reference(base, probes, tok.pad_token_id)
        log.info("guard: %d probes, %d scored positions", len(probes), len(ref.top1))
        return cls(bounds, ref, ProbeSettings(system_prompt=editor.system_prompt))

    def check(self, editor, candidate, facts: list[Fact]) -> Verdict:
        """Measure the pending candidate (on the editor's shadow) and judge it."""
        shadow, tok = editor.shadow, editor.tokenizer
        forms = [("question", f.question) if f.question else ("cloze", f.filled_prompt) for f in facts]
        said = ask_forms(shadow, tok, forms, self.probe)
        hits = sum(answer_contains(a, f.target_new) for a, f in zip(said, facts))
        drift = measure_drift(shadow, self.ref, tok.pad_token_id)
        figures = GuardFigures({n.layer: n.growth for n in candidate.norms}, hits, len(facts), drift.agreement,
                               drift.kl, {f.id: a for f, a in zip(facts, said)},
                               agreement_drop=self.served_agreement(editor) - drift.agreement)
        verdict = judge(figures, self.bounds)
        log.info("guard: %s: %s", "commit" if verdict.ok else "refuse", verdict.summary())
        return verdict
