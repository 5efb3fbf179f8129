"""`livedit serve`: the chat callback, the background start, and a real serving process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from assistant.errors import ModelNotReady
from livedit.services import Progress, Services
from tests.conftest import write_config_toml
from ui.app import MAX_QUESTION_CHARS, respond


class FakeServices:
    def __init__(self, pieces=("The", "The answer"), error: Exception | None = None):
        self.pieces, self.error, self.progress = pieces, error, Progress()

    def chat(self, question):
        if self.error:
            raise self.error
        yield from self.pieces


def last(generator):
    *_, final = generator
    return final


def test_respond_streams_the_answer_into_the_history():
    history, cleared = last(respond(FakeServices(), "  Where is Paris? ", []))
    assert cleared == ""
    assert history == [{"role": "user", "content": "Where is Paris?"}, {"role": "assistant", "content": "The answer"}]


def test_respond_says_politely_that_the_model_is_not_ready():
    history, _ = last(respond(FakeServices(error=ModelNotReady("the model is still starting (loading)")), "Hi", []))
    assert history[-1]["role"] == "assistant" and "still starting" in history[-1]["content"]


def test_respond_refuses_a_question_that_is_too_long_and_keeps_it():
    question = "x" * (MAX_QUESTION_CHARS + 1)
    history, kept = last(respond(FakeServices(), question, []))
    assert kept == question and str(MAX_QUESTION_CHARS) in history[-1]["content"]


def test_services_open_in_the_background_and_chat_once_ready(make_config, livedit_dirs):
    services = Services(make_config("llama"), livedit_dirs["state"])
    with pytest.raises(ModelNotReady, match="still starting"):
        next(services.chat("Where is Paris?"))
    services.start()
    try:
        assert services.wait_ready(timeout=120), services.progress
        assert services.progress.ready
        answer = last(services.chat("Where is Paris?"))
        assert isinstance(answer, str) and answer
    finally:
        services.close()
    assert services.editor is None and services.queue is None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def write_tiny_config(path, make_config, model: str = "llama") -> str:
    """A config.toml for a `livedit` subprocess on a tiny model (small statistics, small edits)."""
    return write_config_toml(path, make_config(model).replace("model", device="cpu", threads=1))


def start_serving(config_file: str, port: int) -> subprocess.Popen:
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "livedit", "--config", config_file, "serve", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def wait_for_answer(port: int, question: str, timeout: float = 120.0) -> str:
    from gradio_client import Client

    deadline = time.monotonic() + timeout
    client = None
    while time.monotonic() < deadline:
        try:
            client = client or Client(f"http://127.0.0.1:{port}/", verbose=False)
            history, _ = client.predict(question, [], api_name="/chat")
            text = history[-1]["content"]
            text = text[0]["text"] if isinstance(text, list) else text
            if "still starting" not in text:
                return text
        except Exception:                       # the server is not up yet  # noqa: BLE001
            pass
        time.sleep(1.0)
    raise AssertionError(f"no answer from livedit serve on port {port} within {timeout} s")


def test_livedit_serve_answers_and_stops_cleanly_on_sigterm(tmp_path, make_config):
    port = _free_port()
    process = start_serving(write_tiny_config(tmp_path / "config.toml", make_config), port)
    try:
        answer = wait_for_answer(port, "Where is Paris?")
        assert answer and "⚠️" not in answer
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, output
    assert "livedit: stopped" in output


def ask(client, question: str) -> str:
    history, _ = client.predict(question, [], api_name="/chat")
    text = history[-1]["content"]
    return text[0]["text"] if isinstance(text, list) else text


def test_eight_chats_during_an_apply_each_get_the_old_or_the_new_answer(tmp_path, make_config, new_fact,
                                                                        monkeypatch):
    """Every answer comes from one set of weights: the old model's or the new one's, never a mix."""
    import sqlite3
    import threading

    from gradio_client import Client

    from assistant.config import load_config
    from updater.queue import EditQueue

    monkeypatch.setenv("LIVEDIT_HOME", str(tmp_path / "home"))
    config_file = tmp_path / "config.toml"
    write_tiny_config(config_file, make_config)
    with config_file.open("a", encoding="utf-8") as file:
        file.write("[guard]\nenabled = false\n[scheduler]\napply_minutes = 0.002\ndetect_minutes = 0.0\n"
                   "verify_minutes = 0.0\n")
    facts = [new_fact(0, question=f"What is {new_fact(0).subject} known for?")]      # one batch: one commit
    questions = [facts[0].question] + [f"What is {new_fact(i).subject} known for?" for i in range(1, 4)]
    port = _free_port()
    process = start_serving(str(config_file), port)
    try:
        wait_for_answer(port, questions[0])
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        old = {q: ask(client, q) for q in questions}
        answers, errors, done = [], [], threading.Event()

        def chat(index: int) -> None:
            own = Client(f"http://127.0.0.1:{port}/", verbose=False)
            question = questions[index % len(questions)]
            while not done.is_set():
                try:
                    answers.append((question, ask(own, question)))
                except Exception as error:          # collected and asserted below  # noqa: BLE001
                    errors.append(error)
                    return

        threads = [threading.Thread(target=chat, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 120
        while len(answers) < 8 and not errors and time.monotonic() < deadline:
            time.sleep(0.05)                        # every client is chatting before the edit arrives
        with EditQueue.open(load_config(str(config_file))) as queue:
            for fact in facts:
                item = queue.propose(fact_id=fact.id, subject=fact.subject, prompt=fact.prompt,
                                     question=fact.question, new_object=fact.target_new, origin="curator",
                                     who="ada").item
                queue.approve(item.id, who="ada")
        deadline = time.monotonic() + 120
        with sqlite3.connect(tmp_path / "home" / "queue.sqlite") as conn:
            while time.monotonic() < deadline and \
                    conn.execute("SELECT COUNT(*) FROM items WHERE state != 'applied'").fetchone()[0]:
                time.sleep(0.1)
        time.sleep(3.0)                             # a few chats on the new weights too
        done.set()
        for thread in threads:
            thread.join(60)
        new = {q: ask(client, q) for q in questions}
    finally:
        process.kill()
    assert errors == []
    assert any(old[q] != new[q] for q in questions), "the edits changed no answer; the test would prove nothing"
    assert len(answers) >= 16
    thirds = [(q, a) for q, a in answers if a not in (old[q], new[q])]
    assert thirds == [], f"answers from neither the old nor the new weights: {thirds[:3]}"
