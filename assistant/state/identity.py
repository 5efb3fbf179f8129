"""Which state directory a run uses, and the identity a state keeps: the method, the model,
the edited layers, the lambdas, the chat ridge and the covariance it was made with."""

from __future__ import annotations

import os
from pathlib import Path

from assistant.errors import StateError

# Identity keys added after states were first written, with the value those states had (a
# function of the stored identity where it was another key's value).
IDENTITY_BEFORE = {"chat_layers": lambda stored: [],
                   "chat_mom2_weight": lambda stored: stored.get("mom2_weight"),
                   "layer_mom2_factors": lambda stored: {},
                   "chat_ridge": lambda stored: 0.0}


def state_dir_for(config, state_dir: Path | str | None = None) -> Path:
    """``state_dir``, else LIVEDIT_STATE_DIR, else $LIVEDIT_HOME/state."""
    chosen = state_dir or os.environ.get("LIVEDIT_STATE_DIR")
    return Path(chosen).expanduser() if chosen else config.paths.home_dir() / "state"


NULL_SPACE_METHODS = ("d4s-null", "alphaedit")      # their solves also depend on [editing] null_space_*


def state_identity(config, model_fingerprint: str, method: str) -> dict:
    cov = config.covariance
    identity = {
        "method": method,
        "model_fingerprint": model_fingerprint,
        "layers": list(config.editing.layers),
        "chat_layers": list(config.editing.chat_layers),
        "mom2_weight": config.editing.mom2_weight,
        "chat_mom2_weight": config.editing.chat_mom2_weight,
        "covariance": {"corpora": list(cov.corpora), "tokens": cov.tokens, "sequence_length": cov.sequence_length},
    }
    if method in NULL_SPACE_METHODS:
        identity["null_space_keep"] = config.editing.null_space_keep
        identity["null_space_alpha"] = config.editing.null_space_alpha
    else:                       # the null-space methods solve with alpha, which no layer factor changes
        identity["layer_mom2_factors"] = {str(layer): factor for layer, factor in
                                          config.editing.layer_mom2_factors.items()
                                          if layer in config.editing.all_layers}
        # a ridge on C shifts its eigenvalues alike, so the null-space projectors ignore it too
        identity["chat_ridge"] = max(map(config.editing.layer_ridge, config.editing.all_layers))
    return identity


def check_identity(ledger, config, model_fingerprint: str, method: str | None, folder: Path) -> dict:
    """The state's identity: the config's stored on a fresh state, else checked against the
    stored one (the stored method is kept when none was given). A mismatch names the key."""
    stored = ledger.meta()
    if not stored:
        wanted = state_identity(config, model_fingerprint, method or config.editing.method)
        ledger.set_meta({**wanted, "model_path": None})
        return wanted
    wanted = state_identity(config, model_fingerprint, method or stored["method"])
    for key, value in wanted.items():
        had = stored[key] if key in stored else IDENTITY_BEFORE.get(key, lambda _: None)(stored)
        if had != value:
            raise StateError(
                f"state {folder} was made with {key} = {had!r}, but this run has {value!r}. "
                "Use another --state-dir (or LIVEDIT_STATE_DIR) for a different experiment"
                + (f", or set [editing] {key} = {_as_toml(had)} in config.toml to keep using this state."
                   if key in EDITING_IDENTITY_KEYS else ".")
            )
    return wanted


EDITING_IDENTITY_KEYS = ("layers", "chat_layers", "mom2_weight", "chat_mom2_weight", "chat_ridge",
                         "layer_mom2_factors", "null_space_keep", "null_space_alpha")


def _as_toml(value) -> str:
    """A stored identity value as config.toml writes it (an inline table for the layer factors)."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key} = {item}" for key, item in value.items()) + "}"
    return repr(value)
