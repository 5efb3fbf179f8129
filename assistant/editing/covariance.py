"""C_l = E[k k^T]: the second moment of each edited layer's keys over general text.

Collected once per (model fingerprint, layer, corpus, token count, sequence length) and
cached under $LIVEDIT_HOME/cache/covariance.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterator

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from assistant.config import CovarianceConfig
from assistant.corpora import corpus_texts, edit_file_records
from assistant.model.architectures import get_module
from assistant.model.chat import answers, chat_transcript
from assistant.model.hooks import capture_inputs, stop_after

log = logging.getLogger(__name__)
OWN_ANSWER_TOKENS = 48                 # zsre_own_chat: the longest answer of the model kept per question


def chat_corpus_texts(tokenizer, shared_data: Path) -> list[str]:
    """zsRE's questions and answers as finished chat turns, from the file's last record
    back (the zsRE edit benchmarks take their slices from the first records on)."""
    records = reversed(edit_file_records(shared_data, "zsre"))
    return [chat_transcript(tokenizer, r["src"], r["answers"][0])
            for r in records if r.get("src") and r.get("answers")]


def own_chat_texts(model, tokenizer, shared_data: Path, batch_size: int = 16) -> Iterator[str]:
    """zsRE's questions (from the last record back, as zsre_chat) with the model's own greedy
    answers, as finished chat turns: the keys the served model meets while it answers."""
    questions = [r["src"] for r in reversed(edit_file_records(shared_data, "zsre")) if r.get("src")]
    for start in range(0, len(questions), batch_size):
        chunk = questions[start:start + batch_size]
        for question, reply in zip(chunk, answers(model, tokenizer, chunk, OWN_ANSWER_TOKENS)):
            yield chat_transcript(tokenizer, question, reply)


def corpus_token_ids(tokenizer, shared_data: Path, name: str, model=None) -> Iterator[list[int]]:
    """The token ids of each text of one corpus, in order (a chat turn's special tokens
    are in its text, so none are added). zsre_own_chat needs the (unedited) model."""
    if name == "zsre_chat":
        texts = chat_corpus_texts(tokenizer, shared_data)
    elif name == "zsre_own_chat":
        texts = own_chat_texts(model, tokenizer, shared_data)
    else:
        texts = [text + "\n" for text in corpus_texts(shared_data, name)]
    for text in texts:
        yield tokenizer(text, add_special_tokens=False).input_ids


def token_sequences(tokenizer, shared_data: Path, cfg: CovarianceConfig, model=None) -> torch.Tensor:
    """(N, sequence_length) token ids: an equal share of cfg.tokens from each corpus."""
    share = cfg.tokens // len(cfg.corpora)
    pieces = []
    for name in cfg.corpora:
        stream: list[int] = []
        for ids in corpus_token_ids(tokenizer, shared_data, name, model):
            stream += ids
            if len(stream) >= share:
                break
        if len(stream) < share:
            log.warning("corpus %s holds %d tokens, less than its share of %d: lower [covariance] tokens "
                        "for equal shares", name, len(stream), share)
        pieces.append(torch.tensor(stream[:share]))
    tokens = torch.cat(pieces)
    usable = len(tokens) // cfg.sequence_length * cfg.sequence_length
    return tokens[:usable].view(-1, cfg.sequence_length)


@torch.no_grad()
def collect_second_moments(model, module_names: dict[int, str], last_block: torch.nn.Module,
                           sequences: torch.Tensor, batch_size: int, progress: bool = True) -> dict[int, torch.Tensor]:
    """E[k k^T] (float64) of each named module's input over all tokens of ``sequences``."""
    modules = {str(layer): get_module(model, name) for layer, name in module_names.items()}
    device = next(model.parameters()).device
    sums = {layer: None for layer in module_names}
    count = 0
    batches = range(0, len(sequences), batch_size)
    for start in tqdm(batches, desc="covariance", unit="batch", disable=not progress):
        chunk = sequences[start:start + batch_size].to(device)
        with capture_inputs(modules) as inputs, stop_after(last_block):
            model(input_ids=chunk)
        for layer in module_names:
            keys = inputs[str(layer)].reshape(-1, inputs[str(layer)].shape[-1]).float()
            outer = (keys.T @ keys).double().cpu()
            sums[layer] = outer if sums[layer] is None else sums[layer] + outer
        count += chunk.numel()
    return {layer: total / count for layer, total in sums.items()}


def cache_dir(home: Path, model_fingerprint: str, cfg: CovarianceConfig) -> Path:
    corpus = "+".join(cfg.corpora)
    return home / "cache" / "covariance" / model_fingerprint / f"{corpus}-{cfg.tokens}-{cfg.sequence_length}"


def load_or_compute(model, tokenizer, module_names: dict[int, str], last_block: torch.nn.Module,
                    home: Path, shared_data: Path, model_fingerprint: str, cfg: CovarianceConfig,
                    progress: bool = True) -> dict[int, torch.Tensor]:
    """C per edited layer, from the cache when there, else computed and cached (atomically)."""
    folder = cache_dir(home, model_fingerprint, cfg)
    paths = {layer: folder / f"layer-{layer}.safetensors" for layer in module_names}
    missing = {layer: name for layer, name in module_names.items() if not paths[layer].exists()}
    if missing:
        log.info("computing covariance for layers %s over %d tokens", sorted(missing), cfg.tokens)
        sequences = token_sequences(tokenizer, shared_data, cfg, model)
        computed = collect_second_moments(model, missing, last_block, sequences, cfg.batch_size, progress)
        folder.mkdir(parents=True, exist_ok=True)
        for layer, C in computed.items():
            temporary = paths[layer].with_suffix(f".{os.getpid()}.tmp")
            save_file({"C": C.contiguous()}, str(temporary))
            os.replace(temporary, paths[layer])
    return {layer: load_file(str(path))["C"] for layer, path in paths.items()}
