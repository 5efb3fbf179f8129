"""One chat turn with the served model: the chat template, greedy generation, streaming."""

from __future__ import annotations

import threading
from typing import Iterator

import torch

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


@torch.no_grad()
def answer(model, tokenizer, question: str, max_new_tokens: int = 48, system_prompt: str = "",
           lock: threading.RLock | None = None) -> str:
    """The greedy answer to one question, without the prompt."""
    inputs = _generation_inputs(model, tokenizer, question, system_prompt)
    with lock or threading.RLock():
        output = model.generate(**inputs, **_generation_settings(tokenizer, max_new_tokens))
    new_tokens = output[0, inputs["input_ids"].shape[1]:]
    return tokenizer.decode(new_tokens, skip_special_tokens=True).strip()


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


def stream_answer(model, tokenizer, question: str, max_new_tokens: int = 48, system_prompt: str = "",
                  lock: threading.RLock | None = None) -> Iterator[str]:
    """Yield the answer as it grows, token by token (for the chat UI)."""
    from transformers import TextIteratorStreamer

    inputs = _generation_inputs(model, tokenizer, question, system_prompt)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    guard = lock or threading.RLock()

    def run():
        with guard, torch.no_grad():
            model.generate(**inputs, **_generation_settings(tokenizer, max_new_tokens), streamer=streamer)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    text = ""
    for piece in streamer:
        text += piece
        yield text
    worker.join()
