"""Asking the served model about curated facts: its greedy answer and teacher-forced scores.

A fact with a natural question is asked through the chat template, as users ask it. A
fact without one is given its cloze prompt as a plain greedy completion of a few tokens.
The answer matches when it holds the curated object (or an alias) after normalisation.
The teacher-forced scores are the mean per-token probabilities of the object and of the
model's own answer after the same prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from assistant.model.chat import chat_prompt
from assistant.evaluation.metrics import completion_nll
from assistant.model.answers import answer_contains, asked_answers
from updater.store.records import CuratedFact


@dataclass(frozen=True)
class ProbeSettings:
    question_tokens: int = 32        # longest chat answer to a question
    cloze_tokens: int = 8            # longest completion of a cloze prompt
    batch_size: int = 16             # sequences per generation batch
    system_prompt: str = ""          # the served chat's system prompt


@dataclass(frozen=True)
class Probe:
    form: str                   # "question" or "cloze"
    text: str                   # the question, or the filled cloze prompt
    answer: str                 # the model's greedy answer
    match: bool                 # the answer holds the object or an alias
    p_object: float | None      # mean per-token probability of the object after the prompt
    p_answer: float | None      # the same for the model's answer (None when it is empty)


def probe_form(fact: CuratedFact) -> tuple[str, str]:
    """How a fact is asked: ("question", its question) or ("cloze", its filled prompt)."""
    return ("question", fact.question) if fact.question else ("cloze", fact.filled_prompt)


def greedy_completions(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int = 16) -> list[str]:
    """The first line of each prompt's greedy continuation, in left-padded batches."""
    return asked_answers(model, tokenizer, [("cloze", p) for p in prompts], cloze_tokens=max_new_tokens,
                         batch_size=batch_size)


def ask_forms(model, tokenizer, forms: list[tuple[str, str]], settings: ProbeSettings) -> list[str]:
    return asked_answers(model, tokenizer, forms, settings.system_prompt, settings.question_tokens,
                         settings.cloze_tokens, settings.batch_size)


def teacher_forced(model, tokenizer, contexts: list[str], completions: list[str], batch_size: int = 16) -> list[float]:
    """Mean per-token probability of each completion after its context."""
    if not contexts:
        return []
    return torch.exp(-completion_nll(model, tokenizer, contexts, completions, batch_size)).tolist()


def probe_facts(model, tokenizer, facts: list[CuratedFact], settings: ProbeSettings = ProbeSettings()) -> list[Probe]:
    """Ask the model each fact (batched greedy generation) and score the object against its answer."""
    forms = [probe_form(fact) for fact in facts]
    said = ask_forms(model, tokenizer, forms, settings)
    contexts = [chat_prompt(tokenizer, text, settings.system_prompt) if form == "question" else text
                for form, text in forms]
    p_object = teacher_forced(model, tokenizer, contexts, [fact.object for fact in facts], settings.batch_size)
    spoken = [i for i, text in enumerate(said) if text]
    scored = teacher_forced(model, tokenizer, [contexts[i] for i in spoken], [said[i] for i in spoken],
                            settings.batch_size)
    p_answer: list[float | None] = [None] * len(facts)
    for i, p in zip(spoken, scored):
        p_answer[i] = p
    return [Probe(form, text, answer, answer_contains(answer, fact.object, fact.aliases), p_obj, p_ans)
            for (form, text), answer, fact, p_obj, p_ans in zip(forms, said, facts, p_object, p_answer)]
