"""The Multi-Question Dataset built from CounterFact records."""

import re

import pytest

from assistant.evaluation.mqd import KINDS, as_clause, choice_options, mqd_fact

RECORDS = [
    {"case_id": 0, "prompt": "The mother tongue of Danielle Darrieux is", "subject": "Danielle Darrieux",
     "target_new": "English", "ground_truth": "French",
     "rephrase_prompt": "Where Danielle Darrieux is from, people speak the language of",
     "locality_prompt": "Michel Rocard is a native speaker of", "locality_ground_truth": "French"},
    {"case_id": 1, "prompt": "The mother tongue of Toko Yasuda is", "subject": "Toko Yasuda",
     "target_new": "Dutch", "ground_truth": "Japanese"},
    {"case_id": 2, "prompt": "The mother tongue of Ada Lovelace is", "subject": "Ada Lovelace",
     "target_new": "Polish", "ground_truth": "English"},
    {"case_id": 3, "prompt": "Apple was founded in", "subject": "Apple", "target_new": "Paris",
     "ground_truth": "Cupertino"},
]


def test_yes_no_question_states_the_new_fact():
    fact = mqd_fact(RECORDS[0], "yesno", RECORDS)
    assert fact.filled_prompt == ("Question: Is it true that the mother tongue of Danielle Darrieux is English? "
                                  "Answer:")
    assert (fact.target_new, fact.target_true, fact.id) == ("Yes", "No", "mqd-yesno-0")
    assert fact.paraphrases == ("Question: Is it true that where Danielle Darrieux is from, people speak the "
                                "language of English? Answer:",)


def test_multiple_choice_lists_true_new_and_distractors_of_the_same_relation():
    fact = mqd_fact(RECORDS[0], "choice", RECORDS, seed=3)
    listed = re.findall(r"([ABCD])\. (.+?)(?= [ABCD]\. | Answer:)", fact.filled_prompt)
    assert [letter for letter, _ in listed] == list("ABCD")
    options = [option for _, option in listed]
    assert len(set(options)) == 4
    assert {"French", "English"} <= set(options)
    assert set(options) - {"French", "English"} <= {"Dutch", "Japanese", "Polish"}   # same relation's objects
    assert fact.target_new == "ABCD"[options.index("English")]
    assert fact.target_true == "ABCD"[options.index("French")]
    assert mqd_fact(RECORDS[0], "choice", RECORDS, seed=3) == fact                    # deterministic
    assert fact.filled_prompt.startswith("Question: The mother tongue of Danielle Darrieux is ___.")


def test_distractors_fall_back_to_all_objects():
    import random
    options = choice_options(RECORDS[3], RECORDS, random.Random(0))
    assert {"Paris", "Cupertino"} <= set(options) and len(set(options)) == 4


def test_direct_is_the_counterfact_fact():
    fact = mqd_fact(RECORDS[0], "direct", RECORDS)
    assert (fact.filled_prompt, fact.target_new, fact.target_true) == (RECORDS[0]["prompt"], "English", "French")
    assert set(KINDS) == {"yesno", "choice", "direct"}
    with pytest.raises(ValueError, match="unknown MQD kind"):
        mqd_fact(RECORDS[0], "essay", RECORDS)


def test_clause_lowercases_only_a_leading_function_word():
    assert as_clause("The capital of France is", "France") == "the capital of France is"
    assert as_clause("Danielle Darrieux speaks", "Danielle Darrieux") == "Danielle Darrieux speaks"
    assert as_clause("Toyota is owned by", "Toyota") == "Toyota is owned by"
