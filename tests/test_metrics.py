"""Metrics on hand-made cases: a bigram toy model whose every probability is known."""

import math
from types import SimpleNamespace

import pytest
import torch

from assistant.facts import make_fact
from assistant.evaluation.metrics import (choice_accuracy, completion_logprobs, completion_nll, counterfact_scores, fluency,
                               ngram_entropy, option_logprobs, perplexity)


class BigramModel(torch.nn.Module):
    """Next-token logits depend only on the current token: logits[t] = table[input_ids[t]].
    Shaped like a transformers causal LM: a body (one-hot "hidden states") and an output head."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        size = table.shape[0]
        self.lm_head = torch.nn.Linear(size, size, bias=False)
        self.lm_head.weight.data = table.T.clone().float()
        self.base_model = OneHot(size)

    @property
    def table(self) -> torch.Tensor:
        return self.lm_head.weight.T

    def get_output_embeddings(self):
        return self.lm_head

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(logits=self.lm_head(self.base_model(input_ids).last_hidden_state))


class OneHot(torch.nn.Module):
    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(last_hidden_state=torch.nn.functional.one_hot(input_ids, self.size).float())


def bigram(tokenizer, preferences: dict[tuple[str, str], float]) -> BigramModel:
    """A model with flat logits except logit ``value`` for next word b after word a."""
    size = len(tokenizer)
    table = torch.zeros(size, size)
    for (before, after), value in preferences.items():
        table[token(tokenizer, before), token(tokenizer, after)] = value
    return BigramModel(table)


def token(tokenizer, word: str) -> int:
    ids = tokenizer(word, add_special_tokens=False).input_ids
    assert len(ids) == 1, f"{word!r} is more than one token here: {ids}"
    return ids[0]


def test_completion_logprobs_are_the_bigram_probabilities(tokenizer):
    model = bigram(tokenizer, {("Paris", " France"): 3.0})
    size = len(tokenizer)
    totals, counts = completion_logprobs(model, tokenizer, ["Paris", "Paris"], ["France", "Japan"])
    assert counts.tolist() == [1, 1]
    expected_hit = 3.0 - math.log(math.exp(3.0) + size - 1)
    expected_miss = 0.0 - math.log(math.exp(3.0) + size - 1)
    assert totals.tolist() == pytest.approx([expected_hit, expected_miss], abs=1e-5)
    assert completion_nll(model, tokenizer, ["Paris"], ["France"]).item() == pytest.approx(-expected_hit, abs=1e-5)


def test_perplexity_of_flat_logits_is_the_vocabulary_size(tokenizer, sentences):
    model = BigramModel(torch.zeros(len(tokenizer), len(tokenizer)))
    assert perplexity(model, tokenizer, sentences[:5], window=16) == pytest.approx(len(tokenizer), rel=1e-5)


def test_perplexity_is_exact_on_a_tiny_corpus(tokenizer):
    words = ["Paris", " France", " Paris", " France", " Paris"]
    ids = [token(tokenizer, w) for w in words]
    model = bigram(tokenizer, {("Paris", " France"): 2.0, (" France", " Paris"): 1.0, (" Paris", " France"): 2.0})
    logprobs = torch.log_softmax(model.table, -1)
    # windows of 3 tokens: [P F P] and [F P]; the first token of each window is not predicted
    nll = -(logprobs[ids[0], ids[1]] + logprobs[ids[1], ids[2]] + logprobs[ids[3], ids[4]]).item()
    assert perplexity(model, tokenizer, ["".join(words)], window=3) == pytest.approx(math.exp(nll / 3), rel=1e-6)
    with pytest.raises(ValueError, match="two tokens"):
        perplexity(model, tokenizer, [""], window=3)


def test_choice_accuracy_picks_the_likeliest_option(tokenizer):
    model = bigram(tokenizer, {(":", " B"): 5.0})
    prompts = ["Answer:", "Answer:", "Answer:"]
    options = [["A", "B", "C", "D"]] * 3
    assert choice_accuracy(model, tokenizer, prompts, options, [1, 1, 1]) == 1.0
    assert choice_accuracy(model, tokenizer, prompts, options, [1, 0, 3]) == pytest.approx(1 / 3)


def test_counterfact_scores_on_a_model_that_knows_the_answer(tokenizer):
    model = bigram(tokenizer, {(" in", " Spain"): 4.0, (" speaks", " Italy"): 4.0})
    fact = make_fact(id="f", subject="Paris", prompt="Paris is located in", target_new="Spain", target_true="France",
                     paraphrases=["Everyone knows that Paris is located in", "Paris speaks"],
                     neighborhood=[("Berlin is located in", "Germany"), ("Berlin speaks", "Italy")])
    scores = counterfact_scores(model, tokenizer, [fact])
    assert scores.efficacy == 1.0
    assert scores.paraphrase == 0.5               # the second paraphrase ends in " speaks": Spain is not preferred
    assert scores.neighborhood == 0.5             # "Berlin is located in" now prefers Spain; "speaks" keeps Italy
    size = len(tokenizer)
    p_new, p_true = math.exp(4.0) / (math.exp(4.0) + size - 1), 1 / (math.exp(4.0) + size - 1)
    assert scores.efficacy_magnitude == pytest.approx(p_new - p_true, rel=1e-5)
    assert scores.paraphrase_magnitude == pytest.approx((p_new - p_true + 0) / 2, rel=1e-5)
    p_italy = p_new                                 # " speaks" -> " Italy" has the same logit as " in" -> " Spain"
    assert scores.neighborhood_magnitude == pytest.approx(((p_true - p_new) + (p_italy - p_true)) / 2, rel=1e-5)
    with pytest.raises(ValueError, match="target_true"):
        counterfact_scores(model, tokenizer, [make_fact(id="g", subject="Paris", prompt="Paris is", target_new="x")])


def test_ngram_entropy_and_fluency():
    assert ngram_entropy(["a", "a", "b"], 2) == pytest.approx(1.0)       # two distinct bigrams, equally often
    assert ngram_entropy(["a", "a", "a", "a"], 2) == 0.0
    assert ngram_entropy(["a"], 2) == 0.0
    distinct = " ".join(f"w{i}" for i in range(10))
    expected = (2 / 3 * math.log2(9) + 4 / 3 * math.log2(8)) / 2
    assert fluency(distinct) == pytest.approx(expected)
    assert fluency("the cat the cat the cat the cat the cat") < fluency(distinct)


def test_option_scores_agree_between_the_one_token_and_the_general_path(tokenizer):
    model = bigram(tokenizer, {(":", " B"): 5.0, (":", " Paris"): 2.0, (" Paris", " France"): 1.0})
    prompts = ["Answer:", "Answer:"]
    options = [["A", "B"], ["Paris France", "Berlin"]]            # one-token options, and two-token ones
    fast, general = option_logprobs(model, tokenizer, prompts, options)
    expected_fast, _ = completion_logprobs(model, tokenizer, prompts, ["A", "B"])
    assert fast.tolist() == pytest.approx(expected_fast.tolist(), abs=1e-6)
    expected_general, counts = completion_logprobs(model, tokenizer, prompts, ["Paris France", "Berlin"])
    assert general.tolist() == pytest.approx(expected_general.tolist(), abs=1e-6) and counts.tolist() == [2, 1]
    assert choice_accuracy(model, tokenizer, prompts, options, [1, 1]) == 1.0   # a longer option pays per token
