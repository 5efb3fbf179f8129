"""The correction intake with the real default model helping through langchain_huggingface.

The 135M model often writes unusable JSON; whichever path makes the candidate, it must be
valid, and the path is recorded (see the test report's properties, or the log).
"""

from __future__ import annotations

import logging

import pytest
from updater_fixtures import FACTS, embedding_function  # noqa: F401

from assistant.config import UpdaterConfig
from updater.intake.corrections import CorrectionIntake
from updater.intake.model import huggingface_llm
from updater.intake.policy import normalize
from updater.queue import EditQueue
from updater.store.knowledge import KnowledgeStore

pytestmark = pytest.mark.integration
log = logging.getLogger(__name__)

CORRECTIONS = [   # question, the model's answer, the user's correction, the verdict whichever path is taken
    ("What is the mother tongue of Danielle Darrieux?", "French", "No, it's English", "contradicts"),
    ("Where was Marie Curie born?", "Paris, France.", "That's wrong. She was born in Warsaw.", "unsupported"),
    ("What is Danielle Darrieux's native language?", "English", "Actually the answer is French", "agrees"),
]


@pytest.fixture(scope="module")
def llm(load_real_model):
    loaded = load_real_model()
    return huggingface_llm(loaded.model, loaded.tokenizer)


@pytest.fixture(scope="module")
def hf_embeddings():
    from updater.intake.retrieval import local_embeddings
    return local_embeddings()


@pytest.fixture
def intake(tmp_path, embedding_function, hf_embeddings, llm):
    config = UpdaterConfig(auto_approve_agreeing_corrections=True)
    with KnowledgeStore(tmp_path / "knowledge", config, embedding_function) as store, \
            EditQueue(tmp_path / "queue.sqlite") as queue:
        store.import_records([(f"fact {i}", fact) for i, fact in enumerate(FACTS)], who="curator")
        yield CorrectionIntake(store, queue, llm=llm, embeddings=hf_embeddings)


@pytest.mark.parametrize("question, answer, correction, verdict", CORRECTIONS)
def test_the_real_model_helps_or_the_fallback_takes_over(intake, record_property, question, answer, correction,
                                                         verdict):
    candidate = intake.propose_correction(question, answer, correction)
    record_property("extraction_path", candidate.path)
    record_property("fallback_reason", candidate.fallback_reason or "")
    log.warning("intake on the default model: %r -> path %s (%s): %r -> %r", correction, candidate.path,
                candidate.fallback_reason or "accepted", candidate.filled_prompt, candidate.new_object)
    assert candidate.path in ("model", "fallback")
    fact = intake.store.validate({"subject": candidate.subject, "prompt": candidate.prompt,
                                  "object": candidate.new_object}, who="test")
    assert fact.prompt == candidate.prompt and candidate.subject.casefold() in question.casefold()
    assert f" {normalize(candidate.new_object)} " in f" {normalize(correction)} "
    assert candidate.verdict.kind == verdict
    item = intake.confirm(candidate, who="ada")
    assert item.origin == "chat" and item.state == ("approved" if verdict == "agrees" else "proposed")
    assert item.evidence[-1]["extraction"] == candidate.path
