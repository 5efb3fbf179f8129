"""The web app's API through gradio_client against a real `livedit serve` on the tiny model:
chat, a correction submitted and its status polled until it is applied, and the console's
endpoints, which refuse every anonymous call."""

from __future__ import annotations

import signal
import time

import httpx
import pytest
from test_serve import _free_port, start_serving, wait_for_answer, write_tiny_config

from ui.auth import admin_entry

ADMIN = ("curator", "correct horse battery staple")
ADMIN_ENDPOINTS = ("queue", "approve", "reject", "apply_now", "retract", "health")


@pytest.fixture
def served(tmp_path, make_config, monkeypatch):
    """The URL of a `livedit serve` process (guard and schedule off: the console applies)."""
    monkeypatch.setenv("LIVEDIT_HOME", str(tmp_path / "home"))
    config_file = tmp_path / "config.toml"
    write_tiny_config(config_file, make_config)
    with config_file.open("a", encoding="utf-8") as file:
        file.write(f'[guard]\nenabled = false\n[scheduler]\nenabled = false\n'
                   f'[ui]\nadmins = ["{admin_entry(*ADMIN)}"]\nmax_message_chars = 500\n')
    port = _free_port()
    process = start_serving(str(config_file), port)
    try:
        wait_for_answer(port, "Where is Paris?")
        yield f"http://127.0.0.1:{port}"
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
        assert process.returncode == 0, output
    finally:
        if process.poll() is None:
            process.kill()


def text_of(message: dict) -> str:
    content = message["content"]
    return content[0]["text"] if isinstance(content, list) else content


def test_chat_correction_and_its_status_until_applied_through_the_api(served):
    from gradio_client import Client

    chat = Client(f"{served}/", verbose=False)
    history, _ = chat.predict("Who is the director of the Zorbian Institute?", [], api_name="/chat")
    answer = text_of(history[-1])
    assert answer and "⚠️" not in answer
    history, _ = chat.predict("And who founded it?", history, api_name="/chat")     # a second turn
    assert len(history) == 4 and text_of(history[-1])
    history, kept = chat.predict("x" * 501, history, api_name="/chat")
    assert kept == "x" * 501 and "under 500 characters" in text_of(history[-1])

    status = chat.predict("Who is the director of the Zorbian Institute?", answer, "Maria Okafor", "",
                          api_name="/submit_correction")
    assert (status["state"], status["new_object"]) == ("proposed", "Maria Okafor")
    assert "pending review" in status["label"]
    item_id = status["item_id"]
    assert chat.predict(item_id, api_name="/correction_status")["state"] == "proposed"

    admin = Client(f"{served}/admin/", auth=ADMIN, verbose=False)
    pending = admin.predict("pending", api_name="/queue")
    assert [item["id"] for item in pending] == [item_id] and pending[0]["evidence"][0]["who"].startswith("chat:")
    assert admin.predict(str(item_id), "", api_name="/approve") == f"- item {item_id}: approved"
    assert chat.predict(item_id, api_name="/correction_status")["state"] == "approved"
    assert "1 applied" in admin.predict(api_name="/apply_now")
    deadline, state = time.monotonic() + 60, None
    while time.monotonic() < deadline and state != "applied":
        state = chat.predict(item_id, api_name="/correction_status")["state"]
        time.sleep(0.5)
    assert state == "applied"
    assert "generation 1" in admin.predict(api_name="/health")


def test_admin_endpoints_refuse_anonymous_calls_and_wrong_passwords(served):
    from gradio_client import Client
    from gradio_client.exceptions import AuthenticationError

    with pytest.raises(AuthenticationError):
        Client(f"{served}/admin/", verbose=False)
    with pytest.raises(Exception, match="(?i)login|credentials|auth"):
        Client(f"{served}/admin/", auth=(ADMIN[0], "wrong"), verbose=False)
    admin = Client(f"{served}/admin/", auth=ADMIN, verbose=False)
    named = {name.lstrip("/") for name in admin.view_api(print_info=False, return_format="dict")["named_endpoints"]}
    assert set(ADMIN_ENDPOINTS) <= named
    for name in named:                      # every console endpoint, the UI's own included
        for route in (f"/admin/gradio_api/call/{name}", f"/admin/gradio_api/run/{name}"):
            refused = httpx.post(f"{served}{route}", json={"data": []}, timeout=30)
            assert refused.status_code == 401, (route, refused.status_code, refused.text)
    joined = httpx.post(f"{served}/admin/gradio_api/queue/join", json={"data": [], "fn_index": 0,
                                                                       "session_hash": "anonymous"}, timeout=30)
    assert joined.status_code == 401
    assert httpx.get(f"{served}/admin/config", timeout=30).status_code == 401
    public = Client(f"{served}/", verbose=False).view_api(print_info=False, return_format="dict")
    assert {"/chat", "/submit_correction", "/correction_status"} <= set(public["named_endpoints"])
    assert not set(public["named_endpoints"]) & {f"/{name}" for name in ADMIN_ENDPOINTS}
