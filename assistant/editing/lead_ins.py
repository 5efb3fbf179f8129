"""Lead-ins: the start of the model's own answer, up to where the object would go.

Asked a question, a small chat model often restates it before it answers ("The Loire
River originates in the ..."), and it answers most rephrased questions that way. An
edit trained only right after the question does not carry into such a restatement. So
for each fact with a question, the model's greedy answer is searched, within its first
sentence, for the cut after which the new object's first token is most likely; the
object is then also trained after that lead-in (prompts.fact_rows).
"""

from __future__ import annotations

import torch

from assistant.model.chat import chat_prompt, encode_chat_prompt, greedy_token_continuations
from assistant.facts import Fact
from assistant.editing.prompts import target_ids

SENTENCE_ENDS = (".", "!", "?", "\n")


def first_sentence_length(pieces: list[str]) -> int:
    """How many tokens (given as their texts) come before the first that ends a sentence."""
    for index, piece in enumerate(pieces):
        if any(end in piece for end in SENTENCE_ENDS):
            return index
    return len(pieces)


def best_cut(slot_logprobs: torch.Tensor, min_tokens: int) -> int:
    """The lead-in length whose next-token log-probability of the object is highest
    (``slot_logprobs[c]`` after c answer tokens); 0 when the answer's very start wins or
    the best cut is shorter than ``min_tokens``."""
    cut = int(slot_logprobs.argmax())
    return cut if cut >= min_tokens else 0


@torch.no_grad()
def answer_lead_ins(model, tokenizer, facts: list[Fact], system_prompt: str, max_tokens: int,
                    min_tokens: int = 2) -> list[list[list[int]]]:
    """Per fact, its lead-in's token ids as a list of at most one (none when the fact has
    no question or the model answers straight away)."""
    asked = [i for i, fact in enumerate(facts) if fact.question]
    prompts = {i: encode_chat_prompt(tokenizer, chat_prompt(tokenizer, facts[i].question, system_prompt)) for i in asked}
    answers = greedy_token_continuations(model, tokenizer, [prompts[i] for i in asked], max_tokens)
    device = next(model.parameters()).device
    lead_ins: list[list[list[int]]] = [[] for _ in facts]
    for i, answer in zip(asked, answers):
        answer = answer[:first_sentence_length([tokenizer.decode([token]) for token in answer])]
        if len(answer) < min_tokens:
            continue
        prompt = prompts[i]
        ids = torch.tensor([prompt + answer], device=device)
        logprobs = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
        object_start = target_ids(tokenizer, facts[i], chat=False)[0]
        slots = logprobs[len(prompt) - 1:, object_start]          # after 0 .. len(answer) answer tokens
        lead_in = answer[:best_cut(slots, min_tokens)]
        if lead_in:
            lead_ins[i].append(lead_in)
    return lead_ins
