"""What the model says: answers compared after normalisation, and whether the model says a
fact's new object where the fact is asked (its chat answer to the question, or its
completion of the plain prompt), as the updater's detector and the engine's refinement
check it."""

from __future__ import annotations

import re
import string
import unicodedata

from assistant.facts import Fact
from assistant.model.chat import answers, greedy_continuations

_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """Lower case, no accents, punctuation, articles or extra spaces."""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(ch for ch in text if not unicodedata.combining(ch)).lower()
    text = "".join(" " if ch in string.punctuation else ch for ch in text)
    return " ".join(_ARTICLES.sub(" ", text).split())


def answer_contains(answer: str, target: str, aliases: tuple[str, ...] = ()) -> bool:
    """Whether the answer holds the target (or an alias) as whole words."""
    haystack = f" {normalize_answer(answer)} "
    return any(f" {normalize_answer(t)} " in haystack for t in (target, *aliases) if normalize_answer(t))


def cloze_completions_hold(model, tokenizer, facts: list[Fact], max_new_tokens: int = 8) -> list[bool]:
    """Whether the first line of each fact's greedy continuation of its filled prompt holds
    the new object (what the updater's detector checks for a fact without a question)."""
    encoded = [tokenizer(f.filled_prompt).input_ids for f in facts]
    said = greedy_continuations(model, tokenizer, encoded, max_new_tokens)
    return [answer_contains(text.strip().split("\n", 1)[0], f.target_new) for text, f in zip(said, facts)]


def said_as_asked(model, tokenizer, facts: list[Fact], system_prompt: str = "", answer_tokens: int = 32,
                  cloze_tokens: int = 8) -> list[bool]:
    """Whether the model says each fact's new object where the fact is asked: its greedy chat
    answer to the fact's question, or, without one, its completion of the filled prompt."""
    said = [False] * len(facts)
    questions = [i for i, f in enumerate(facts) if f.question]
    clozes = [i for i, f in enumerate(facts) if not f.question]
    if questions:
        replies = answers(model, tokenizer, [facts[i].question for i in questions], answer_tokens, system_prompt)
        for i, reply in zip(questions, replies):
            said[i] = answer_contains(reply, facts[i].target_new)
    if clozes:
        for i, hold in zip(clozes, cloze_completions_hold(model, tokenizer, [facts[i] for i in clozes], cloze_tokens)):
            said[i] = hold
    return said
