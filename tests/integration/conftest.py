"""Fixtures for the end-to-end tests on the real default model (SmolLM2-135M-Instruct).

The converted model and the covariance cache live in .livedit-test-home/ at the project
root (git-ignored), so repeated local runs reuse them; a clean clone builds them once.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from assistant.config import PROJECT_ROOT, load_config

TEST_HOME = Path(os.environ.get("LIVEDIT_TEST_HOME", PROJECT_ROOT / ".livedit-test-home")).resolve()  # linked to


@pytest.fixture(scope="session")
def real_config():
    config = load_config(PROJECT_ROOT / "config.toml")
    return config.replace("paths", home=str(TEST_HOME))


@pytest.fixture(scope="session")
def real_shared_data(real_config) -> Path:
    """The real shared data sets (CounterFact, the text corpora, zsRE) that editing tests need."""
    shared = real_config.paths.shared_data_dir()
    if not shared.is_dir():
        pytest.fail(f"the shared data sets are not at {shared}: the end-to-end editing tests read CounterFact, "
                    "the text corpora and zsRE from there. Put ../shared/data beside the checkout, or set "
                    "LIVEDIT_SHARED_DATA to the folder that holds them.", pytrace=False)
    return shared


@pytest.fixture(scope="session")
def load_real_model(real_config):
    """A loader of fresh, unedited copies of the default model (converted once)."""
    from assistant.model.loading import load_model, model_dir

    model_dir(real_config)
    return lambda: load_model(real_config)


@pytest.fixture
def cli_env(real_config, tmp_path):
    """Environment for running `livedit` as a new process against the test home."""
    env = dict(os.environ, LIVEDIT_HOME=str(TEST_HOME), HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    env.pop("LIVEDIT_STATE_DIR", None)
    return env
