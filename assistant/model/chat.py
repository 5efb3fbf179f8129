"""One chat turn with the served model: the chat template, greedy generation, streaming."""

from __future__ import annotations

import queue
import threading
from contextlib import nullcontext
from typing import Callable, ContextManager, Iterator

import torch
from transformers import StoppingCriteria, StoppingCriteriaList, TextStreamer

from assistant.errors import GenerationStalled

FALLBACK_TEMPLATE = "Question: {question}\nAnswer:"


def _messages(question: str, system_prompt: str) -> list[dict]:
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return system + [{"role": "user", "content": question}]


def chat_prompt(tokenizer, question: str, system_prompt: str = "") -> str:
    """The text the model sees before its answer ("<user> question <assistant>")."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(_messages(question, system_prompt), add_generation_prompt=True,
                                             tokenize=False)
    return FALLBACK_TEMPLATE.format(question=question)


def chat_transcript(tokenizer, question: str, reply: str, system_prompt: str = "") -> str:
    """One finished turn as the model reads it: the question, the reply and the template's
    end of the turn (a newline where the tokenizer has no chat template)."""
    if getattr(tokenizer, "chat_template", None):
        messages = _messages(question, system_prompt) + [{"role": "assistant", "content": reply}]
        return tokenizer.apply_chat_template(messages, tokenize=False)
    return f"{FALLBACK_TEMPLATE.format(question=question)} {reply}\n"


def encode_chat_prompt(tokenizer, text: str) -> list[int]:
    """Token ids of a chat prompt; templated text already holds its special tokens."""
    templated = bool(getattr(tokenizer, "chat_template", None))
    return tokenizer(text, add_special_tokens=not templated).input_ids


def _generation_inputs(model, tokenizer, question: str, system_prompt: str) -> dict:
    ids = encode_chat_prompt(tokenizer, chat_prompt(tokenizer, question, system_prompt))
    device = next(model.parameters()).device
    input_ids = torch.tensor([ids], device=device)
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}


def _generation_settings(tokenizer, max_new_tokens: int) -> dict:
    return {"max_new_tokens": max_new_tokens, "do_sample": False, "pad_token_id": tokenizer.pad_token_id,
            "eos_token_id": tokenizer.eos_token_id}


def answers(model, tokenizer, questions: list[str], max_new_tokens: int = 48, system_prompt: str = "",
            batch_size: int = 16) -> list[str]:
    """Greedy answers to many questions, in left-padded batches."""
    encoded = [encode_chat_prompt(tokenizer, chat_prompt(tokenizer, q, system_prompt)) for q in questions]
    return [text.strip() for text in greedy_continuations(model, tokenizer, encoded, max_new_tokens, batch_size)]


def greedy_continuations(model, tokenizer, encoded: list[list[int]], max_new_tokens: int,
                         batch_size: int = 16) -> list[str]:
    """The greedy continuation of each tokenised prompt, in left-padded batches."""
    continued = greedy_token_continuations(model, tokenizer, encoded, max_new_tokens, batch_size)
    return [tokenizer.decode(ids, skip_special_tokens=True) for ids in continued]


@torch.no_grad()
def greedy_token_continuations(model, tokenizer, encoded: list[list[int]], max_new_tokens: int,
                               batch_size: int = 16) -> list[list[int]]:
    """The greedy continuation's token ids of each tokenised prompt, up to the end of turn."""
    device = next(model.parameters()).device
    results = []
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start:start + batch_size]
        width = max(map(len, chunk))
        pad = tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in chunk], device=device)
        mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in chunk], device=device)
        output = model.generate(input_ids=input_ids, attention_mask=mask,
                                **_generation_settings(tokenizer, max_new_tokens))
        for row in output[:, width:].tolist():
            ended = [i for i, token in enumerate(row) if token in (tokenizer.eos_token_id, pad)]
            results.append(row[:ended[0]] if ended else row)
    return results


class _Pieces(TextStreamer):
    """The decoded text of each new token, handed from the generating thread to the reader."""

    def __init__(self, tokenizer):
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.queue: queue.Queue = queue.Queue()

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if text:
            self.queue.put(text)


class _Cancelled(StoppingCriteria):
    """Ends generation at the next token once ``event`` is set (a stalled or abandoned reader)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


_STARTED, _ENDED = object(), object()


def stream_answer(model, tokenizer, question: str, max_new_tokens: int = 48, system_prompt: str = "",
                  reading: Callable[[], ContextManager] | None = None, stall_seconds: float = 60.0) -> Iterator[str]:
    """Yield the answer as it grows, token by token (for the chat UI).

    The generation runs in a thread inside ``reading()`` (the served weights' read side), so
    the whole answer comes from one set of weights. An error there is raised here; a token
    that takes longer than ``stall_seconds`` (waiting for the weights does not count) raises
    GenerationStalled; either way, and when the reader stops early, the generation stops."""
    inputs = _generation_inputs(model, tokenizer, question, system_prompt)
    yield from _stream(model, tokenizer, inputs, max_new_tokens, reading, stall_seconds)


def conversation_prompt(tokenizer, messages: list[dict], system_prompt: str = "") -> str:
    """The text the model sees before its next answer in a conversation of role/content
    messages (user and assistant turns, the last one the user's)."""
    turns = [{"role": m["role"], "content": m["content"]} for m in messages if m["role"] in ("user", "assistant")]
    if getattr(tokenizer, "chat_template", None):
        system = [{"role": "system", "content": system_prompt}] if system_prompt else []
        return tokenizer.apply_chat_template(system + turns, add_generation_prompt=True, tokenize=False)
    text = ""
    for turn in turns:
        text += f"Question: {turn['content']}\n" if turn["role"] == "user" else f"Answer: {turn['content']}\n"
    return text + "Answer:"


def stream_conversation(model, tokenizer, messages: list[dict], max_new_tokens: int = 48, system_prompt: str = "",
                        reading: Callable[[], ContextManager] | None = None,
                        stall_seconds: float = 60.0) -> Iterator[str]:
    """stream_answer over a multi-turn conversation: the next answer to ``messages``."""
    ids = encode_chat_prompt(tokenizer, conversation_prompt(tokenizer, messages, system_prompt))
    input_ids = torch.tensor([ids], device=next(model.parameters()).device)
    inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
    yield from _stream(model, tokenizer, inputs, max_new_tokens, reading, stall_seconds)


def _stream(model, tokenizer, inputs: dict, max_new_tokens: int, reading: Callable[[], ContextManager] | None,
            stall_seconds: float) -> Iterator[str]:
    pieces, cancel = _Pieces(tokenizer), threading.Event()

    def run():
        try:
            with reading() if reading else nullcontext(), torch.no_grad():
                pieces.queue.put(_STARTED)
                model.generate(**inputs, **_generation_settings(tokenizer, max_new_tokens), streamer=pieces,
                               stopping_criteria=StoppingCriteriaList([_Cancelled(cancel)]))
        except BaseException as error:        # handed to the reader, which raises it
            pieces.queue.put(error)
        else:
            pieces.queue.put(_ENDED)

    worker = threading.Thread(target=run, name="livedit-generate", daemon=True)
    worker.start()
    try:
        yield from _read_pieces(pieces.queue, stall_seconds)
    finally:
        cancel.set()


def _read_pieces(pieces: queue.Queue, stall_seconds: float) -> Iterator[str]:
    text, started = "", False
    while True:
        try:
            item = pieces.get(timeout=stall_seconds if started else None)
        except queue.Empty:
            raise GenerationStalled(f"no new token for {stall_seconds:g} s; the answer was stopped. "
                                    "Try again, or raise [chat] stall_seconds if the machine is busy") from None
        if item is _STARTED:
            started = True
        elif item is _ENDED:
            return
        elif isinstance(item, BaseException):
            raise item
        else:
            text += item
            yield text
