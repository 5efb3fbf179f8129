"""The whole product in a real browser (Debian's Chromium through Playwright) on the real
default model: ask, dislike and correct, approve and apply in the console while the progress
shows, ask again and get the corrected answer, see the batch, the guard's decision and the
L1 plot in History, and see HTML in a correction shown as text. Each step saves a screenshot
under test-artifacts/browser/ (LIVEDIT_TEST_ARTIFACTS overrides the folder)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from assistant.config import PROJECT_ROOT
from ui.auth import admin_entry

pytestmark = pytest.mark.integration

ARTIFACTS = Path(os.environ.get("LIVEDIT_TEST_ARTIFACTS", PROJECT_ROOT / "test-artifacts")) / "browser"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]
ADMIN = ("curator", "a long test passphrase")
QUESTION = "Who is the director of the Zorbian Institute?"
NEW_ANSWER = "Maria Okafor"
HTML_CORRECTION = "<script>window.pwned = 1</script><b>Ada</b> Okafor"
# The real model and the real edit settings, except: no refinement rounds (one chat edit in
# about a minute here), a smaller guard probe set (the bounds are the defaults, so a lone
# chat correction must pass them), and no schedule: the curator applies from the console.
SETTINGS = f"""
[model]
threads = 2
[editing]
chat_refine_rounds = 0
[guard]
probe_questions = 4
probe_texts = 4
[scheduler]
enabled = false
[ui]
admins = ["{admin_entry(*ADMIN)}"]
"""


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def served(real_config, load_real_model, tmp_path):
    """`livedit serve` on the default model in a fresh home that shares the test home's model
    and covariance caches; yields its URL."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `apt-get install -y chromium` (make test does it)", pytrace=False)
    home = tmp_path / "home"
    home.mkdir()
    for name in ("models", "cache"):
        (Path(real_config.paths.home) / name).mkdir(parents=True, exist_ok=True)
        (home / name).symlink_to(Path(real_config.paths.home) / name, target_is_directory=True)
    config_file = tmp_path / "config.toml"
    config_file.write_text(SETTINGS, encoding="utf-8")
    port = _free_port()
    env = {**os.environ, "LIVEDIT_HOME": str(home), "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False",
           "TRANSFORMERS_VERBOSITY": "error"}
    env.pop("LIVEDIT_STATE_DIR", None)
    log = (tmp_path / "serve.log").open("w")
    process = subprocess.Popen([sys.executable, "-m", "livedit", "--config", str(config_file), "serve", "--port",
                                str(port)], stdout=log, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_until_up(url, process)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=120)
        finally:
            if process.poll() is None:
                process.kill()
        log.close()
        print((tmp_path / "serve.log").read_text()[-3000:])


def _wait_until_up(url: str, process: subprocess.Popen, timeout: float = 120) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"livedit serve ended with {process.returncode} before serving")
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"livedit serve did not answer at {url} within {timeout} s")


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        opened = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield opened
        opened.close()


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def wait_for_text(locator, pattern: str, timeout: float) -> str:
    """The locator's text once it matches ``pattern`` (a regular expression)."""
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        if locator.count():
            text = locator.first.inner_text()
            if re.search(pattern, text):
                return text
        time.sleep(0.5)
    raise AssertionError(f"no {pattern!r} within {timeout} s; last text: {text!r}")


def ask(page, question: str, timeout: float = 180) -> str:
    """Ask in the chat and return the answer once it has stopped growing."""
    answers = page.locator("#chat .message-row.bot-row")
    before = answers.count()
    page.locator("#question textarea, #question input").first.fill(question)
    page.keyboard.press("Enter")
    deadline, text, steady = time.monotonic() + timeout, "", 0
    while time.monotonic() < deadline and steady < 6:       # unchanged for 3 s: the answer is done
        time.sleep(0.5)
        if answers.count() > before:
            now = answers.last.inner_text().strip()
            steady = steady + 1 if now and now == text else 0
            text = now
    assert text, f"no answer to {question!r} within {timeout} s"
    return text


def dislike_and_correct(page, correction: str) -> str:
    page.get_by_role("button", name="Dislike", exact=True).last.click()
    answer = page.locator("#correct-answer textarea").first
    answer.wait_for(state="visible", timeout=60_000)
    answer.fill(correction)
    return page.locator("#correct-subject input, #correct-subject textarea").first.input_value()


def log_in(page, url: str) -> None:
    page.goto(f"{url}/admin/")
    page.get_by_label("username").fill(ADMIN[0])
    page.get_by_label("password").fill(ADMIN[1])
    page.get_by_role("button", name="Login").click()
    page.get_by_role("tab", name="Queue").wait_for(timeout=60_000)


def test_ask_correct_approve_apply_ask_again_history_and_escaping(served, browser):
    chat = browser.new_page(viewport={"width": 1280, "height": 900})
    chat.goto(served)
    wait_for_text(chat.locator("#start-status"), r"Ready", timeout=600)

    # 1. ask a question
    first = ask(chat, QUESTION)
    assert NEW_ANSWER not in first
    shot(chat, "1-ask")

    # 2. dislike the answer and submit a correction
    subject = dislike_and_correct(chat, NEW_ANSWER)
    assert subject == "the Zorbian Institute"
    chat.locator("#correct-submit").click()
    status = wait_for_text(chat.locator("#correction-status"), r"pending review", timeout=120)
    item_id = re.search(r"#(\d+)", status)[1]
    shot(chat, "2-correct")

    # 3. log in as admin, approve it and apply it, watching the progress
    console = browser.new_page(viewport={"width": 1280, "height": 1000})
    log_in(console, served)
    wait_for_text(console.locator("#queue"), re.escape(NEW_ANSWER), timeout=60)
    console.locator("#queue-ids input, #queue-ids textarea").first.fill(item_id)
    console.locator("#approve").click()
    wait_for_text(console.locator("#queue-outcome"), rf"item {item_id}: approved", timeout=60)
    console.locator("#apply-now").click()
    wait_for_text(console.locator("body"), r"applying 1 approved item", timeout=60)
    shot(console, "3a-apply-progress")
    outcome = wait_for_text(console.locator("#queue-outcome"), r"Apply finished", timeout=900)
    assert "1 applied" in outcome, outcome
    shot(console, "3b-applied")
    wait_for_text(chat.locator("#correction-status"), r"applied: ask again", timeout=30)

    # 4. ask again and see the corrected answer
    again = ask(chat, QUESTION)
    shot(chat, "4-ask-again")
    assert "Okafor" in again, again

    # 5. History: the batch, the guard's decision and the L1 plot
    console.get_by_role("tab", name="History").click()
    console.get_by_role("button", name="Reload").last.click()
    wait_for_text(console.locator("#edits"), re.escape(NEW_ANSWER), timeout=60)
    wait_for_text(console.locator("#decisions"), r"commit", timeout=60)
    console.locator("#l1-plot img, #l1-plot canvas, #l1-plot svg").first.wait_for(timeout=60_000)
    shot(console, "5-history")

    # 6. a correction with HTML in it is shown as text, in the chat and in the console
    dislike_and_correct(chat, HTML_CORRECTION)
    chat.locator("#correct-submit").click()
    status = wait_for_text(chat.locator("#correction-status"), r"<script>", timeout=120)
    assert "<b>Ada</b>" in status
    asked = ask(chat, "Is <b>this</b> bold?")
    assert asked and "<b>this</b>" in chat.locator("#chat .message-row.user-row").last.inner_text()
    assert chat.locator("#chat .user-row b, #correction-status b, #correction-status script").count() == 0
    assert chat.evaluate("window.pwned") is None
    shot(chat, "6a-html-escaped-chat")
    console.get_by_role("tab", name="Queue").click()
    console.get_by_role("button", name="Reload").first.click()
    wait_for_text(console.locator("#queue"), re.escape("<script>window.pwned = 1</script>"), timeout=60)
    assert console.evaluate("window.pwned") is None
    shot(console, "6b-html-escaped-console")
