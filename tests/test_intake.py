"""The correction intake: retrieval over the real chroma store, the deterministic and the
model-assisted extraction, the policy, confirmation, and `livedit correct`.

Real chromadb on disk, real offline embeddings (loaded once per session), real SQLite.
The model-assisted path runs on langchain_core's fake LLMs.
"""

from __future__ import annotations

import dataclasses

import pytest
from langchain_core.language_models import FakeListChatModel, FakeListLLM
from updater_fixtures import FACTS, embedding_function, home, open_store  # noqa: F401

from assistant.config import UpdaterConfig
from assistant.errors import InvalidFact, StateError
from updater.intake.corrections import CorrectionIntake
from updater.intake.fallback import object_from_correction, subject_from_question, template_from_question
from updater.intake.model import PREFILL, extraction_prompt
from updater.intake.retrieval import check_same_embeddings, fact_retriever
from updater.queue import EditQueue

TONGUE_Q = "What is the mother tongue of Danielle Darrieux?"
GOOD_JSON = ('{"subject": "Danielle Darrieux", "statement": "The mother tongue of Danielle Darrieux is", '
             '"new_object": "English"}')


@pytest.fixture(scope="session")
def hf_embeddings():
    from updater.intake.retrieval import local_embeddings
    return local_embeddings()


@pytest.fixture
def make_intake(home, open_store, hf_embeddings, tmp_path):
    """make_intake(auto_approve=False, llm=None, facts=FACTS) -> a CorrectionIntake over the test facts."""
    queues = []

    def make(auto_approve: bool = False, llm=None, facts=FACTS) -> CorrectionIntake:
        config = UpdaterConfig(auto_approve_agreeing_corrections=auto_approve)
        store = open_store(home / "knowledge", config)
        if store.count() == 0 and facts:
            store.import_records([(f"fact {i}", fact) for i, fact in enumerate(facts)], who="curator")
        queues.append(EditQueue(home / "queue.sqlite"))
        return CorrectionIntake(store, queues[-1], llm=llm, embeddings=hf_embeddings)

    yield make
    for queue in queues:
        queue.close()


# -- retrieval ------------------------------------------------------------------------------
def test_the_retriever_queries_the_stores_collection_with_the_same_embeddings(make_intake, hf_embeddings):
    store = make_intake().store
    query = "Which language did Danielle Darrieux grow up with?"
    docs = fact_retriever(store, hf_embeddings, k=2).invoke(query)
    assert [doc.metadata["id"] for doc in docs] == [hit.fact.id for hit in store.search(query, k=2)]
    assert docs[0].metadata["id"] == "darrieux-tongue" and docs[0].metadata["distance"] < 0.3
    assert [doc.metadata["distance"] for doc in docs] == pytest.approx([hit.distance for hit in store.search(query, 2)],
                                                                       abs=1e-5)


def test_embeddings_from_another_model_are_refused(make_intake):
    from langchain_core.embeddings import DeterministicFakeEmbedding

    collection = make_intake().store.collection()
    with pytest.raises(StateError, match="differ from the search index"):
        check_same_embeddings(collection, DeterministicFakeEmbedding(size=384))
    with pytest.raises(StateError, match="384-dimensional vectors"):
        check_same_embeddings(collection, DeterministicFakeEmbedding(size=16))


# -- the deterministic extraction -----------------------------------------------------------
@pytest.mark.parametrize("correction", [
    "No, it's English", "no it is English.", "Actually, the answer is English!", "Wrong. English", "English",
    "It's English, not French", 'The correct answer is "English".', "No! Her mother tongue is English.",
    "Danielle Darrieux's mother tongue is English", "I think it's English actually",
    "That's wrong, it should be English", "English is the right answer"])
def test_the_new_object_is_found_in_many_phrasings(correction):
    assert object_from_correction(correction, TONGUE_Q) == "English"


def test_restated_relations_are_dropped_from_the_object():
    assert object_from_correction("She was born in Warsaw", "Where was Marie Curie born?") == "Warsaw"
    assert object_from_correction("nope, the organ", "What instrument did Bach play?") == "the organ"


@pytest.mark.parametrize("question, subject, template", [
    (TONGUE_Q, "Danielle Darrieux", "The mother tongue of {} is"),
    ("What is Danielle Darrieux's native language?", "Danielle Darrieux", "{}'s native language is"),
    ("Where was Marie Curie born?", "Marie Curie", "{} was born in"),
    ("Where is the Eiffel Tower located?", "the Eiffel Tower", "{} is located in"),
    ("When was Apple founded?", "Apple", "{} was founded in"),
    ("What is the capital of the United States of America?", "the United States of America",
     "The capital of {} is"),
    ("What is the boiling point of water?", "water", "The boiling point of {} is"),
    ("Which language did Toko Yasuda speak?", "Toko Yasuda", "Which language did {} speak?"),
])
def test_subject_and_prompt_from_the_question(question, subject, template):
    assert subject_from_question(question) == subject
    assert template_from_question(question, subject) == template


def test_a_fallback_candidate_takes_subject_and_prompt_from_the_anchor(make_intake):
    intake = make_intake()
    candidate = intake.propose_correction("Which language did Danielle Darrieux speak natively?", "French",
                                          "No, it's English", use_model=False)
    assert (candidate.subject, candidate.prompt, candidate.new_object) == (
        "Danielle Darrieux", "The mother tongue of {} is", "English")
    assert (candidate.path, candidate.fallback_reason) == ("fallback", "model extraction off")
    assert candidate.subject_from == "anchor:darrieux-tongue" and candidate.anchor_id == "darrieux-tongue"
    assert candidate.related[0].fact.id == "darrieux-tongue"


# -- the policy -----------------------------------------------------------------------------
@pytest.mark.parametrize("enabled", [True, False])
def test_an_agreeing_correction_is_approved_only_when_enabled(make_intake, enabled):
    intake = make_intake(auto_approve=enabled)
    candidate = intake.propose_correction("What is Danielle Darrieux's native language?", "English",
                                          "No, it's français", use_model=False)
    assert candidate.verdict.kind == "agrees" and candidate.auto_approve is enabled
    item = intake.confirm(candidate, who="ada")
    assert (item.fact_id, item.fact_version, item.new_object, item.origin) == ("darrieux-tongue", 1, "French", "chat")
    assert item.state == ("approved" if enabled else "proposed")
    evidence = item.evidence[-1]
    assert (evidence["policy"], evidence["auto_approved"], evidence["proposed_object"]) == ("agrees", enabled,
                                                                                           "français")
    events = intake.queue.show(item.id).events
    assert "agrees with curated fact 'darrieux-tongue' v1" in events[0].why and events[0].who == "ada"
    if enabled:
        assert events[-1].who == "intake-policy" and "auto_approve_agreeing_corrections is on" in events[-1].why


def test_a_contradicting_correction_waits_for_review_and_leaves_curated_items_alone(make_intake):
    intake = make_intake(auto_approve=True)
    curated = intake.queue.propose_fact(intake.store.get("darrieux-tongue"), origin="curator", who="grace").item
    intake.queue.approve(curated.id, who="grace")
    candidate = intake.propose_correction(TONGUE_Q, "French", "No, it's English", use_model=False)
    assert candidate.verdict.kind == "contradicts" and not candidate.auto_approve
    item = intake.confirm(candidate, who="ada")
    assert item.state == "proposed" and item.fact_id.startswith("chat-") and item.new_object == "English"
    assert item.evidence[-1]["curated_object"] == "French" and item.evidence[-1]["policy"] == "contradicts"
    assert "contradicts curated fact 'darrieux-tongue' v1, which says 'French'" in intake.queue.show(item.id).events[0].why
    assert intake.queue.get(curated.id).state == "approved"


@pytest.mark.parametrize("question, subject, facts", [
    ("Where was Marie Curie born?", "Marie Curie", FACTS),
    ("Where was Danielle Darrieux born?", "Danielle Darrieux", FACTS),   # same subject, another relation
    ("Where was Marie Curie born?", "Marie Curie", []),                  # an empty store
])
def test_an_unsupported_correction_waits_for_review(make_intake, question, subject, facts):
    intake = make_intake(auto_approve=True, facts=facts)
    candidate = intake.propose_correction(question, "Paris", "No, she was born in Warsaw", use_model=False)
    assert candidate.anchor_id is None and candidate.subject_from == "question"
    assert (candidate.subject, candidate.prompt, candidate.new_object) == (subject, "{} was born in", "Warsaw")
    assert candidate.verdict.kind == "unsupported"
    item = intake.confirm(candidate, who="ada")
    assert item.state == "proposed" and item.evidence[-1]["policy"] == "unsupported"


def test_a_question_naming_only_the_last_name_still_finds_the_fact(make_intake):
    intake = make_intake(auto_approve=True)
    candidate = intake.propose_correction("What instrument did Bach play?", "The violin", "nope, the organ",
                                          use_model=False)
    assert candidate.anchor_id == "bach-instrument" and candidate.subject == "Johann Sebastian Bach"
    assert candidate.verdict.kind == "agrees" and intake.confirm(candidate, who="ada").state == "approved"


def test_nothing_is_queued_until_the_candidate_is_confirmed(make_intake):
    intake = make_intake(auto_approve=True)
    candidate = intake.propose_correction(TONGUE_Q, "English", "No, it's French", use_model=False)
    assert sum(intake.queue.counts().values()) == 0
    assert any(line.startswith("on confirm queued and approved") for line in candidate.describe())
    intake.confirm(candidate, who="ada")
    assert intake.queue.counts()["approved"] == 1


def test_confirm_judges_again_against_the_current_store(make_intake):
    intake = make_intake(auto_approve=True)
    candidate = intake.propose_correction(TONGUE_Q, "French", "No, it's English", use_model=False)
    assert candidate.verdict.kind == "contradicts"
    intake.store.update("darrieux-tongue", {"object": "English", "aliases": []}, who="grace")
    item = intake.confirm(candidate, who="ada")
    assert (item.state, item.fact_id, item.fact_version) == ("approved", "darrieux-tongue", 2)


def test_revise_checks_and_judges_the_changed_fields(make_intake):
    intake = make_intake()
    candidate = intake.propose_correction(TONGUE_Q, "English", "no, it's Frnch", use_model=False)
    assert candidate.verdict.kind == "contradicts"
    revised = intake.revise(candidate, new_object="French")
    assert revised.verdict.kind == "agrees" and revised.prompt == candidate.prompt
    other = intake.revise(candidate, subject="Marie Curie")
    assert (other.filled_prompt, other.subject_from, other.verdict.kind) == (
        "The mother tongue of Marie Curie is", "user", "unsupported")
    with pytest.raises(InvalidFact, match="subject 'Danielle Darrieux' does not occur in prompt 'Her tongue is'"):
        intake.revise(candidate, prompt="Her tongue is")


# -- bad input ------------------------------------------------------------------------------
@pytest.mark.parametrize("question, answer, correction, message", [
    (TONGUE_Q, "French", "", "field 'correction' is empty"),
    (TONGUE_Q, "French", "No, it's Engl\x07ish", r"unsupported character U\+0007"),
    (TONGUE_Q, "French", "No, it's " + "English " * 80, "the limit is 500"),
    (TONGUE_Q, "French", "no", "does not say what the right answer is"),
    (TONGUE_Q, "French", "No, it's not French", "does not say what the right answer is"),
    (TONGUE_Q, "French", "No, it's French!", "is what the model said already"),
    ("what is it?", "a cat", "No, a dog", "cannot tell who or what the question"),
    ("", "French", "No, it's English", "field 'question' is empty"),
])
def test_bad_input_is_refused_with_a_clear_error(make_intake, question, answer, correction, message):
    intake = make_intake()
    with pytest.raises(InvalidFact, match=message):
        intake.propose_correction(question, answer, correction, use_model=False)
    assert sum(intake.queue.counts().values()) == 0


def test_a_tampered_candidate_is_refused_at_confirmation(make_intake):
    intake = make_intake()
    candidate = intake.propose_correction(TONGUE_Q, "French", "No, it's English", use_model=False)
    with pytest.raises(InvalidFact, match="field 'object' is empty"):
        intake.confirm(dataclasses.replace(candidate, new_object="  "), who="ada")
    with pytest.raises(InvalidFact, match="does not occur in prompt"):
        intake.confirm(dataclasses.replace(candidate, prompt="Someone spoke"), who="ada")
    assert sum(intake.queue.counts().values()) == 0


# -- the model-assisted path ----------------------------------------------------------------
def test_the_prompt_ends_inside_the_json_object_to_complete():
    text = extraction_prompt().format(question="Q {with braces}?", answer="A", correction="C")
    assert text.endswith("Question: Q {with braces}?\nAnswer: A\nCorrection: C\nJSON: " + PREFILL)
    assert '"statement": "The author of Hamlet is"' in text


@pytest.mark.parametrize("response", [
    GOOD_JSON,
    'Danielle Darrieux", "statement": "The mother tongue of Danielle Darrieux is English", '
    '"new_object": "English"}\n\nQuestion: and then the model rambles on',
])
def test_a_parsed_model_answer_makes_the_candidate(make_intake, response):
    intake = make_intake(llm=FakeListLLM(responses=[response]))
    candidate = intake.propose_correction(TONGUE_Q, "French", "Well no, I'd say it was English")
    assert (candidate.path, candidate.fallback_reason, candidate.subject_from) == ("model", None, "model")
    assert (candidate.subject, candidate.prompt, candidate.new_object) == (
        "Danielle Darrieux", "The mother tongue of {} is", "English")
    assert candidate.verdict.kind == "contradicts"
    assert intake.confirm(candidate, who="ada").evidence[-1]["extraction"] == "model"


def test_a_chat_model_works_too(make_intake):
    intake = make_intake(llm=FakeListChatModel(responses=[GOOD_JSON]))
    assert intake.propose_correction(TONGUE_Q, "French", "No, it's English").path == "model"


@pytest.mark.parametrize("response, reason", [
    ("I am a small model and I like turtles.", "Failed to parse ExtractedFact"),
    ('{"subject": "Danielle Darrieux"}', "Field required"),
    ('{"subject": "Danielle Darrieux", "statement": "The mother tongue of Danielle Darrieux is", '
     '"new_object": "Poland"}', "new object 'Poland' is not in the correction"),
    ('{"subject": "Della Darraja", "statement": "Della Darraja spoke", "new_object": "English"}',
     "subject 'Della Darraja' does not occur in the question"),
])
def test_garbage_from_the_model_falls_back_to_the_deterministic_extraction(make_intake, response, reason):
    intake = make_intake(llm=FakeListLLM(responses=[response]))
    candidate = intake.propose_correction(TONGUE_Q, "French", "No, it's English")
    assert candidate.path == "fallback" and reason in candidate.fallback_reason
    assert candidate.fallback_reason.startswith("model extraction failed: ")
    assert (candidate.subject, candidate.prompt, candidate.new_object) == (
        "Danielle Darrieux", "The mother tongue of {} is", "English")
    item = intake.confirm(candidate, who="ada")
    assert item.evidence[-1]["extraction"] == "fallback" and reason in item.evidence[-1]["fallback_reason"]



def _model_that_raises(error: Exception):
    """An "LLM" (any runnable works in the chain) that fails with ``error``."""
    from langchain_core.runnables import RunnableLambda

    def generate(prompt):
        raise error
    return RunnableLambda(generate)


def test_a_model_that_is_not_ready_falls_back(make_intake):
    from assistant.errors import ModelNotReady

    intake = make_intake(llm=_model_that_raises(ModelNotReady("the model is still loading")))
    candidate = intake.propose_correction(TONGUE_Q, "French", "No, it's English")
    assert candidate.path == "fallback"
    assert candidate.fallback_reason == "model extraction failed: the model is still loading"
    assert (candidate.subject, candidate.new_object) == ("Danielle Darrieux", "English")


@pytest.mark.parametrize("bug", [TypeError("unsupported operand"), RuntimeError("index out of range"),
                                 KeyError("subject")])
def test_a_bug_in_the_model_path_surfaces_instead_of_falling_back(make_intake, bug):
    intake = make_intake(llm=_model_that_raises(bug))
    with pytest.raises(type(bug), match=str(bug.args[0])):
        intake.propose_correction(TONGUE_Q, "French", "No, it's English")


def test_a_bug_after_a_good_parse_surfaces_too(make_intake, monkeypatch):
    def broken_grounding(inputs):                     # our own code, after the model answered well
        raise TypeError("grounded_fields broke")
    monkeypatch.setattr("updater.intake.model.grounded_fields", broken_grounding)
    intake = make_intake(llm=FakeListLLM(responses=[GOOD_JSON]))
    with pytest.raises(TypeError, match="grounded_fields broke"):
        intake.propose_correction(TONGUE_Q, "French", "No, it's English")
    assert sum(intake.queue.counts().values()) == 0


# -- the command line -----------------------------------------------------------------------
@pytest.fixture
def livedit(make_intake, hf_embeddings, embedding_function, monkeypatch, capsys):
    """livedit("correct", ...) -> (exit code, stdout, stderr) against the test store."""
    import updater.intake.retrieval
    import updater.store.knowledge
    from livedit.cli import main

    make_intake()                                           # imports the facts
    monkeypatch.setattr(updater.store.knowledge, "default_embedding_function", lambda: embedding_function)
    monkeypatch.setattr(updater.intake.retrieval, "local_embeddings", lambda: hf_embeddings)

    def run(*argv: str):
        code = main(["-q", *argv])
        captured = capsys.readouterr()
        return code, captured.out, captured.err
    return run


CORRECT = ("correct", "--question", TONGUE_Q, "--answer", "French", "--correction", "No, it's English", "--no-model")


def test_livedit_correct_shows_the_candidate_and_queues_it_when_confirmed(livedit, monkeypatch):
    monkeypatch.setattr("builtins.input", lambda prompt: "n")
    code, out, _ = livedit(*CORRECT)
    assert code == 0 and "new object 'English'" in out and "contradicts" in out and out.endswith("not queued\n")
    monkeypatch.setattr("builtins.input", lambda prompt: "yes")
    code, out, _ = livedit(*CORRECT, "--who", "ada")
    assert code == 0 and "queued item 1 (proposed): fact chat-" in out
    code, out, _ = livedit("correct", "--question", TONGUE_Q, "--answer", "English", "--correction", "No, it's Frnch",
                           "--object", "French", "--no-model", "--yes")
    assert code == 0 and "queued item 2 (proposed): fact darrieux-tongue" in out and "agrees" in out
    code, out, _ = livedit("queue", "show", "1")
    assert '"origin": "chat"' in out and '"who": "ada"' in out


def test_livedit_correct_reports_bad_input_in_one_line(livedit):
    code, out, err = livedit("correct", "--question", TONGUE_Q, "--answer", "French", "--correction", "no",
                             "--no-model", "--yes")
    assert code == 2 and err.startswith("livedit: error: correction: 'no' does not say") and err.count("\n") == 1
