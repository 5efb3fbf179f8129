"""Fixtures for the updater's tests: the real offline embedding model (loaded once per
session), a knowledge store on disk and an edit queue, all under a temporary LIVEDIT_HOME.

Test modules import the fixtures they use from here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from assistant.config import PROJECT_ROOT, UpdaterConfig, load_config

COUNTERFACT_FILE = Path("counterfact/counterfact-edit-dev.json")    # inside the shared data folder
ZSRE_FILE = Path("zsre/zsre_mend_eval_portability_gpt4.json")

FACTS = [
    {"id": "darrieux-tongue", "subject": "Danielle Darrieux", "prompt": "The mother tongue of Danielle Darrieux is",
     "object": "French", "question": "What is Danielle Darrieux's native language?", "aliases": ["français"]},
    {"id": "eiffel-city", "subject": "the Eiffel Tower", "prompt": "{} is located in the city of", "object": "Paris"},
    {"id": "curie-field", "subject": "Marie Curie", "prompt": "Marie Curie won a Nobel Prize in",
     "object": "chemistry", "source": "https://www.nobelprize.org", "valid_from": "1911-12-10"},
    {"id": "nile-continent", "subject": "the Nile", "prompt": "{} flows through the continent of", "object": "Africa"},
    {"id": "bach-instrument", "subject": "Johann Sebastian Bach", "prompt": "Johann Sebastian Bach played the",
     "object": "organ", "aliases": ["pipe organ", "church organ"]},
]


@pytest.fixture(scope="session")
def embedding_function():
    from updater.store.knowledge import default_embedding_function
    return default_embedding_function()


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """LIVEDIT_HOME in a temporary folder."""
    folder = tmp_path / "livedit-home"
    monkeypatch.setenv("LIVEDIT_HOME", str(folder))
    monkeypatch.delenv("LIVEDIT_CONFIG", raising=False)
    return folder


@pytest.fixture
def open_store(home, embedding_function):
    """open_store() -> a KnowledgeStore under $LIVEDIT_HOME/knowledge (or another folder)."""
    from updater.store.knowledge import KnowledgeStore

    opened = []

    def open_(directory: Path | None = None, config: UpdaterConfig | None = None) -> KnowledgeStore:
        store = (KnowledgeStore(directory, config, embedding_function) if directory is not None
                 else KnowledgeStore.open(load_config(), embedding_function))
        opened.append(store)
        return store

    yield open_
    for store in opened:
        store.close()


@pytest.fixture
def store(open_store):
    return open_store()


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def shared_records():
    """shared_records(relative_path, count) -> the first records of a real shared data file.

    The folder is the one config.toml and LIVEDIT_SHARED_DATA name, read once per session
    (before each test points LIVEDIT_SHARED_DATA at its own small copy)."""
    shared = load_config(PROJECT_ROOT / "config.toml").paths.shared_data_dir()

    def read(relative: Path, count: int) -> list[dict]:
        path = shared / relative
        if not path.exists():
            pytest.skip(f"{path} is not there: put ../shared/data beside the checkout or set LIVEDIT_SHARED_DATA")
        return json.loads(path.read_text(encoding="utf-8"))[:count]
    return read
