"""Edit metrics: CounterFact-style probability comparisons and chat efficacy.

Efficacy: P(new) > P(true) after the edit prompt. Generalisation: the same after the
paraphrases. Specificity: P(true) > P(new) after neighbourhood prompts (the
neighbour's own answer against the edit's new object). Probabilities are compared as
the mean per-token negative log-likelihood of each completion, as ROME does.
Chat efficacy: the greedy chat answer contains the new object after normalisation.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass

import torch

from assistant.model.answers import answer_contains, normalize_answer
from assistant.model.chat import answers
from assistant.facts import Fact

Z95 = 1.959964


@torch.no_grad()
def completion_logprobs(model, tokenizer, prompts: list[str], completions: list[str],
                        batch_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Total log-probability of each completion (with a leading space) after its prompt,
    and its number of tokens. Two (N,) tensors. Only the completion's positions go
    through the output head, which is most of the work for a long prompt."""
    device = next(model.parameters()).device
    body, head = model.base_model, model.get_output_embeddings()
    everything = [(tokenizer(p).input_ids, tokenizer(" " + c, add_special_tokens=False).input_ids)
                  for p, c in zip(prompts, completions)]
    order = sorted(range(len(everything)), key=lambda i: len(everything[i][0]) + len(everything[i][1]))
    totals, counts = [], []
    for start in range(0, len(order), batch_size):
        encoded = [everything[i] for i in order[start:start + batch_size]]
        width = max(len(p) + len(c) for p, c in encoded)
        ids = torch.full((len(encoded), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        rows, positions, targets = [], [], []
        for i, (p, c) in enumerate(encoded):
            ids[i, :len(p) + len(c)] = torch.tensor(p + c)
            mask[i, :len(p) + len(c)] = 1
            rows += [i] * len(c)
            positions += range(len(p) - 1, len(p) + len(c) - 1)
            targets += c
        hidden = body(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
        logits = head(hidden[torch.tensor(rows, device=device), torch.tensor(positions, device=device)]).float()
        token_lp = torch.log_softmax(logits, -1).gather(1, torch.tensor(targets, device=device)[:, None])[:, 0]
        per_row = torch.zeros(len(encoded), dtype=torch.float64, device=device)
        per_row.index_add_(0, torch.tensor(rows, device=device), token_lp.double())
        totals += per_row.tolist()
        counts += [len(c) for _, c in encoded]
    unsorted = torch.empty(len(order), dtype=torch.long)
    unsorted[torch.tensor(order, dtype=torch.long)] = torch.arange(len(order))
    return torch.tensor(totals, dtype=torch.float64)[unsorted], torch.tensor(counts, dtype=torch.float64)[unsorted]


@torch.no_grad()
def next_token_logprobs(model, tokenizer, prompts: list[str], batch_size: int = 16) -> torch.Tensor:
    """log P(next token | prompt) over the vocabulary, for each prompt. (N, V)"""
    device = next(model.parameters()).device
    body, head = model.base_model, model.get_output_embeddings()
    encoded = [tokenizer(p).input_ids for p in prompts]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    result = [None] * len(encoded)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        width = max(len(encoded[i]) for i in chunk)
        ids = torch.full((len(chunk), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, i in enumerate(chunk):
            ids[row, :len(encoded[i])] = torch.tensor(encoded[i])
            mask[row, :len(encoded[i])] = 1
        hidden = body(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
        last = torch.tensor([len(encoded[i]) - 1 for i in chunk], device=device)
        logprobs = torch.log_softmax(head(hidden[torch.arange(len(chunk), device=device), last]).float(), -1)
        for row, i in enumerate(chunk):
            result[i] = logprobs[row].cpu()
    return torch.stack(result)


def completion_nll(model, tokenizer, prompts: list[str], completions: list[str], batch_size: int = 32) -> torch.Tensor:
    """Mean per-token NLL of each completion (with a leading space) after its prompt. (N,)"""
    totals, counts = completion_logprobs(model, tokenizer, prompts, completions, batch_size)
    return (-totals / counts).float()


@torch.no_grad()
def perplexity(model, tokenizer, texts: list[str], window: int = 256) -> float:
    """exp of the mean NLL per predicted token over the texts' token stream, cut into
    windows of ``window`` tokens (each window predicts all but its first token)."""
    device = next(model.parameters()).device
    stream = [t for text in texts for t in tokenizer(text, add_special_tokens=False).input_ids]
    total, predicted = 0.0, 0
    for start in range(0, len(stream), window):
        chunk = stream[start:start + window]
        if len(chunk) < 2:
            continue
        ids = torch.tensor([chunk], device=device)
        logprobs = torch.log_softmax(model(input_ids=ids).logits.float()[0, :-1], -1)
        total -= logprobs.gather(1, ids[0, 1:, None]).sum().item()
        predicted += len(chunk) - 1
    if not predicted:
        raise ValueError("perplexity needs at least two tokens of text")
    return math.exp(total / predicted)


def ngram_entropy(words: list[str], n: int) -> float:
    """Entropy in bits of the distribution of a word sequence's n-grams (0 when there are none)."""
    grams = Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
    total = sum(grams.values())
    return -sum(c / total * math.log2(c / total) for c in grams.values()) if total else 0.0


def fluency(text: str, weights: dict[int, float] | None = None) -> float:
    """ROME's fluency: the weighted mean of the bi- and tri-gram entropies (weights 2/3 and
    4/3) of a generated text's words. Repetitive text scores low."""
    weights = weights or {2: 2 / 3, 3: 4 / 3}
    words = re.findall(r"\w+|[^\w\s]", text.lower())
    return sum(w * ngram_entropy(words, n) for n, w in weights.items()) / len(weights)


def option_logprobs(model, tokenizer, prompts: list[str], options: list[list[str]]) -> list[torch.Tensor]:
    """Total log-probability of each option (with a leading space) after its prompt. Items
    whose options are all one token are scored from a single forward pass of the prompt."""
    tokens = [[tokenizer(" " + o, add_special_tokens=False).input_ids for o in opts] for opts in options]
    single = [i for i, ids in enumerate(tokens) if all(len(t) == 1 for t in ids)]
    scores: list[torch.Tensor | None] = [None] * len(prompts)
    if single:
        next_lp = next_token_logprobs(model, tokenizer, [prompts[i] for i in single]).double()
        for row, i in enumerate(single):
            scores[i] = next_lp[row, [t[0] for t in tokens[i]]]
    rest = [(i, o) for i, opts in enumerate(options) if scores[i] is None for o in opts]
    if rest:
        totals, _ = completion_logprobs(model, tokenizer, [prompts[i] for i, _ in rest], [o for _, o in rest])
        at = 0
        for i in dict.fromkeys(i for i, _ in rest):
            scores[i] = totals[at:at + len(options[i])]
            at += len(options[i])
    return scores


def choice_accuracy(model, tokenizer, prompts: list[str], options: list[list[str]], answers: list[int]) -> float:
    """Share of items whose highest-likelihood option (total log-probability after the
    prompt) is the right one."""
    scores = option_logprobs(model, tokenizer, prompts, options)
    return sum(int(torch.argmax(s).item() == a) for s, a in zip(scores, answers)) / max(len(answers), 1)


@dataclass(frozen=True)
class CounterfactScores:
    efficacy: float                # share of edit prompts where P(new) > P(true)
    paraphrase: float              # the same on paraphrase prompts
    neighborhood: float            # share of neighbourhood prompts where P(true) > P(new)
    efficacy_magnitude: float      # mean P(new) - P(true) on edit prompts (per-token probabilities)
    paraphrase_magnitude: float    # the same on paraphrase prompts
    neighborhood_magnitude: float  # mean P(true) - P(new) on neighbourhood prompts


def _prefers(model, tokenizer, prompts, first, second) -> tuple[torch.Tensor, torch.Tensor]:
    """Whether ``first`` is likelier than ``second`` after each prompt, and by how much."""
    if not prompts:
        return torch.tensor([math.nan]), torch.tensor([math.nan])
    nll_first = completion_nll(model, tokenizer, prompts, first)
    nll_second = completion_nll(model, tokenizer, prompts, second)
    return (nll_first < nll_second).float(), torch.exp(-nll_first) - torch.exp(-nll_second)


def counterfact_scores(model, tokenizer, facts: list[Fact]) -> CounterfactScores:
    with_true = [f for f in facts if f.target_true]
    if not with_true:
        raise ValueError("CounterFact scores need facts with target_true")
    efficacy, magnitude = _prefers(model, tokenizer, [f.filled_prompt for f in with_true],
                                   [f.target_new for f in with_true], [f.target_true for f in with_true])
    para = [(p, f) for f in with_true for p in f.paraphrases]
    paraphrase, para_magnitude = _prefers(model, tokenizer, [p for p, _ in para], [f.target_new for _, f in para],
                                          [f.target_true for _, f in para])
    hood = [(p, a, f) for f in with_true for p, a in f.neighborhood]
    neighborhood, hood_magnitude = _prefers(model, tokenizer, [p for p, _, _ in hood], [a for _, a, _ in hood],
                                            [f.target_new for _, _, f in hood])
    return CounterfactScores(*(t.mean().item() for t in (efficacy, paraphrase, neighborhood, magnitude,
                                                           para_magnitude, hood_magnitude)))


@dataclass(frozen=True)
class ChatScores:
    answered: int                   # questions answered with the new object
    questions: int
    rephrased: int                  # first rephrasings answered with it
    rephrasings: int
    rephrased_with_subject: int     # the same, over the rephrasings that contain the subject
    rephrasings_with_subject: int
    answers: list[str]
    paraphrase_answers: list[str]

    @property
    def efficacy(self) -> float:
        return self.answered / max(self.questions, 1)

    @property
    def paraphrase(self) -> float:
        return self.rephrased / max(self.rephrasings, 1)

    @property
    def paraphrase_with_subject(self) -> float:
        return self.rephrased_with_subject / max(self.rephrasings_with_subject, 1)

    def to_json(self) -> dict:
        counts = {"answered": (self.answered, self.questions), "rephrased": (self.rephrased, self.rephrasings),
                  "rephrased_with_subject": (self.rephrased_with_subject, self.rephrasings_with_subject)}
        return {"efficacy": self.efficacy, "paraphrase": self.paraphrase,
                "paraphrase_with_subject": self.paraphrase_with_subject,
                **{name: {"count": k, "of": n, "interval95": wilson(k, n)} for name, (k, n) in counts.items()}}


def mentions_subject(text: str, subject: str) -> bool:
    """Whether a question names the subject (normalised words, in order): without it a
    subject-key edit has no key to fire on."""
    plain = lambda t: normalize_answer(re.sub(r"['’]s\b", "", t))  # noqa: E731  (Paris's: Paris)
    words, wanted = plain(text).split(), plain(subject).split()
    return bool(wanted) and any(words[i:i + len(wanted)] == wanted for i in range(len(words) - len(wanted) + 1))


def chat_scores(model, tokenizer, facts: list[Fact], max_new_tokens: int = 32, system_prompt: str = "") -> ChatScores:
    """Chat efficacy: greedy answers through the chat template, checked for the new object;
    the same for each fact's first rephrasing."""
    questions = [f.question or f.filled_prompt for f in facts]
    direct = answers(model, tokenizer, questions, max_new_tokens, system_prompt)
    para_facts = [f for f in facts if f.paraphrases]
    para = answers(model, tokenizer, [f.paraphrases[0] for f in para_facts], max_new_tokens, system_prompt)
    answered = sum(answer_contains(a, f.target_new) for a, f in zip(direct, facts))
    hits = [answer_contains(a, f.target_new) for a, f in zip(para, para_facts)]
    named = [mentions_subject(f.paraphrases[0], f.subject) for f in para_facts]
    return ChatScores(answered, len(facts), sum(hits), len(hits), sum(h and n for h, n in zip(hits, named)),
                      sum(named), direct, para)


def same_start(answer: str, reference: str, words: int = 8) -> bool:
    """Whether two answers agree in their first ``words`` normalised words."""
    return normalize_answer(answer).split()[:words] == normalize_answer(reference).split()[:words]


def wilson(k: int, n: int) -> list[float]:
    """Wilson score 95% interval of a proportion k / n."""
    if not n:
        return [math.nan, math.nan]
    p, z2 = k / n, Z95 ** 2
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return [max(0.0, centre - half), min(1.0, centre + half)]
