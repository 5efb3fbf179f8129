"""`livedit bench` on the real default model and the real evaluation data (issue: evaluation suite)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from assistant.config import PROJECT_ROOT

pytestmark = pytest.mark.integration


def test_bench_edits_mqd_questions_and_reports(cli_env, real_shared_data, tmp_path):
    out = tmp_path / "out"
    command = [sys.executable, "-m", "livedit", "-q", "--state-dir", str(tmp_path / "state"), "bench",
               "--method", "d4s", "--dataset", "mqd-yesno", "--count", "4", "--batch-size", "4", "--every", "4",
               "--general-items", "8", "--out", str(out)]
    done = subprocess.run(command, env=cli_env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    assert "mqd-yesno-d4s-b4-n4 after 4: efficacy" in done.stdout

    results = json.loads((out / "mqd-yesno-d4s-b4-n4.json").read_text())
    before, after = results["checkpoints"]
    assert (before["edits"], after["edits"]) == (0, 4)
    assert before["efficacy"] <= 0.5 and after["efficacy"] >= 0.75          # "Yes" now beats "No"
    assert after["perplexity"] == pytest.approx(before["perplexity"], rel=0.05)   # held-out text barely moves
    assert 0 <= after["mmlu"] <= 1 and 0 <= after["sst2"] <= 1 and after["fluency"] > 1
    assert 0 < max(after["l1_growth"].values()) < 0.01
    assert results["target_perplexity"]["median"] > 1
    report = (out / "report.md").read_text()
    assert "| mqd-yesno d4s | 4 |" in report and (out / "l1.png").exists()
