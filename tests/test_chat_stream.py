"""Streaming an answer: the text grows token by token; an error in the generating thread
reaches the reader, and a generation that stalls times out instead of hanging the chat."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager

import pytest

from assistant.errors import GenerationStalled
from assistant.model.chat import stream_answer

QUESTION = "Where is Paris?"


class Boom(RuntimeError):
    pass


@pytest.fixture(scope="module")
def tiny(llama_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(llama_dir).eval(), AutoTokenizer.from_pretrained(llama_dir)


@contextmanager
def forward_hook(model, hook):
    """``hook`` runs before every forward pass of the model's first layer, only inside the block."""
    handle = model.model.layers[0].register_forward_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def read_within(seconds: float, stream) -> tuple[list[str], BaseException | None]:
    """Read the whole stream in another thread; fail the test if that takes longer than ``seconds``."""
    texts, errors = [], []

    def read():
        try:
            texts.extend(stream)
        except BaseException as error:        # handed to the test below
            errors.append(error)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(seconds)
    assert not reader.is_alive(), f"the stream did not end within {seconds} s"
    return texts, errors[0] if errors else None


def test_the_streamed_text_grows_to_the_greedy_answer(tiny):
    model, tokenizer = tiny
    texts, error = read_within(60, stream_answer(model, tokenizer, QUESTION, max_new_tokens=6))
    assert error is None and texts
    assert all(later.startswith(earlier) for earlier, later in zip(texts, texts[1:]))


def test_an_error_in_the_generating_thread_reaches_the_reader(tiny):
    model, tokenizer = tiny
    lock = threading.RLock()

    def explode(module, args):
        raise Boom("the forward pass broke")

    with forward_hook(model, explode):
        _, error = read_within(30, stream_answer(model, tokenizer, QUESTION, max_new_tokens=6, reading=lambda: lock))
    assert isinstance(error, Boom) and str(error) == "the forward pass broke"
    assert lock.acquire(timeout=5)            # the failed generation let go of the weights' lock
    lock.release()


def test_an_error_after_some_tokens_still_reaches_the_reader(tiny):
    model, tokenizer = tiny
    calls = []

    def explode_on_the_fourth_pass(module, args):
        calls.append(1)
        if len(calls) == 4:
            raise Boom("late")

    with forward_hook(model, explode_on_the_fourth_pass):
        _, error = read_within(30, stream_answer(model, tokenizer, QUESTION, max_new_tokens=8))
    assert isinstance(error, Boom) and str(error) == "late"


def test_a_stalled_generation_times_out_with_a_clear_error_and_stops(tiny):
    model, tokenizer = tiny
    lock, release, passes = threading.RLock(), threading.Event(), []

    def stall_on_the_second_pass(module, args):
        passes.append(1)
        if len(passes) == 2:
            release.wait(30)

    started = time.monotonic()
    with forward_hook(model, stall_on_the_second_pass):
        try:
            _, error = read_within(20, stream_answer(model, tokenizer, QUESTION, max_new_tokens=8, reading=lambda: lock,
                                                     stall_seconds=0.5))
        finally:
            release.set()
        assert isinstance(error, GenerationStalled), error
        assert "no new token for 0.5 s" in str(error)
        assert time.monotonic() - started < 15
        assert lock.acquire(timeout=10)       # the stalled generation stopped and let go of the lock
        lock.release()
    assert len(passes) <= 3                   # it stopped right after the stall, not at max_new_tokens


def test_a_reader_that_stops_early_stops_the_generation(tiny):
    model, tokenizer = tiny
    lock, passes = threading.RLock(), []
    with forward_hook(model, lambda module, args: passes.append(1)):
        stream = stream_answer(model, tokenizer, QUESTION, max_new_tokens=40, reading=lambda: lock)
        next(stream)
        stream.close()
        assert lock.acquire(timeout=10)
        lock.release()
    assert len(passes) < 40


def test_waiting_for_the_lock_is_not_a_stall(tiny):
    model, tokenizer = tiny
    lock = threading.RLock()
    holder_has_it, let_go = threading.Event(), threading.Event()

    def hold():
        with lock:
            holder_has_it.set()
            let_go.wait(30)

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    holder_has_it.wait(5)
    threading.Timer(1.0, let_go.set).start()          # a weight swap that takes longer than stall_seconds
    texts, error = read_within(30, stream_answer(model, tokenizer, QUESTION, max_new_tokens=4, reading=lambda: lock,
                                                 stall_seconds=0.3))
    assert error is None and texts
    holder.join(5)
