"""Edit metrics: CounterFact-style probability comparisons and chat efficacy.

Efficacy: P(new) > P(true) after the edit prompt. Generalisation: the same after the
paraphrases. Specificity: P(true) > P(new) after neighbourhood prompts (the
neighbour's own answer against the edit's new object). Probabilities are compared as
the mean per-token negative log-likelihood of each completion, as ROME does.
Chat efficacy: the greedy chat answer contains the new object after normalisation.
"""

from __future__ import annotations

import re
import string
import unicodedata
from dataclasses import dataclass

import torch

from assistant.chat import answers
from assistant.facts import Fact

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


@torch.no_grad()
def completion_nll(model, tokenizer, prompts: list[str], completions: list[str], batch_size: int = 32) -> torch.Tensor:
    """Mean per-token NLL of each completion (with a leading space) after its prompt. (N,)"""
    device = next(model.parameters()).device
    results = []
    for start in range(0, len(prompts), batch_size):
        pairs = list(zip(prompts[start:start + batch_size], completions[start:start + batch_size]))
        encoded = [(tokenizer(p).input_ids, tokenizer(" " + c, add_special_tokens=False).input_ids) for p, c in pairs]
        width = max(len(p) + len(c) for p, c in encoded)
        ids = torch.full((len(encoded), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, (p, c) in enumerate(encoded):
            ids[i, :len(p) + len(c)] = torch.tensor(p + c)
            mask[i, :len(p) + len(c)] = 1
        logprobs = torch.log_softmax(model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float(), -1)
        for i, (p, c) in enumerate(encoded):
            positions = torch.arange(len(p) - 1, len(p) + len(c) - 1, device=device)
            token_lp = logprobs[i, positions, torch.tensor(c, device=device)]
            results.append(-token_lp.mean().item())
    return torch.tensor(results)


@dataclass(frozen=True)
class CounterfactScores:
    efficacy: float          # share of edit prompts where P(new) > P(true)
    paraphrase: float        # the same on paraphrase prompts
    neighborhood: float      # share of neighbourhood prompts where P(true) > P(new)
    efficacy_magnitude: float  # mean P(new) - P(true) on edit prompts (per-token probabilities)


def _prefers(model, tokenizer, prompts, first, second) -> tuple[torch.Tensor, torch.Tensor]:
    nll_first = completion_nll(model, tokenizer, prompts, first)
    nll_second = completion_nll(model, tokenizer, prompts, second)
    return (nll_first < nll_second).float(), torch.exp(-nll_first) - torch.exp(-nll_second)


def counterfact_scores(model, tokenizer, facts: list[Fact]) -> CounterfactScores:
    with_true = [f for f in facts if f.target_true]
    if not with_true:
        raise ValueError("CounterFact scores need facts with target_true")
    prompts = [f.filled_prompt for f in with_true]
    new, true = [f.target_new for f in with_true], [f.target_true for f in with_true]
    efficacy, magnitude = _prefers(model, tokenizer, prompts, new, true)
    para = [(p, f) for f in with_true for p in f.paraphrases]
    paraphrase = _prefers(model, tokenizer, [p for p, _ in para], [f.target_new for _, f in para],
                          [f.target_true for _, f in para])[0] if para else torch.tensor([float("nan")])
    hood = [(p, a, f) for f in with_true for p, a in f.neighborhood]
    neighborhood = _prefers(model, tokenizer, [p for p, _, _ in hood], [a for _, a, _ in hood],
                            [f.target_new for _, _, f in hood])[0] if hood else torch.tensor([float("nan")])
    return CounterfactScores(efficacy.mean().item(), paraphrase.mean().item(), neighborhood.mean().item(),
                             magnitude.mean().item())


@dataclass(frozen=True)
class ChatScores:
    efficacy: float                 # share of questions answered with the new object
    paraphrase: float               # the same for paraphrased questions
    locality: float                 # share of unrelated questions whose answer kept its first 8 words
    answers: list[str]
    paraphrase_answers: list[str]


def chat_scores(model, tokenizer, facts: list[Fact], max_new_tokens: int = 32, system_prompt: str = "",
                locality_before: list[str] | None = None) -> ChatScores:
    """Chat efficacy: greedy answers through the chat template, checked for the new object."""
    questions = [f.question or f.filled_prompt for f in facts]
    direct = answers(model, tokenizer, questions, max_new_tokens, system_prompt)
    para_facts = [f for f in facts if f.paraphrases]
    para = answers(model, tokenizer, [f.paraphrases[0] for f in para_facts], max_new_tokens, system_prompt)
    efficacy = sum(answer_contains(a, f.target_new) for a, f in zip(direct, facts)) / max(len(facts), 1)
    paraphrase = sum(answer_contains(a, f.target_new) for a, f in zip(para, para_facts)) / max(len(para_facts), 1)
    locality = float("nan")
    if locality_before is not None:
        after = answers(model, tokenizer, locality_questions(facts), max_new_tokens, system_prompt)
        locality = sum(same_start(a, b) for a, b in zip(after, locality_before)) / max(len(after), 1)
    return ChatScores(efficacy, paraphrase, locality, direct, para)


def same_start(answer: str, reference: str, words: int = 8) -> bool:
    """Whether two answers agree in their first ``words`` normalised words."""
    return normalize_answer(answer).split()[:words] == normalize_answer(reference).split()[:words]


def locality_questions(facts: list[Fact]) -> list[str]:
    """The first neighbourhood question of each fact: what must not change."""
    return [f.neighborhood[0][0] for f in facts if f.neighborhood]
