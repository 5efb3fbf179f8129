"""The editing engine on the real default model, end to end (issue: editing engine)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

from assistant.evaluation.datasets import edit_records
from assistant.editing.editor import Editor
from assistant.facts import fact_from_record, make_fact
from assistant.evaluation.metrics import answer_contains, completion_nll
from livedit.cli import main

pytestmark = pytest.mark.integration

ASKED = make_fact(id="darrieux-tongue", subject="Danielle Darrieux", prompt="The mother tongue of {} is",
                  target_new="English", target_true="French",
                  question="What is the mother tongue of Danielle Darrieux?")


@pytest.fixture(scope="module")
def edited(real_config, real_shared_data, load_real_model, tmp_path_factory):
    """Ten CounterFact facts (records 1-10) plus one fact with a question, edited with d4s."""
    records = edit_records(real_shared_data, "counterfact")[1:11]
    facts = [fact_from_record(record) for record in records]
    state = tmp_path_factory.mktemp("d4s-state")
    editor = Editor.open(real_config, state_dir=state, method="d4s", loaded=load_real_model(), progress=False)
    report = editor.apply(facts + [ASKED], batch_size=11)
    return editor, facts, report, state


def test_ten_counterfact_edits_are_preferred(edited):
    editor, facts, report, _ = edited
    assert len(report.edit_ids) == 11
    prompts = [f.filled_prompt for f in facts]
    nll_new = completion_nll(editor.model, editor.tokenizer, prompts, [f.target_new for f in facts])
    nll_true = completion_nll(editor.model, editor.tokenizer, prompts, [f.target_true for f in facts])
    preferred = int((nll_new < nll_true).sum())
    assert preferred >= 9, f"the new object is preferred on only {preferred} of 10 prompts"
    assert all(abs(n.growth) < 0.05 for n in editor.norms())


def test_ask_in_a_new_process_answers_with_the_new_object(edited, cli_env):
    _, _, _, state = edited
    result = subprocess.run(
        [sys.executable, "-m", "livedit", "--quiet", "--state-dir", str(state), "ask", ASKED.question],
        capture_output=True, text=True, env=cli_env, timeout=600)
    assert result.returncode == 0, result.stderr
    assert answer_contains(result.stdout, "English"), result.stdout


def test_export_loads_in_plain_transformers(edited, cli_env, tmp_path):
    """Plain weights cannot carry the default gate: export says so, and writes with gate = 0."""
    editor, _, _, state = edited
    out = tmp_path / "exported"
    command = [sys.executable, "-m", "livedit", "--quiet", "--state-dir", str(state)]
    refused = subprocess.run(command + ["export", "--out", str(out)], capture_output=True, text=True,
                             env=cli_env, timeout=600)
    assert refused.returncode == 2 and "gate = 0" in refused.stderr and not out.exists()
    written = subprocess.run(command + ["--set", "editing.gate=0", "export", "--out", str(out)],
                             capture_output=True, text=True, env=cli_env, timeout=600)
    assert written.returncode == 0, written.stderr
    plain = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    for layer in editor.layers:
        name = editor.names[layer] + ".weight"
        assert torch.equal(plain.state_dict()[name], editor.model.state_dict()[name])


def test_status_and_retract_through_the_cli(edited, cli_env, tmp_path):
    _, _, report, state = edited
    status = subprocess.run([sys.executable, "-m", "livedit", "--quiet", "--state-dir", str(state), "status"],
                            capture_output=True, text=True, env=cli_env, timeout=600)
    assert status.returncode == 0, status.stderr
    assert "11 active edit(s)" in status.stdout and "growth" in status.stdout
    bad = subprocess.run([sys.executable, "-m", "livedit", "--quiet", "--state-dir", str(state),
                          "retract", "999"], capture_output=True, text=True, env=cli_env, timeout=600)
    assert bad.returncode == 2 and "no edit 999" in bad.stderr


CHEAP = ["--set", "editing.chat_refine_rounds=0", "--set", "editing.case_variants=false",   # one prompt form:
         "--set", 'editing.context_prefixes=[""]']                                           # half the CPU time


def test_an_edit_made_and_retracted_through_the_cli(real_config, tmp_path, monkeypatch, capsys):
    """One fact edited with `livedit edit` changes what `livedit ask` answers, and `livedit
    retract` of that edit brings the original answer back."""
    monkeypatch.setenv("LIVEDIT_HOME", real_config.paths.home)       # the converted model and covariance cache
    monkeypatch.delenv("LIVEDIT_STATE_DIR", raising=False)
    facts = tmp_path / "fact.jsonl"
    facts.write_text(json.dumps({"id": ASKED.id, "subject": ASKED.subject, "prompt": ASKED.prompt,
                                 "target_new": ASKED.target_new, "target_true": ASKED.target_true,
                                 "question": ASKED.question}) + "\n", encoding="utf-8")

    def livedit(*argv: str) -> str:
        code = main(["-q", "--state-dir", str(tmp_path / "state"), *CHEAP, *argv])
        out, err = capsys.readouterr()
        assert code == 0, err
        return out

    original = livedit("ask", ASKED.question)
    assert not answer_contains(original, "English"), original
    applied = livedit("edit", "--method", "d4s", "--facts", str(facts))
    edit_id = int(re.search(r"applied 1 edit\(s\) with d4s: ids (\d+)", applied)[1])
    edited = livedit("ask", ASKED.question)
    assert answer_contains(edited, "English"), edited
    assert f"retracted edit {edit_id}" in livedit("retract", str(edit_id))
    assert livedit("ask", ASKED.question) == original
    assert "0 active edit(s), 1 retracted or superseded" in livedit("status")
