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


def asked_answers(model, tokenizer, forms: list[tuple[str, str]], system_prompt: str = "",
                  question_tokens: int = 32, cloze_tokens: int = 8, batch_size: int = 16) -> list[str]:
    """The model's greedy answer to each ("question", text) through the chat template, and
    the first line of its greedy completion of each ("cloze", prompt)."""
    got = [""] * len(forms)
    questions = [i for i, (form, _) in enumerate(forms) if form == "question"]
    clozes = [i for i, (form, _) in enumerate(forms) if form == "cloze"]
    if questions:
        said = answers(model, tokenizer, [forms[i][1] for i in questions], question_tokens, system_prompt, batch_size)
        for i, text in zip(questions, said):
            got[i] = text
    if clozes:
        encoded = [tokenizer(forms[i][1]).input_ids for i in clozes]
        for i, text in zip(clozes, greedy_continuations(model, tokenizer, encoded, cloze_tokens, batch_size)):
            got[i] = first_line(text)
    return got


def first_line(text: str) -> str:
    stripped = text.strip()
    return stripped.split("\n", 1)[0].strip() if stripped else ""


def cloze_completions_hold(model, tokenizer, facts: list[Fact], max_new_tokens: int = 8) -> list[bool]:
    """Whether the first line of each fact's greedy continuation of its filled prompt holds
    the new object (what the updater's detector checks for a fact without a question)."""
    said = asked_answers(model, tokenizer, [("cloze", f.filled_prompt) for f in facts], cloze_tokens=max_new_tokens)
    return [answer_contains(text, f.target_new) for text, f in zip(said, facts)]


def said_as_asked(model, tokenizer, facts: list[Fact], system_prompt: str = "", answer_tokens: int = 32,
                  cloze_tokens: int = 8) -> list[bool]:
    """Whether the model says each fact's new object where the fact is asked: its greedy chat
    answer to the fact's question, or, without one, its completion of the filled prompt."""
    forms = [("question", f.question) if f.question else ("cloze", f.filled_prompt) for f in facts]
    said = asked_answers(model, tokenizer, forms, system_prompt, answer_tokens, cloze_tokens)
    return [answer_contains(text, f.target_new) for text, f in zip(said, facts)]
