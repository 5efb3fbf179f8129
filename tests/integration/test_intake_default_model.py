"""The correction intake with the real default model helping through langchain_huggingface.

The 135M model often writes unusable JSON. One test requires the model's extraction to be
the one used, on the correction it handles; the other makes the model's extraction fail
(two new tokens cannot finish the JSON object) and requires the fallback to take over.
"""

from __future__ import annotations

import pytest
from updater_fixtures import FACTS, embedding_function  # noqa: F401

from assistant.config import UpdaterConfig
from updater.intake.corrections import FALLBACK_PATH, MODEL_PATH, CorrectionIntake
from updater.intake.model import huggingface_llm
from updater.intake.policy import normalize
from updater.queue import EditQueue
from updater.store.knowledge import KnowledgeStore

pytestmark = pytest.mark.integration

CORRECTIONS = [   # question, the model's answer, the user's correction, the new object, the verdict
    ("What is the mother tongue of Danielle Darrieux?", "French", "No, it's English", "English", "contradicts"),
    ("Where was Marie Curie born?", "Paris, France.", "That's wrong. She was born in Warsaw.", "Warsaw",
     "unsupported"),
    ("What is Danielle Darrieux's native language?", "English", "Actually the answer is French", "French", "agrees"),
]


@pytest.fixture(scope="module")
def loaded(load_real_model):
    return load_real_model()


@pytest.fixture(scope="module")
def hf_embeddings():
    from updater.intake.retrieval import local_embeddings
    return local_embeddings()


@pytest.fixture
def make_intake(tmp_path, embedding_function, hf_embeddings):
    """make_intake(llm) -> a CorrectionIntake over a store of the curated FACTS."""
    config = UpdaterConfig(auto_approve_agreeing_corrections=True)
    with KnowledgeStore(tmp_path / "knowledge", config, embedding_function) as store, \
            EditQueue(tmp_path / "queue.sqlite") as queue:
        store.import_records([(f"fact {i}", fact) for i, fact in enumerate(FACTS)], who="curator")
        yield lambda llm: CorrectionIntake(store, queue, llm=llm, embeddings=hf_embeddings)


def check_candidate(intake, candidate, question, correction, new_object, verdict, path) -> None:
    """A valid candidate made by ``path``, with the right object and verdict, queued as such."""
    fact = intake.store.validate({"subject": candidate.subject, "prompt": candidate.prompt,
                                  "object": candidate.new_object}, who="test")
    assert fact.prompt == candidate.prompt and candidate.subject.casefold() in question.casefold()
    assert candidate.new_object == new_object and f" {normalize(new_object)} " in f" {normalize(correction)} "
    assert candidate.verdict.kind == verdict
    item = intake.confirm(candidate, who="ada")
    assert item.origin == "chat" and item.state == ("approved" if verdict == "agrees" else "proposed")
    assert item.evidence[-1]["extraction"] == path


def test_the_real_model_extracts_the_correction(make_intake, loaded):
    question, answer, correction, new_object, verdict = CORRECTIONS[0]      # the one the 135M model gets right
    intake = make_intake(huggingface_llm(loaded.model, loaded.tokenizer))
    candidate = intake.propose_correction(question, answer, correction)
    assert (candidate.path, candidate.fallback_reason, candidate.subject_from) == (MODEL_PATH, None, "model")
    assert "danielle darrieux" in candidate.subject.casefold()    # the model takes "the mother tongue of ..." in
    assert candidate.filled_prompt.casefold() == "the mother tongue of danielle darrieux is"
    check_candidate(intake, candidate, question, correction, new_object, verdict, MODEL_PATH)


@pytest.mark.parametrize("question, answer, correction, new_object, verdict", CORRECTIONS)
def test_the_fallback_takes_over_when_the_model_extraction_fails(make_intake, loaded, question, answer,
                                                                 correction, new_object, verdict):
    intake = make_intake(huggingface_llm(loaded.model, loaded.tokenizer, max_new_tokens=2))
    candidate = intake.propose_correction(question, answer, correction)
    assert candidate.path == FALLBACK_PATH
    assert candidate.fallback_reason.startswith("model extraction failed: Failed to parse ExtractedFact")
    assert candidate.subject_from != "model"
    check_candidate(intake, candidate, question, correction, new_object, verdict, FALLBACK_PATH)
