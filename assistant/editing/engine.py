"""Opening the editing engine on a state directory: model, covariances, sums, ledger."""

from __future__ import annotations

import os
from pathlib import Path

from assistant.model.architectures import architecture_of, get_module, weight_matrix
from assistant.config import METHODS, Config
from assistant.editing.covariance import load_or_compute
from assistant.editing.editor import Editor, check_layers
from assistant.errors import ConfigError, StateError
from assistant.state.ledger import Ledger
from assistant.model.loading import LoadedModel, load_model
from assistant.state.sums import EditSums, read_generation, remove_other_generations


def state_dir_for(config: Config, state_dir: Path | str | None = None) -> Path:
    chosen = state_dir or os.environ.get("LIVEDIT_STATE_DIR")
    return Path(chosen).expanduser() if chosen else config.paths.home_dir() / "state"


def _state_identity(config: Config, loaded: LoadedModel, method: str) -> dict:
    cov = config.covariance
    return {
        "method": method,
        "model_fingerprint": loaded.fingerprint,
        "layers": list(config.editing.layers),
        "chat_layers": list(config.editing.chat_layers),
        "mom2_weight": config.editing.mom2_weight,
        "covariance": {"corpora": list(cov.corpora), "tokens": cov.tokens, "sequence_length": cov.sequence_length},
    }


# Identity keys added after states were first written, with the value those states had.
_IDENTITY_BEFORE = {"chat_layers": []}


def _check_identity(ledger: Ledger, wanted: dict, folder: Path, method_given: bool) -> dict:
    stored = ledger.meta()
    if not stored:
        ledger.set_meta({**wanted, "model_path": None})
        return wanted
    if not method_given:
        wanted = {**wanted, "method": stored["method"]}
    for key, value in wanted.items():
        had = stored.get(key, _IDENTITY_BEFORE.get(key))
        if had != value:
            raise StateError(
                f"state {folder} was made with {key} = {had!r}, but this run has {value!r}. "
                "Use another --state-dir (or LIVEDIT_STATE_DIR) for a different experiment"
                + (f", or set [editing] {key} = {had!r} in config.toml to keep using this state."
                   if key in ("layers", "chat_layers", "mom2_weight") else ".")
            )
    return wanted


def open_editor(config: Config, state_dir: Path | str | None = None, method: str | None = None,
                loaded: LoadedModel | None = None, progress: bool = True) -> Editor:
    """The engine over ``state_dir``, with the served model rebuilt to W0 + committed sums."""
    if method is not None and method not in METHODS:
        raise ConfigError(f"method {method!r} is unknown; use one of {', '.join(METHODS)}")
    loaded = loaded or load_model(config)
    check_layers(config, loaded.model)
    folder = state_dir_for(config, state_dir)
    folder.mkdir(parents=True, exist_ok=True)
    ledger = Ledger(folder / "ledger.sqlite")
    try:
        identity = _check_identity(ledger, _state_identity(config, loaded, method or config.editing.method),
                                   folder, method is not None)
        arch = architecture_of(loaded.model)
        layers = config.editing.all_layers
        names = {layer: arch.edited_module.format(layer) for layer in layers}
        last_block = get_module(loaded.model, arch.block_module.format(layers[-1]))
        covariances = load_or_compute(loaded.model, loaded.tokenizer, names, last_block,
                                      config.paths.home_dir(), config.paths.shared_data_dir(),
                                      loaded.fingerprint, config.covariance, progress)
        sums_dir = folder / "sums"
        generation, file = ledger.current_generation()
        remove_other_generations(sums_dir, keep=file)
        if file:
            sums = read_generation(sums_dir, file, identity["method"])
        else:
            shapes = {layer: tuple(weight_matrix(get_module(loaded.model, name), arch.weight_transposed).shape)
                      for layer, name in names.items()}
            sums = EditSums.empty(identity["method"], shapes)
        editor = Editor(loaded, config, ledger, sums, sums_dir, covariances)
        editor.rebuild()
        return editor
    except BaseException:
        ledger.close()
        raise
