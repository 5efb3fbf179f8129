"""Drift of an edited model on unrelated probes, against the unedited model.

A probe is a token sequence and the positions scored in it: a chat question followed by the
unedited model's own greedy answer (scored over the answer), or a plain text (scored over
all of it). The reference keeps, at each scored position, the unedited model's top-1 token
and its top-k log-probabilities. Two figures compare an edited model with it:

- agreement: the share of scored positions whose top-1 token is unchanged (teacher-forced,
  so one early change does not derail the rest, and runs compare smoothly);
- KL: the mean KL(unedited || edited) over the positions, on k + 1 bins (the reference's
  top k tokens and the rest together). Coarse-graining never raises a KL, so this is a lower
  bound on the full KL and close to it when the top k hold nearly all the mass.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from assistant.model.chat import chat_prompt, encode_chat_prompt, greedy_token_continuations


@dataclass(frozen=True)
class Probe:
    ids: list[int]           # the whole sequence
    first: int               # index of the first scored token (predicted from position first - 1)


@dataclass(frozen=True)
class DriftReference:
    probes: list[Probe]
    top1: torch.Tensor       # (P,) the unedited top-1 token at each scored position, all probes concatenated
    top_ids: torch.Tensor    # (P, k)
    top_logp: torch.Tensor   # (P, k) float64


@dataclass(frozen=True)
class Drift:
    agreement: float         # share of scored positions with the unedited top-1 token
    kl: float                # mean coarse-grained KL(unedited || edited) per position, in nats
    positions: int


def coarse_kl(p_top_logp: torch.Tensor, q_logp: torch.Tensor, top_ids: torch.Tensor) -> torch.Tensor:
    """KL(P || Q) per row on the bins {each of P's top k tokens} + {everything else}.

    p_top_logp: (N, k) log P at P's top tokens; q_logp: (N, V) log Q; top_ids: (N, k)."""
    p_top = p_top_logp.exp()                                               # (N, k)
    q_top_logp = q_logp.gather(1, top_ids)                                 # (N, k)
    p_rest = (1 - p_top.sum(1)).clamp_min(0)                               # (N,)
    q_rest = (1 - q_top_logp.exp().sum(1)).clamp_min(1e-12)                # (N,)
    kl = (p_top * (p_top_logp - q_top_logp)).sum(1)
    return kl + torch.where(p_rest > 0, p_rest * (p_rest.clamp_min(1e-12).log() - q_rest.log()), 0.0)


@torch.no_grad()
def scored_logprobs(model, probes: list[Probe], pad_id: int, batch_size: int = 8) -> torch.Tensor:
    """(P, V) float64 log-probabilities at every scored position, probes concatenated in order."""
    device = next(model.parameters()).device
    rows = []
    for start in range(0, len(probes), batch_size):
        chunk = probes[start:start + batch_size]
        width = max(len(p.ids) for p in chunk)
        ids = torch.tensor([p.ids + [pad_id] * (width - len(p.ids)) for p in chunk], device=device)
        mask = torch.tensor([[1] * len(p.ids) + [0] * (width - len(p.ids)) for p in chunk], device=device)
        logits = model(input_ids=ids, attention_mask=mask).logits                # (B, T, V)
        for row, probe in enumerate(chunk):
            scored = logits[row, probe.first - 1:len(probe.ids) - 1]            # predicts ids[first:]
            rows.append(torch.log_softmax(scored.double(), dim=-1).cpu())
    return torch.cat(rows)


def answered_probes(model, tokenizer, questions: list[str], answer_tokens: int,
                    system_prompt: str = "") -> list[tuple[str, Probe]]:
    """Each question that the model answers, with its probe: the question in the chat
    template followed by the model's own greedy answer."""
    prompts = [encode_chat_prompt(tokenizer, chat_prompt(tokenizer, q, system_prompt)) for q in questions]
    replies = greedy_token_continuations(model, tokenizer, prompts, answer_tokens)
    return [(q, Probe(p + r, len(p))) for q, p, r in zip(questions, prompts, replies) if r]


def question_probes(model, tokenizer, questions: list[str], answer_tokens: int, system_prompt: str = "") -> list[Probe]:
    """Each question in the chat template, followed by the model's own greedy answer."""
    return [probe for _, probe in answered_probes(model, tokenizer, questions, answer_tokens, system_prompt)]


def text_probes(tokenizer, texts: list[str], tokens: int) -> list[Probe]:
    """The first ``tokens`` tokens of each text, all scored after the first."""
    probes = []
    for text in texts:
        ids = tokenizer(text).input_ids[:tokens]
        if len(ids) > 1:
            probes.append(Probe(ids, 1))
    return probes


def reference(model, probes: list[Probe], pad_id: int, top_k: int = 256) -> DriftReference:
    """The unedited model's figures on ``probes`` (``model`` must be the unedited one)."""
    logp = scored_logprobs(model, probes, pad_id)
    top_logp, top_ids = logp.topk(min(top_k, logp.shape[1]), dim=1)
    return DriftReference(probes, logp.argmax(1), top_ids, top_logp)


def measure_drift(model, ref: DriftReference, pad_id: int) -> Drift:
    """How far ``model`` has moved from the reference on its probes."""
    logp = scored_logprobs(model, ref.probes, pad_id)
    agreement = (logp.argmax(1) == ref.top1).double().mean().item()
    kl = coarse_kl(ref.top_logp, logp, ref.top_ids).mean().item()
    return Drift(agreement, kl, len(ref.top1))
