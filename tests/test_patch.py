"""Weight patches: a patch applied to a plain Hugging Face checkpoint of the unedited tiny
model gives bit-identical weights to `livedit export` of the edited model; damaged patches,
a wrong base and a replica at the wrong generation are refused without writing anything."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from assistant.errors import ModelNotReady, StateError
from assistant.state.patch import (MANIFEST, MARKER, WEIGHTS, _manifest_checksum, apply_patch, file_sha256,
                                   patch_from_editor, read_patch, write_patch)
from livedit.cli import main
from tests.conftest import write_config_toml

MODELS = ["llama", "gpt2"]
# cloze facts edit layer 0, chat facts layers 1-2; no gate: a patch holds plain weights
WINDOWS = dict(layers=[0], chat_layers=[1, 2], gate=0.0)
EDITED = {"llama": "model.layers.{}.mlp.down_proj.weight", "gpt2": "transformer.h.{}.mlp.c_proj.weight"}


def edit_two_generations(editor, new_fact) -> tuple[int, int]:
    """Generation 1: a cloze fact (layer 0). Generation 2: a chat fact (layers 1 and 2)."""
    (cloze,) = editor.apply([new_fact(1)]).edit_ids
    (asked,) = editor.apply([new_fact(2, question=f"Where is {new_fact(2).subject}?")]).edit_ids
    return cloze, asked


def parameters(folder: Path) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def assert_same_parameters(a: Path, b: Path) -> None:
    left, right = parameters(a), parameters(b)
    assert left.keys() == right.keys()
    for name in left:
        assert torch.equal(left[name], right[name]), f"{name} differs"


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.mark.parametrize("model", MODELS)
def test_a_patch_on_the_base_checkpoint_equals_export(model, open_engine, model_dirs, new_fact, tmp_path):
    editor = open_engine(model, **WINDOWS)
    edit_two_generations(editor, new_fact)
    exported = editor.export(tmp_path / "export")
    patch = patch_from_editor(editor)
    assert (patch.generation, patch.since_generation, patch.layers) == (2, 0, (0, 1, 2))
    assert sorted(patch.tensors) == [EDITED[model].format(layer) for layer in (0, 1, 2)]
    served = dict(editor.model.named_parameters())
    for name, tensor in patch.tensors.items():
        assert torch.equal(tensor, served[name].detach()), name     # the checkpoint's layout (Conv1D transposed)
    write_patch(patch, tmp_path / "patch")
    out = apply_patch(tmp_path / "patch", model_dirs[model], out=tmp_path / "patched")
    assert_same_parameters(out, exported)
    base = parameters(model_dirs[model])
    changed = {name for name, p in parameters(out).items() if not torch.equal(p, base[name])}
    assert changed == set(patch.tensors)
    assert json.loads((out / MARKER).read_text())["generation"] == 2


def test_since_holds_only_the_layers_changed_after_that_generation(open_engine, model_dirs, new_fact, tmp_path):
    editor = open_engine("llama", **WINDOWS)
    cloze, asked = edit_two_generations(editor, new_fact)
    assert patch_from_editor(editor, since=1).layers == (1, 2)
    assert patch_from_editor(editor, since=2).layers == () and patch_from_editor(editor, since=2).tensors == {}
    with pytest.raises(StateError, match="generations 0 to 2"):
        patch_from_editor(editor, since=3)
    write_patch(patch_from_editor(editor), tmp_path / "full-2")
    replica = apply_patch(tmp_path / "full-2", model_dirs["llama"], out=tmp_path / "replica")

    editor.retract(cloze)                                   # generation 3 changes layer 0 only
    increment = patch_from_editor(editor, since=2)
    assert (increment.generation, increment.layers) == (3, (0,))
    write_patch(increment, tmp_path / "since-2")
    with pytest.raises(ModelNotReady, match="at generation 0"):     # the base is not at generation 2
        apply_patch(tmp_path / "since-2", model_dirs["llama"], out=tmp_path / "wrong")
    assert not (tmp_path / "wrong").exists()
    apply_patch(tmp_path / "since-2", replica, in_place=True)
    assert_same_parameters(replica, editor.export(tmp_path / "export-3"))
    assert json.loads((replica / MARKER).read_text())["generation"] == 3
    with pytest.raises(ModelNotReady, match="at generation 3"):     # a patch older than the replica
        apply_patch(tmp_path / "full-2", replica, in_place=True)


@pytest.fixture
def patch_dir(open_engine, new_fact, tmp_path) -> Path:
    editor = open_engine("llama", **WINDOWS)
    edit_two_generations(editor, new_fact)
    return write_patch(patch_from_editor(editor), tmp_path / "patch")


def rewrite_manifest(folder: Path, change) -> None:
    manifest = json.loads((folder / MANIFEST).read_text())
    change(manifest)
    (folder / MANIFEST).write_text(json.dumps(manifest))


def test_a_damaged_weights_file_is_refused_and_nothing_is_written(patch_dir, model_dirs, tmp_path):
    weights = patch_dir / WEIGHTS
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01                                     # one bit of the last tensor's last value
    weights.write_bytes(bytes(data))
    with pytest.raises(StateError, match="missing or damaged"):
        apply_patch(patch_dir, model_dirs["llama"], out=tmp_path / "patched")
    assert not (tmp_path / "patched").exists()


def test_a_tensor_that_differs_from_the_manifest_is_refused(patch_dir, model_dirs, tmp_path):
    """The file is rewritten with one changed tensor and its file checksum updated: the tensor's own
    checksum still catches it."""
    tensors = load_file(str(patch_dir / WEIGHTS))
    name = sorted(tensors)[0]
    tensors[name][0, 0] += 1.0
    save_file(tensors, str(patch_dir / WEIGHTS))

    def change(manifest):
        manifest["file_sha256"] = file_sha256(patch_dir / WEIGHTS)
        manifest["manifest_sha256"] = _manifest_checksum(manifest)
    rewrite_manifest(patch_dir, change)
    with pytest.raises(StateError, match=f"tensor {name} does not match the manifest"):
        read_patch(patch_dir)


@pytest.mark.parametrize("damage", [
    lambda folder: rewrite_manifest(folder, lambda m: m.update(generation=7)),
    lambda folder: (folder / MANIFEST).write_text((folder / MANIFEST).read_text()[:-20]),
    lambda folder: rewrite_manifest(folder, lambda m: m.update(format_version=2)),
    lambda folder: (folder / MANIFEST).unlink(),
], ids=["changed-field", "truncated", "newer-format", "missing"])
def test_a_damaged_manifest_is_refused(damage, patch_dir, model_dirs, tmp_path):
    damage(patch_dir)
    with pytest.raises(StateError):
        apply_patch(patch_dir, model_dirs["llama"], out=tmp_path / "patched")
    assert not (tmp_path / "patched").exists()


def test_a_wrong_base_model_is_refused_and_left_unchanged(patch_dir, model_dirs, tmp_path):
    other = shutil.copytree(model_dirs["sharp-llama"], tmp_path / "other")    # same names and shapes
    before = files_of(other)
    with pytest.raises(ModelNotReady, match="not the model this patch was made for"):
        apply_patch(patch_dir, other, in_place=True)
    assert {k: v for k, v in files_of(other).items() if not k.startswith(".livedit")} == \
        {k: v for k, v in before.items() if not k.startswith(".livedit")}
    with pytest.raises(ModelNotReady, match="not the model this patch was made for"):
        apply_patch(patch_dir, model_dirs["gpt2"], out=tmp_path / "patched")
    assert not (tmp_path / "patched").exists()


def test_a_replica_changed_after_patching_is_refused(patch_dir, model_dirs, tmp_path):
    replica = apply_patch(patch_dir, model_dirs["llama"], out=tmp_path / "replica")
    (replica / "config.json").write_text((replica / "config.json").read_text() + "\n")
    with pytest.raises(ModelNotReady, match="changed after livedit patched it"):
        apply_patch(patch_dir, replica, in_place=True)


def test_export_patch_and_patch_apply_through_the_cli(open_engine, make_config, model_dirs, new_fact, tmp_path, capsys):
    editor = open_engine("llama", **WINDOWS)
    edit_two_generations(editor, new_fact)
    exported = editor.export(tmp_path / "export")
    config = write_config_toml(tmp_path / "tiny.toml", make_config("llama", **WINDOWS))
    base = shutil.copytree(model_dirs["llama"], tmp_path / "base")

    assert main(["-q", "--config", config, "export", "--patch", "--out", str(tmp_path / "patch")]) == 0
    assert "generation 2 (since generation 0: layers [0, 1, 2])" in capsys.readouterr().out
    assert main(["-q", "--config", config, "export", "--patch", "--since", "1", "--out", str(tmp_path / "p1")]) == 0
    assert "layers [1, 2]" in capsys.readouterr().out
    assert main(["-q", "--config", config, "export", "--since", "1", "--out", str(tmp_path / "x")]) == 2
    assert "--since GEN goes with --patch" in capsys.readouterr().err

    assert main(["-q", "patch", "apply", str(tmp_path / "patch"), "--model", str(model_dirs["gpt2"]),
                 "--out", str(tmp_path / "wrong")]) == 2
    assert "not the model this patch was made for" in capsys.readouterr().err
    assert main(["-q", "patch", "apply", str(tmp_path / "patch"), "--model", str(base), "--in-place"]) == 0
    assert f"patched checkpoint written to {base}" in capsys.readouterr().out
    assert_same_parameters(base, exported)


def test_a_sharded_checkpoint_is_patched_shard_by_shard(open_engine, make_config, model_dirs, new_fact, tmp_path):
    """The fingerprint hashes the files: the same weights saved in shards are another base."""
    from transformers import AutoModelForCausalLM

    sharded = tmp_path / "sharded"
    AutoModelForCausalLM.from_pretrained(model_dirs["llama"]).save_pretrained(sharded, max_shard_size="100KB")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy2(model_dirs["llama"] / name, sharded / name)
    assert (sharded / "model.safetensors.index.json").exists()
    base = shutil.copytree(sharded, tmp_path / "base")
    editor = open_engine(config=make_config("llama", **WINDOWS).replace("model", path=str(sharded)))
    edit_two_generations(editor, new_fact)
    patch = patch_from_editor(editor)
    weight_map = json.loads((sharded / "model.safetensors.index.json").read_text())["weight_map"]
    assert len({weight_map[name] for name in patch.tensors}) > 1          # the patch spans shards
    write_patch(patch, tmp_path / "patch")
    with pytest.raises(ModelNotReady, match="not the model this patch was made for"):
        apply_patch(tmp_path / "patch", model_dirs["llama"], out=tmp_path / "unsharded")
    apply_patch(tmp_path / "patch", base, in_place=True)
    assert_same_parameters(base, editor.export(tmp_path / "export"))
