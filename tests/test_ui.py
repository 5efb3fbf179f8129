"""The web app's callbacks, called directly: chat, like/dislike, corrections, the console.

A fake assistant stands in where the model is not the point; corrections go through the real
intake, store and queue; the console's apply, history and retract run on a real tiny engine.
"""

from __future__ import annotations

import gradio as gr
import pytest
from updater_fixtures import FACTS, embedding_function, home, open_store, write_jsonl  # noqa: F401

from assistant.config import UIConfig, load_config
from assistant.errors import ConfigError, ModelNotReady
from livedit.services import Progress, Services
from ui import console
from ui.auth import admin_entry, hash_password, login_check, verify_password
from ui.chat import message_text, on_like, poll_status, respond, submit_correction

SCRIPT = "<script>alert(1)</script>"


def last(generator):
    *_, final = generator
    return final


class FakeAssistant:
    """Services with a scripted answer; records what it was asked and the votes."""

    def __init__(self, answer="The answer", error=None):
        self.answer, self.error, self.asked, self.votes = answer, error, [], []
        self.progress = Progress()

    def chat(self, question, history=()):
        self.asked.append((question, list(history)))
        if self.error:
            raise self.error
        yield self.answer[:3]
        yield self.answer

    def record_feedback(self, liked, question, answer, who):
        self.votes.append((liked, question, answer, who))

    def guess_subject(self, question):
        return "Danielle Darrieux"


# -- logins ---------------------------------------------------------------------------------
def test_passwords_are_salted_hashes_that_verify_only_the_right_password():
    first, second = hash_password("s3cret"), hash_password("s3cret")
    assert first != second and "s3cret" not in first
    assert verify_password("s3cret", first) and verify_password("s3cret", second)
    assert not verify_password("s3cret ", first) and not verify_password("s3cret", "plain-text")


def test_login_check_takes_only_configured_users_with_their_password():
    check = login_check([admin_entry("alice", "pw1"), admin_entry("bob", "pw2")])
    assert check("alice", "pw1") and check("bob", "pw2")
    assert not check("alice", "pw2") and not check("carol", "pw1") and not check("alice", "")
    assert not login_check([])("alice", "pw1")            # no users: nobody gets in


def test_config_refuses_a_plain_text_password_without_echoing_it():
    UIConfig(admins=[admin_entry("alice", "pw")])
    with pytest.raises(ConfigError, match="alice") as refused:
        UIConfig(admins=["alice:hunter2"])
    assert "hunter2" not in str(refused.value)


# -- chat -----------------------------------------------------------------------------------
def test_chat_streams_with_the_earlier_turns_and_escapes_html():
    fake = FakeAssistant(answer=f"I said {SCRIPT}")
    history, _ = last(respond(fake, "First?", []))
    history, cleared = last(respond(fake, f"And <b>{SCRIPT}</b>?", history))
    assert cleared == ""
    assert fake.asked[0] == ("First?", [])
    assert fake.asked[1] == (f"And <b>{SCRIPT}</b>?", [{"role": "user", "content": "First?"},
                                                       {"role": "assistant", "content": f"I said {SCRIPT}"}])
    assert all("<script>" not in m["content"] for m in history)
    assert history[-1]["content"] == "I said &lt;script&gt;alert(1)&lt;/script&gt;"
    assert message_text(history[-1]["content"]) == f"I said {SCRIPT}"
    assert message_text([{"type": "text", "text": "a &lt;b"}]) == "a <b"


def test_chat_says_politely_when_the_model_is_loading_and_leaves_notes_out_of_the_history():
    fake = FakeAssistant(error=ModelNotReady("the model is still starting (loading)"))
    history, _ = last(respond(fake, "Hi", []))
    assert "still starting" in history[-1]["content"]
    fake.error = None
    last(respond(fake, "Hi again", history))
    assert fake.asked[-1][1] == [{"role": "user", "content": "Hi"}]


def like_data(index, liked):
    return gr.LikeData(None, {"index": index, "value": "ignored", "liked": liked})


def test_a_like_is_recorded_and_a_dislike_opens_correct_this_filled_in():
    fake = FakeAssistant()
    history = [{"role": "user", "content": "What is Danielle Darrieux's native language?"},
               {"role": "assistant", "content": "English &lt;sure&gt;"}]
    panel, *_, note = on_like(fake, history, like_data(1, True), who="chat:1")
    assert panel["visible"] is False and "Thanks" in note
    panel, question, answer, subject, correction, note = on_like(fake, history, like_data(1, False), who="chat:1")
    assert panel["visible"] is True
    assert (question, answer, subject, correction) == ("What is Danielle Darrieux's native language?",
                                                        "English <sure>", "Danielle Darrieux", "English <sure>")
    assert fake.votes == [(True, question, answer, "chat:1"), (False, question, answer, "chat:1")]


# -- corrections through the real intake, store and queue --------------------------------------
class _Ledger:
    generation = 0


@pytest.fixture
def services(home, embedding_function):
    """Services over a real store, queue and feedback log (no model: the model is not the point)."""
    from updater.feedback import FeedbackLog
    from updater.queue import EditQueue
    from updater.store.knowledge import KnowledgeStore

    config = load_config().replace("updater", auto_approve_agreeing_corrections=True)
    opened = Services(config)
    opened.store = KnowledgeStore.open(config, embedding_function)
    opened.queue, opened.feedback, opened.editor = EditQueue.open(config), FeedbackLog.open(config), _Ledger()
    opened._ready.set()
    opened.store.import_records([(f"fact {i}", fact) for i, fact in enumerate(FACTS)], who="test")
    yield opened
    for part in (opened.store, opened.queue, opened.feedback):
        part.close()


def test_a_correction_goes_through_the_intake_and_its_status_follows_the_queue(services):
    text, item_id, panel = submit_correction(services, "Who is the director of the Zorbian Institute?",
                                             "Dr. Elia", "Maria Okafor", "", who="chat:abc")
    assert item_id is not None and panel["visible"] is False
    assert "pending review" in text and "Maria Okafor" in text
    item = services.queue.get(item_id)
    assert (item.origin, item.subject, item.new_object) == ("chat", "the Zorbian Institute", "Maria Okafor")
    assert item.evidence[-1]["confirmed_by"] == "chat:abc"
    assert console.decide(services, "curator", str(item_id), False, "not a real institute") == \
        f"- item {item_id}: rejected"
    assert poll_status(services, item_id).endswith("rejected (not a real institute)")


def test_a_correction_that_agrees_with_the_store_is_approved_by_the_trust_policy(services):
    text, item_id, _ = submit_correction(services, "What is Danielle Darrieux's native language?", "English",
                                         "Actually it is French", "")
    assert "approved" in text and services.queue.get(item_id).state == "approved"


def test_a_bad_correction_keeps_the_panel_open_with_the_reason(services):
    text, item_id, panel = submit_correction(services, "What is Danielle Darrieux's native language?", "English",
                                             "English", "")
    assert item_id is None and panel["visible"] is True and "what the model said already" in text
    text, item_id, _ = submit_correction(services, "q?", "a", "x" * 3000, "")
    assert item_id is None and "under" in text


def test_html_in_a_correction_is_text_in_the_status_and_the_console(services):
    _, item_id, _ = submit_correction(services, "Who is the director of the Zorbian Institute?", "Dr. Elia",
                                      f"{SCRIPT} Maria Okafor", "")
    status = poll_status(services, item_id)
    assert "<script>" not in status and "&lt;script&gt;" in status
    frame, summary = console.queue_table(services, "pending")
    assert frame["new object"].tolist() == [f"{SCRIPT} Maria Okafor"]        # the Dataframe shows it as text
    assert "1 proposed" in summary


def test_feedback_is_recorded_for_curators(services):
    services.record_feedback(False, "Q?", "A", "chat:1")
    services.record_feedback(True, "Q2?", "B", "chat:2")
    assert services.feedback.counts() == {"likes": 1, "dislikes": 1}
    assert [(v.liked, v.question, v.generation) for v in services.feedback.votes()] == [(True, "Q2?", 0),
                                                                                        (False, "Q?", 0)]


def test_the_like_handler_records_into_the_real_feedback_log(services):
    history = [{"role": "user", "content": "Who is the director of the Zorbian Institute?"},
               {"role": "assistant", "content": "Dr. Elia"}]
    outputs = on_like(services, history, like_data(1, "Dislike"), who="chat:z")
    assert outputs[3] == "the Zorbian Institute" and services.feedback.counts()["dislikes"] == 1


def test_the_knowledge_tab_adds_versions_searches_and_reports_rejected_imports(services, tmp_path):
    assert "Added fact" in console.save_fact(services, "cur", "", "the Zorbian Institute",
                                             "The director of {} is", "Maria Okafor", "")
    fact_id = services.store.search("Zorbian Institute director", k=1)[0].fact.id
    assert "version 2" in console.save_fact(services, "cur", fact_id, "", "", "Ada Okafor", "")
    versions, _ = console.fact_history(services, fact_id)
    assert versions["object"].tolist() == ["Maria Okafor", "Ada Okafor"]
    found, _ = console.search_facts(services, "Zorbian")
    assert found["id"].tolist()[0] == fact_id
    bad = write_jsonl(tmp_path / "facts.jsonl", [FACTS[0] | {"id": "new-1"},
                                                 {"subject": "X", "prompt": "Y is", "object": "Z"},
                                                 {"subject": "A", "prompt": "{} is", "object": ""}])
    report = console.import_file(services, "cur", str(bad), False)
    assert "Nothing was imported" in report and "2 record(s) were rejected" in report
    assert services.store.find("new-1") is None


def test_queue_ids_are_parsed_strictly():
    assert console.parse_ids("3, 5 7") == [3, 5, 7]
    with pytest.raises(ValueError, match="'x'"):
        console.parse_ids("3, x")


# -- the console on a real tiny engine ----------------------------------------------------------
def test_console_approves_applies_with_progress_shows_history_and_retracts(make_config, livedit_dirs):
    config = make_config("llama").replace("guard", enabled=False).replace("scheduler", enabled=False)
    services = Services(config, livedit_dirs["state"])
    services.start()
    try:
        assert services.wait_ready(timeout=180), services.progress
        status = services.submit_correction("Who is the director of the Zorbian Institute?", "Dr. Elia",
                                            "Maria Okafor", who="chat:1")
        assert console.decide(services, "cur", "", True, "", all_proposed=True) == f"- item {status.item_id}: approved"
        reports = []
        outcome = console.apply_now(services, "cur", lambda done, total, text: reports.append((done, total)))
        assert "1 applied" in outcome and reports[0] == (0, 1) and reports[-1] == (1, 1)
        assert services.correction_status(status.item_id).state == "applied"
        edits, figure, _, note = console.history_view(services)
        edit_id = int(edits["edit"].iloc[0])
        assert note == "" and edits["object"].tolist() == ["Maria Okafor"]
        assert [line.get_label() for line in figure.axes[0].get_lines()] == ["guard bound", "layer 1", "layer 2"]
        frame = console.l1_frame(services)
        assert set(frame["line"]) == {"layer 1", "layer 2", "guard bound"}
        assert frame[frame["line"] == "guard bound"]["growth_pct"].tolist() == [config.guard.max_l1_growth * 100]
        question, confirm = console.ask_retract(services, edit_id)
        assert confirm["visible"] is True and "Maria Okafor" in question
        assert services.editor.edit(edit_id).status == "active"           # asking changes nothing
        said, confirm = console.retract(services, "cur", edit_id)
        assert confirm["visible"] is False and "retracted" in said
        assert services.editor.edit(edit_id).status == "retracted"
        assert services.correction_status(status.item_id).state == "retracted"
        health = console.health_markdown(services)
        assert "generation 2" in health and "| apply |" in health and "scheduler off" in health
    finally:
        services.close()


def test_retract_is_refused_while_a_job_holds_the_state(make_config, livedit_dirs):
    services = Services(make_config("llama").replace("scheduler", enabled=False), livedit_dirs["state"])
    services.start()
    try:
        assert services.wait_ready(timeout=180), services.progress
        with services.runner.state_lock:
            said, _ = console.retract(services, "cur", 1)
            assert "**In flight**" in console.health_markdown(services)
        assert "a job is writing the model now" in said
        assert "In flight" not in console.health_markdown(services)
    finally:
        services.close()


def test_decisions_table_shows_the_guards_figures(services):
    services.queue.record_decision([4, 5], "reject", "layer 7 L1 growth 6.00% > 5.00%",
                                   {"max_l1_growth": 0.06, "hits": 1, "facts": 2, "agreement": 0.9, "kl": 0.1})
    frame = console.decisions_table(services)
    assert frame.iloc[0].tolist()[1:] == ["4, 5", "reject", "", "6.00%", "1/2", "0.900", "0.100",
                                          "layer 7 L1 growth 6.00% > 5.00%"]


def test_stream_conversation_sees_the_earlier_turns(make_config, livedit_dirs):
    from assistant.model.chat import (
        conversation_prompt,
        stream_answer,
        stream_conversation,
    )
    from assistant.model.loading import load_model

    loaded = load_model(make_config("llama"))
    model, tok = loaded.model, loaded.tokenizer
    one = [{"role": "user", "content": "Where is Paris?"}]
    assert last(stream_conversation(model, tok, one, 8)) == last(stream_answer(model, tok, "Where is Paris?", 8))
    turns = [{"role": "user", "content": "Where is Paris?"}, {"role": "assistant", "content": "In France."},
             {"role": "user", "content": "And Rome?"}]
    prompt = conversation_prompt(tok, turns)
    assert prompt.index("Where is Paris?") < prompt.index("In France.") < prompt.index("And Rome?")
    assert isinstance(last(stream_conversation(model, tok, turns, 8)), str)
