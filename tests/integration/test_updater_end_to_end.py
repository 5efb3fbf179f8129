"""The updater end to end on the real default model (issue 2): import 30 CounterFact facts
whose curated object is the counterfactual target, detect the ones the model gets wrong,
approve them, apply them with d4s, and detect again.

The store, the queue, the check log and the edit state live in a temporary LIVEDIT_HOME;
its models/ and cache/ link to the shared test home, so the converted model and the
covariance cache are the ones tests/integration/conftest.py uses.
"""

from __future__ import annotations

import json
import logging

from pathlib import Path

import pytest
import torch

from livedit.cli import main
from assistant.config import load_config
from assistant.evaluation.datasets import edit_records
from updater.detect.checks import CheckLog
from updater.queue import EditQueue

pytestmark = pytest.mark.integration
log = logging.getLogger(__name__)

COUNT = 30


@pytest.fixture
def updater_home(real_config, load_real_model, tmp_path, monkeypatch):
    """A fresh LIVEDIT_HOME and state dir that share the test home's model and covariances."""
    shared, home = Path(real_config.paths.home), tmp_path / "home"
    home.mkdir()
    for name in ("models", "cache"):
        (shared / name).mkdir(parents=True, exist_ok=True)
        (home / name).symlink_to(shared / name, target_is_directory=True)
    monkeypatch.setenv("LIVEDIT_HOME", str(home))
    monkeypatch.setenv("LIVEDIT_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("LIVEDIT_CONFIG", raising=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)            # on a busy 2-core machine one thread is several times faster
    yield home
    torch.set_num_threads(threads)


def livedit(capsys, *argv: str) -> str:
    code = main(["-q", *argv])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out


def outdated_facts(config) -> set[str]:
    with CheckLog.open(config) as checks:
        return {fact_id for fact_id, check in checks.latest().items() if check.outdated}


def test_detect_approve_apply_and_detect_again(updater_home, real_shared_data, tmp_path, capsys):
    records = edit_records(real_shared_data, "counterfact")[:COUNT]
    facts_file = tmp_path / "counterfact-30.json"
    facts_file.write_text(json.dumps(records), encoding="utf-8")
    assert "30 added" in livedit(capsys, "facts", "import", str(facts_file), "--who", "test")
    config = load_config()

    first = livedit(capsys, "detect").splitlines()[-1]
    wrong = outdated_facts(config)
    with EditQueue.open(config) as queue:
        proposed = queue.list(state="proposed")
    assert first.startswith(f"checked {COUNT} of {COUNT} due fact(s): {len(wrong)} outdated")
    assert {item.fact_id for item in proposed} == wrong and len(proposed) == len(wrong)
    assert len(wrong) >= COUNT * 2 // 3, f"the model already says {COUNT - len(wrong)} counterfactual objects"
    assert all(item.origin == "detector" and item.evidence[0]["p_object"] is not None for item in proposed)
    assert livedit(capsys, "detect").splitlines()[-1].startswith("checked 0 of 0 due fact(s)")

    livedit(capsys, "queue", "approve", *[str(item.id) for item in proposed], "--who", "test")
    applied = livedit(capsys, "apply", "--who", "test").splitlines()[-1]
    assert applied.startswith(f"applied {len(wrong)} item(s), 0 failed")
    with EditQueue.open(config) as queue:
        assert {item.state for item in queue.list()} == {"applied"}

    livedit(capsys, "detect", "--all")
    still = outdated_facts(config) & wrong
    newly = outdated_facts(config) - wrong
    log.warning("end to end: %d of %d queued; %d still outdated after the edit; %d newly outdated (%s)",
                len(wrong), COUNT, len(still), len(newly), applied)
    print(f"\nEND-TO-END queued={len(wrong)} still_outdated={len(still)} newly_outdated={len(newly)}")
    assert len(still) <= len(wrong) // 10, f"{len(still)} of {len(wrong)} edited facts are still outdated: {still}"
