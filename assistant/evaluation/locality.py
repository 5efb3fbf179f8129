"""Locality of edits in chat: how much of the unedited model's answers to unrelated
questions an edited model keeps.

The reference is the unedited model's own greedy answer to each question. Two measures
compare an edited model with it:

- agreement: the share of the answer's tokens that the edited model still ranks first,
  teacher-forced on the unedited answer (smooth and comparable across runs; drift.py);
- kept: how many answers, generated again by the edited model, keep their first eight
  words (what a user sees).

The questions are QAEdit's locality questions of the edited facts and general questions
that no edit touches (zsRE's Natural Questions, ``general_questions``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from assistant.corpora import edit_file_records
from assistant.evaluation.drift import DriftReference, answered_probes, measure_drift, reference
from assistant.evaluation.metrics import same_start, wilson
from assistant.facts import Fact
from assistant.model.chat import answers

NQ_PREFIX = "nq question:"


@dataclass(frozen=True)
class LocalityReference:
    questions: list[str]
    answers: list[str]            # the unedited model's greedy answers
    drift: DriftReference         # its top-1 tokens along those answers
    max_new_tokens: int
    system_prompt: str


@dataclass(frozen=True)
class Locality:
    agreement: float              # share of answer tokens whose top-1 is unchanged (teacher-forced)
    kl: float                     # mean coarse KL(unedited || edited) per answer token, nats
    kept: int                     # answers that keep their first eight words
    questions: int
    answers: list[str]            # the edited model's answers

    def to_json(self) -> dict:
        return {"agreement": self.agreement, "kl": self.kl, "kept": self.kept, "questions": self.questions,
                "kept_share": self.kept / self.questions if self.questions else float("nan"),
                "kept_interval95": wilson(self.kept, self.questions)}


def locality_questions(facts: list[Fact]) -> list[str]:
    """The first neighbourhood question of each fact: what must not change."""
    return [f.neighborhood[0][0] for f in facts if f.neighborhood]


def unrelated_questions(facts: list[Fact], shared_data: Path, general: int) -> list[str]:
    """The locality questions of ``facts`` and ``general`` general questions."""
    return locality_questions(facts) + general_questions(shared_data, general)


def general_questions(shared_data: Path, count: int) -> list[str]:
    """``count`` general questions no edit benchmark edits: the Natural Questions that zsRE
    keeps as its locality checks, from its first record on, as a user would type them."""
    chosen = []
    for record in edit_file_records(shared_data, "zsre"):
        text = record.get("loc", "").strip()
        if text.lower().startswith(NQ_PREFIX):
            text = text[len(NQ_PREFIX):].strip()
        if text and len(chosen) < count:
            chosen.append(text[0].upper() + text[1:].rstrip("?") + "?")
    return chosen


def locality_reference(model, tokenizer, questions: list[str], max_new_tokens: int,
                       system_prompt: str = "") -> LocalityReference:
    """The unedited model's answers and its figures along them (``model`` must be unedited)."""
    answered = answered_probes(model, tokenizer, questions, max_new_tokens, system_prompt)
    probes = [probe for _, probe in answered]
    texts = [tokenizer.decode(p.ids[p.first:], skip_special_tokens=True).strip() for p in probes]
    return LocalityReference([q for q, _ in answered], texts, reference(model, probes, tokenizer.pad_token_id),
                             max_new_tokens, system_prompt)


def measure_locality(model, tokenizer, ref: LocalityReference) -> Locality:
    """Both measures of ``model`` against the unedited reference."""
    drift = measure_drift(model, ref.drift, tokenizer.pad_token_id)
    now = answers(model, tokenizer, ref.questions, ref.max_new_tokens, ref.system_prompt)
    kept = sum(same_start(a, b) for a, b in zip(now, ref.answers))
    return Locality(drift.agreement, drift.kl, kept, len(ref.questions), now)
