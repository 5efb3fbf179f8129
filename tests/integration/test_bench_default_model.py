"""`livedit bench` on the real default model and the real evaluation data (issue: evaluation suite)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from assistant.config import PROJECT_ROOT
from assistant.evaluation.datasets import load_edit_facts, mmlu_items, sst2_items
from assistant.evaluation.metrics import choice_accuracy, completion_logprobs

pytestmark = pytest.mark.integration


def test_bench_edits_mqd_questions_and_reports(cli_env, real_shared_data, load_real_model, tmp_path):
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
    assert 0 < max(after["l1_growth"].values()) < 0.01
    assert after["fluency"] > 0.8 * before["fluency"]                      # generations do not turn repetitive
    for task in ("mmlu", "sst2"):                 # 8 questions each: at most one answer changes
        assert abs(after[task] - before[task]) <= 1 / 8 + 1e-9, (task, before[task], after[task])

    # the unedited model's figures, computed here directly
    loaded = load_real_model()
    model, tokenizer = loaded.model, loaded.tokenizer
    for task, items in (("mmlu", mmlu_items(real_shared_data, 8, 0)), ("sst2", sst2_items(real_shared_data, 8, 0))):
        right = choice_accuracy(model, tokenizer, [i.prompt for i in items], [list(i.options) for i in items],
                                [i.answer for i in items])
        assert before[task] == pytest.approx(right), task
    facts = load_edit_facts(real_shared_data, "mqd-yesno", 0, 4)
    totals, counts = completion_logprobs(model, tokenizer, [f.filled_prompt for f in facts],
                                         [f.target_new for f in facts])
    per_fact = torch.exp(-totals / counts)        # perplexity of " Yes" after each question, before any edit
    target = results["target_perplexity"]
    assert target["per_fact"] == pytest.approx(per_fact.tolist(), rel=1e-3, abs=2e-3)
    assert target["mean"] == pytest.approx(per_fact.mean().item(), rel=1e-4)
    report = (out / "report.md").read_text()
    assert "| mqd-yesno d4s | 4 |" in report and (out / "l1.png").exists()
