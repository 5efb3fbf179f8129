"""Versioned weight patches: the edited layers' full weights for one generation, for replicas.

A patch is a folder with ``weights.safetensors`` (the edited parameters, named and laid out
as in the Hugging Face checkpoint, so GPT-2's Conv1D weights are stored transposed) and
``manifest.json``: the format version, the generation it brings a replica to, the
generation it starts from (``since_generation``; 0 = the unedited base), the base model's
fingerprint (assistant.model.loading.fingerprint), and per parameter its dtype, shape and
the sha256 of its bytes, with the sha256 of the weights file and of the manifest itself.

A patch "since G" holds only the layers that some edit created or ended after generation G
touched (the ledger's edit vectors name each edit's layers). That is a superset of the
layers whose weights changed, so a replica at any generation from G on becomes current.

Applying a patch to a checkpoint writes ``livedit-patch.json`` beside the weights: the
base fingerprint, the generation, and the fingerprint of the patched files. A later patch
reads it to know which generation the checkpoint is at.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from assistant.errors import ModelNotReady, StateError
from assistant.model.architectures import stored_weight
from assistant.model.loading import fingerprint
from assistant.state.ledger import Ledger
from assistant.state.sums import read_generation

LEDGER_FILE = "ledger.sqlite"             # in the state folder, beside sums/

FORMAT = "livedit-weight-patch"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
WEIGHTS = "weights.safetensors"
MARKER = "livedit-patch.json"
_NOT_COPIED = {MARKER, ".livedit-fingerprint.json"}


@dataclass(frozen=True)
class WeightPatch:
    generation: int
    since_generation: int
    base_fingerprint: str
    model_type: str
    layers: tuple[int, ...]
    tensors: dict[str, torch.Tensor]     # checkpoint parameter name -> weight in the checkpoint's layout


# -- checksums and durable files ---------------------------------------------------------------

def tensor_sha256(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()).hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def _manifest_checksum(manifest: dict) -> str:
    body = {key: value for key, value in manifest.items() if key != "manifest_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _fsync(path: Path) -> None:
    """fsync a file or a folder."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _replace_durably(write, path: Path) -> None:
    """``write(temporary)``, fsync it, rename it to ``path``, fsync the folder."""
    temporary = path.with_name(f".{path.name}.tmp")
    write(temporary)
    _fsync(temporary)
    os.replace(temporary, path)
    _fsync(path.parent)


def _write_json(path: Path, value: dict) -> None:
    _replace_durably(lambda temporary: temporary.write_text(json.dumps(value, indent=2) + "\n"), path)


def _write_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict | None) -> None:
    contiguous = {name: t.contiguous() for name, t in tensors.items()}
    _replace_durably(lambda temporary: save_file(contiguous, str(temporary), metadata=metadata), path)


def _empty_target(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise StateError(f"{out} exists and is not empty; choose a new folder")
    out.parent.mkdir(parents=True, exist_ok=True)


def _publish(staging: Path, out: Path) -> None:
    """Rename a finished staging folder to ``out`` (absent or empty) and fsync the parent."""
    _fsync(staging)
    os.replace(staging, out)
    _fsync(out.parent)


# -- making a patch ------------------------------------------------------------------------------

def layers_changed_since(ledger, since: int, generation: int) -> list[int]:
    """The layers of every edit created or ended in a generation after ``since``, up to ``generation``."""
    rows = ledger.conn.execute(
        "SELECT DISTINCT v.layer FROM edit_vectors v JOIN edits e ON e.id = v.edit_id "
        "WHERE (e.generation > ? AND e.generation <= ?) OR (e.ended_generation > ? AND e.ended_generation <= ?) "
        "ORDER BY v.layer", (since, generation, since, generation))
    return [row[0] for row in rows]


def patch_from_editor(editor, since: int = 0) -> WeightPatch:
    """The patch that brings a replica at generation ``since`` to the editor's committed generation.

    The weights are rebuilt from the sums file that the ledger's last generation names, as a
    restart would rebuild them, so the generation and the weights always belong together,
    even while another thread commits (a file removed under us is read again)."""
    editor.check_plain_weights("a weight patch")
    with closing(Ledger(editor.sums_dir.parent / LEDGER_FILE)) as ledger:     # its own connection
        for _ in range(3):
            generation, file = ledger.current_generation()
            if not 0 <= since <= generation:
                raise StateError(f"--since {since}: the state has generations 0 to {generation}")
            layers = [layer for layer in layers_changed_since(ledger, since, generation) if layer in editor.layers]
            patch = _patch_at(editor, generation, since, file, layers)
            if patch is not None:
                return patch
    raise StateError("the state kept changing while the patch was read; try again")


def _patch_at(editor, generation: int, since: int, file: str | None, layers: list[int]) -> WeightPatch | None:
    """The patch from the sums file of ``generation``; None if a later commit removed that file."""
    if not layers:
        return _patch(editor, generation, since, {})
    try:
        sums = read_generation(editor.sums_dir, file, editor.method)
    except FileNotFoundError:
        return None                     # a commit replaced the file after we read the ledger
    return _patch(editor, generation, since, {layer: editor.solve_weight(sums, layer) for layer in layers})


def _patch(editor, generation: int, since: int, weights: dict[int, torch.Tensor]) -> WeightPatch:
    tensors = {f"{editor.names[layer]}.weight": stored_weight(W, editor.arch.weight_transposed)
               for layer, W in weights.items()}
    return WeightPatch(generation, since, editor.loaded.fingerprint, str(editor.model.config.model_type),
                       tuple(sorted(weights)), tensors)


def _manifest(patch: WeightPatch, weights_sha256: str) -> dict:
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "generation": patch.generation, "since_generation": patch.since_generation,
        "base_fingerprint": patch.base_fingerprint, "model_type": patch.model_type, "layers": list(patch.layers),
        "parameters": {name: {"dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape),
                              "sha256": tensor_sha256(t)} for name, t in sorted(patch.tensors.items())},
        "file": WEIGHTS, "file_sha256": weights_sha256,
    }
    return {**manifest, "manifest_sha256": _manifest_checksum(manifest)}


def write_patch(patch: WeightPatch, out: Path) -> Path:
    """Write the patch folder durably: a staging folder beside ``out``, fsynced, then renamed."""
    out = Path(out)
    _empty_target(out)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        _write_tensors(staging / WEIGHTS, patch.tensors, {"format": "pt"})
        _write_json(staging / MANIFEST, _manifest(patch, file_sha256(staging / WEIGHTS)))
        _publish(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


# -- reading a patch -----------------------------------------------------------------------------

def _read_manifest(folder: Path) -> dict:
    path = folder / MANIFEST
    if not path.exists():
        raise StateError(f"{folder} is not a livedit weight patch: it has no {MANIFEST}")
    try:
        manifest = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as error:
        raise StateError(f"{path} is damaged (not JSON: {error}); export the patch again") from error
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise StateError(f"{path} is not a livedit weight patch manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise StateError(f"{path} has patch format version {manifest.get('format_version')!r}; "
                         f"this livedit reads version {FORMAT_VERSION}")
    if manifest.get("manifest_sha256") != _manifest_checksum(manifest):
        raise StateError(f"{path} is damaged: its checksum does not match its content; export the patch again")
    return manifest


def read_patch(folder: Path) -> WeightPatch:
    """The patch in ``folder``, after checking the manifest, the file and every tensor's checksum."""
    folder = Path(folder)
    manifest = _read_manifest(folder)
    path = folder / manifest["file"]
    if not path.exists() or file_sha256(path) != manifest["file_sha256"]:
        raise StateError(f"{path} is missing or damaged (its sha256 differs from the manifest's); "
                         "export the patch again")
    tensors = load_file(str(path))
    expected = manifest["parameters"]
    if sorted(tensors) != sorted(expected):
        raise StateError(f"{path} holds {sorted(tensors)}, the manifest lists {sorted(expected)}")
    for name, tensor in tensors.items():
        found = {"dtype": str(tensor.dtype).removeprefix("torch."), "shape": list(tensor.shape),
                 "sha256": tensor_sha256(tensor)}
        if found != expected[name]:
            raise StateError(f"{path}: tensor {name} does not match the manifest ({found} vs {expected[name]})")
    return WeightPatch(manifest["generation"], manifest["since_generation"], manifest["base_fingerprint"],
                       manifest["model_type"], tuple(manifest["layers"]), tensors)


# -- applying a patch to a Hugging Face checkpoint -----------------------------------------------

def checkpoint_state(checkpoint: Path) -> tuple[str, int]:
    """(base fingerprint, generation) of a checkpoint: its own fingerprint at generation 0, or
    what the marker of an earlier patch says, if the weights are still the ones it wrote."""
    current = fingerprint(checkpoint)
    marker = checkpoint / MARKER
    if not marker.exists():
        return current, 0
    record = json.loads(marker.read_text())
    if record.get("fingerprint") != current:
        raise ModelNotReady(f"{checkpoint} changed after livedit patched it to generation {record.get('generation')}; "
                            "start again from the base checkpoint with a full patch")
    return record["base_fingerprint"], int(record["generation"])


def _check_base(patch: WeightPatch, checkpoint: Path) -> None:
    base, generation = checkpoint_state(checkpoint)
    if base != patch.base_fingerprint:
        raise ModelNotReady(f"{checkpoint} is not the model this patch was made for: its base fingerprint is {base}, "
                            f"the patch's is {patch.base_fingerprint}")
    if not patch.since_generation <= generation <= patch.generation:
        raise ModelNotReady(f"{checkpoint} is at generation {generation}; this patch brings generations "
                            f"{patch.since_generation} to {patch.generation} up to {patch.generation}. Export a patch "
                            f"with --since {generation} or lower")


def _shard_of(checkpoint: Path) -> dict[str, str]:
    """Parameter name -> the safetensors file in the checkpoint that holds it."""
    index = checkpoint / "model.safetensors.index.json"
    if index.exists():
        return dict(json.loads(index.read_text())["weight_map"])
    single = checkpoint / "model.safetensors"
    if not single.exists():
        raise ModelNotReady(f"{checkpoint} has no model.safetensors (or index); patches apply to safetensors "
                            "checkpoints only")
    with safe_open(str(single), "pt") as handle:
        return {name: single.name for name in handle.keys()}


def _patched_shards(patch: WeightPatch, checkpoint: Path) -> dict[str, tuple[dict, dict]]:
    """Shard file name -> (its tensors with the patch's in place, its metadata); checks names,
    shapes and dtypes first."""
    shard_of = _shard_of(checkpoint)
    missing = sorted(set(patch.tensors) - set(shard_of))
    if missing:
        raise ModelNotReady(f"{checkpoint} has no parameter(s) {', '.join(missing)}; it is not this patch's model")
    shards = {}
    for file in sorted({shard_of[name] for name in patch.tensors}):
        with safe_open(str(checkpoint / file), "pt") as handle:
            metadata = handle.metadata()
        shards[file] = (load_file(str(checkpoint / file)), metadata)
    for name, tensor in patch.tensors.items():
        old = shards[shard_of[name]][0][name]
        if old.shape != tensor.shape or old.dtype != tensor.dtype:
            raise ModelNotReady(f"{checkpoint}: {name} is {old.dtype} {tuple(old.shape)}, the patch has "
                                f"{tensor.dtype} {tuple(tensor.shape)}")
        shards[shard_of[name]][0][name] = tensor
    return shards


def _write_patched(folder: Path, shards: dict[str, tuple[dict, dict]], patch: WeightPatch) -> None:
    for file, (tensors, metadata) in shards.items():
        _write_tensors(folder / file, tensors, metadata)
    _write_json(folder / MARKER, {"base_fingerprint": patch.base_fingerprint, "generation": patch.generation,
                                  "fingerprint": fingerprint(folder)})


def apply_patch(patch_dir: Path, checkpoint: Path, out: Path | None = None, in_place: bool = False) -> Path:
    """Verify the patch and the checkpoint, then write the patched checkpoint to ``out`` (a copy)
    or, with ``in_place``, over ``checkpoint``. Any mismatch raises before anything is written."""
    checkpoint = Path(checkpoint)
    if in_place == (out is not None):
        raise StateError("give either an output folder or in-place, not both or neither")
    if not (checkpoint / "config.json").exists():
        raise ModelNotReady(f"{checkpoint} is not a Hugging Face model directory (no config.json)")
    patch = read_patch(Path(patch_dir))
    _check_base(patch, checkpoint)
    shards = _patched_shards(patch, checkpoint)
    if in_place:
        _write_patched(checkpoint, shards, patch)
        return checkpoint
    out = Path(out)
    _empty_target(out)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for path in checkpoint.iterdir():
            if path.name in _NOT_COPIED or path.name in shards:
                continue
            if path.is_dir():
                shutil.copytree(path, staging / path.name)
            else:
                shutil.copy2(path, staging / path.name)
                _fsync(staging / path.name)
        _write_patched(staging, shards, patch)
        _publish(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out
