"""Metrics on hand-made cases: a bigram toy model whose every probability is known."""

import math
from types import SimpleNamespace

import pytest
import torch

from assistant.evaluation import metrics
from assistant.evaluation.bench import target_perplexity
from assistant.facts import make_fact
from assistant.evaluation.metrics import (chat_scores, choice_accuracy, completion_logprobs, completion_nll,
                                          counterfact_scores, fluency, ngram_entropy, option_logprobs, perplexity,
                                          same_start)
from assistant.model.answers import answer_contains, cloze_completions_hold, said_as_asked
from assistant.model.chat import answers, greedy_continuations


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


def test_target_perplexity_is_the_per_token_perplexity_of_each_new_object(tokenizer):
    model = bigram(tokenizer, {(" in", " Spain"): 4.0, (" Paris", " France"): 2.0})
    size = len(tokenizer)
    facts = [make_fact(id=str(i), subject="Paris", prompt="Paris is located in", target_new=target)
             for i, target in enumerate(["Spain", "France", "Paris France"])]
    spain = (math.exp(4.0) + size - 1) / math.exp(4.0)                  # 1 / P(Spain | in)
    france = math.exp(4.0) + size - 1                                   # 1 / P(France | in)
    # two tokens: " Paris" after " in" (not preferred), then " France" after " Paris" (logit 2)
    two = math.exp((math.log(math.exp(4.0) + size - 1) + math.log(math.exp(2.0) + size - 1) - 2.0) / 2)
    result = target_perplexity(model, tokenizer, facts)
    assert result["per_fact"] == pytest.approx([spain, france, two], abs=2e-3)        # rounded to 3 decimals
    assert result["mean"] == pytest.approx((spain + france + two) / 3, rel=1e-5)
    assert result["median"] == pytest.approx(two, rel=1e-5)


def test_answer_contains_whole_normalised_words():
    assert answer_contains("It is in Paris.", "paris")
    assert answer_contains("Zürich, of course!", "Zurich")                 # accents and punctuation go
    assert answer_contains("She plays the piano.", "the piano") and answer_contains("a piano", "The Piano")
    assert answer_contains("The United States of America", "United States")
    assert not answer_contains("Parisian food", "Paris")                   # whole words only
    assert not answer_contains("States United", "United States")           # in order
    assert not answer_contains("pianos", "piano")
    assert answer_contains("born in NYC", "New York", aliases=("NYC",))
    assert not answer_contains("born in NYC", "New York")
    assert not answer_contains("the answer", "the") and not answer_contains("anything", "")   # nothing to find


def test_same_start_compares_the_first_eight_normalised_words():
    eight = "one two three four five six seven eight"
    assert same_start(f"{eight} nine", "One, two three four five six seven eight ten!")   # differ at word 9
    assert not same_start(f"{eight} nine", "one two three four five six seven EIGHTY nine")  # differ at word 8
    assert not same_start("one two", "one three")
    assert same_start("Paris.", "the paris") and not same_start("Paris", "Paris France")    # shorter answers
    assert same_start("one two x", "one two y", words=2) and not same_start("one two x", "one two y", words=3)
    assert same_start("", "...")


def test_locality_questions_are_each_facts_first_neighbour():
    from assistant.evaluation.locality import locality_questions

    facts = [make_fact(id="a", subject="Paris", prompt="Paris is in", target_new="Spain",
                       neighborhood=[("Where is Berlin?", "Germany"), ("Where is Rome?", "Italy")]),
             make_fact(id="b", subject="Tokyo", prompt="Tokyo is in", target_new="Italy"),
             make_fact(id="c", subject="Madrid", prompt="Madrid is in", target_new="Japan",
                       neighborhood=[("Where is Lisbon?", "Portugal")])]
    assert locality_questions(facts) == ["Where is Berlin?", "Where is Lisbon?"]
    assert locality_questions([facts[1]]) == []


CHAT_FACTS = [
    make_fact(id="paris", subject="Paris", prompt="Paris is in", target_new="Spain", question="Where is Paris?",
              paraphrases=["Which country holds Paris?"],
              neighborhood=[("Where is Berlin?", "Germany"), ("Where is Rome?", "Italy")]),
    make_fact(id="tokyo", subject="Tokyo", prompt="Tokyo is located in", target_new="Italy",     # no question
              paraphrases=["Everyone knows Tokyo is in", "Tokyo lies in"],
              neighborhood=[("Where is Madrid?", "Spain")]),
    make_fact(id="apple", subject="Apple", prompt="Apple makes", target_new="the piano",
              question="What does Apple make?", paraphrases=["What does the iPhone firm build?"]),
]
KNOWN_ANSWERS = {
    "Where is Paris?": "Paris is in Spain.",                   # efficacy: yes
    "Tokyo is located in": "Tokyo is in Italy",                # yes (the prompt stands in for the question)
    "What does Apple make?": "Pianos, mostly.",                # no: "pianos" is not "piano"
    "Which country holds Paris?": "France.",                   # rephrasing naming the subject: no
    "Everyone knows Tokyo is in": "Italy, of course",          # naming the subject: yes (only the first is asked)
    "What does the iPhone firm build?": "The piano.",          # yes, but it does not name the subject
}


def test_chat_scores_on_a_table_of_known_answers(monkeypatch):
    calls = []

    def known(model, tokenizer, questions, max_new_tokens, system_prompt):
        calls.append((list(questions), max_new_tokens, system_prompt))
        return [KNOWN_ANSWERS[q] for q in questions]

    monkeypatch.setattr(metrics, "answers", known)
    scores = chat_scores(None, None, CHAT_FACTS, max_new_tokens=12, system_prompt="Be brief.")
    assert (scores.answered, scores.questions, scores.rephrased, scores.rephrasings) == (2, 3, 2, 3)
    assert (scores.rephrased_with_subject, scores.rephrasings_with_subject) == (1, 2)
    assert (scores.efficacy, scores.paraphrase, scores.paraphrase_with_subject) == (2 / 3, 2 / 3, 1 / 2)
    assert scores.answers == [KNOWN_ANSWERS[q] for q in ("Where is Paris?", "Tokyo is located in",
                                                         "What does Apple make?")]
    assert scores.paraphrase_answers == ["France.", "Italy, of course", "The piano."]
    assert calls == [(["Where is Paris?", "Tokyo is located in", "What does Apple make?"], 12, "Be brief."),
                     (["Which country holds Paris?", "Everyone knows Tokyo is in", "What does the iPhone firm build?"],
                      12, "Be brief.")]
    figures = scores.to_json()
    assert figures["rephrased_with_subject"]["count"] == 1 and figures["rephrased_with_subject"]["of"] == 2
    low, high = figures["answered"]["interval95"]
    assert low < 2 / 3 < high


def test_mentions_subject_needs_the_subjects_words_in_order():
    assert metrics.mentions_subject("Where is the Eiffel Tower?", "the Eiffel Tower")
    assert metrics.mentions_subject("Who is Paris's mayor?", "Paris")                      # possessive
    assert metrics.mentions_subject("who wrote HARRY potter", "Harry Potter")              # case and spacing
    assert not metrics.mentions_subject("Where is the tower of Eiffel?", "Eiffel Tower")   # not in order
    assert not metrics.mentions_subject("Who governs Parisian suburbs?", "Paris")          # whole words only
    assert not metrics.mentions_subject("Anything at all?", "")


def test_wilson_interval_of_known_proportions():
    low, high = metrics.wilson(8, 10)
    assert low == pytest.approx(0.490, abs=1e-3) and high == pytest.approx(0.943, abs=1e-3)   # textbook values
    assert metrics.wilson(0, 20)[0] == 0.0 and metrics.wilson(20, 20)[1] == 1.0
    assert all(math.isnan(v) for v in metrics.wilson(0, 0))


def test_chat_scores_agree_with_greedy_answers_of_a_tiny_llama(llama_dir, chat_tokenizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(llama_dir).eval()
    facts = CHAT_FACTS[:2]
    questions = [f.question or f.filled_prompt for f in facts]
    direct = answers(model, chat_tokenizer, questions, 6)
    para = answers(model, chat_tokenizer, [f.paraphrases[0] for f in facts], 6)
    scores = chat_scores(model, chat_tokenizer, facts, max_new_tokens=6)
    assert scores.answers == direct and scores.paraphrase_answers == para
    assert scores.efficacy == sum(answer_contains(a, f.target_new) for a, f in zip(direct, facts)) / 2
    assert scores.paraphrase == sum(answer_contains(a, f.target_new) for a, f in zip(para, facts)) / 2


def test_said_as_asked_reads_the_greedy_answer_where_each_fact_is_asked(llama_dir, chat_tokenizer):
    """A fact is said when the model's greedy answer holds its new object: the chat answer to
    its question, or else the first line of its plain prompt's completion."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(llama_dir).eval()
    prompt, question = "Paris is located in", "Where is Paris located?"
    completion = greedy_continuations(model, chat_tokenizer, [chat_tokenizer(prompt).input_ids], 8)[0]
    reply = answers(model, chat_tokenizer, [question], 32)[0]
    said_word, replied_word = completion.strip().split("\n")[0].split()[0], reply.split()[0]
    fact = lambda i, target, asked=None: make_fact(id=f"f{i}", subject="Paris", prompt=prompt,  # noqa: E731
                                                   target_new=target, question=asked)
    facts = [fact(0, said_word), fact(1, "zzyzx"), fact(2, replied_word, question), fact(3, "zzyzx", question),
             fact(4, replied_word)]
    got = said_as_asked(model, chat_tokenizer, facts)
    assert got[:4] == [True, False, True, False]
    assert got[4] == answer_contains(completion.strip().split("\n")[0], replied_word)   # the cloze form, not the chat one
    assert cloze_completions_hold(model, chat_tokenizer, facts[:2]) == [True, False]
