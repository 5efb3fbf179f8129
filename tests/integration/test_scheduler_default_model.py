"""The scheduler on the real default model: curated facts are imported, and the schedule's own
jobs (APScheduler firing them, not direct calls) detect the outdated ones, apply the approved
ones behind the guard, and verify them; every run and the guard's figures are recorded."""

from __future__ import annotations

import json
import time

import pytest
from test_updater_end_to_end import livedit, updater_home  # noqa: F401

from assistant.config import load_config
from assistant.editing.editor import Editor
from assistant.evaluation.datasets import edit_records
from updater.jobs import JobRunner
from updater.scheduler import Schedule

pytestmark = pytest.mark.integration
COUNT = 4


def wait_for_run(runner: JobRunner, job: str, after: int = 0, timeout: float = 600) -> object:
    """The first finished run of ``job`` with an id above ``after``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = [run for run in runner.runs.history(job) if run.id > after and run.ended_at and run.outcome != "skipped"]
        if done:
            return done[-1]
        time.sleep(0.5)
    raise AssertionError(f"the scheduler ran no {job} job within {timeout} s: {runner.runs.history()}")


def test_the_schedule_detects_applies_and_verifies_on_its_own(updater_home, real_shared_data, tmp_path, capsys):
    records = edit_records(real_shared_data, "counterfact")[:COUNT]
    facts_file = tmp_path / "counterfact.json"
    facts_file.write_text(json.dumps(records), encoding="utf-8")
    assert f"{COUNT} added" in livedit(capsys, "facts", "import", str(facts_file), "--who", "test")
    config = load_config().replace("scheduler", detect_minutes=0.02, apply_minutes=0.02, verify_minutes=0.02)
    with Editor.open(config, progress=False) as editor:
        runner = JobRunner.open(editor, config)
        schedule = Schedule(runner, config)
        schedule.start()
        try:
            detect = wait_for_run(runner, "detect")
            assert detect.outcome == "ok" and detect.figures["checked"] == COUNT and detect.figures["queued"] >= 2
            proposed = runner.queue.list(state="proposed")
            for item in proposed:
                runner.queue.approve(item.id, who="test")
            last = runner.runs.history("apply")[0].id if runner.runs.history("apply") else 0
            apply = wait_for_run(runner, "apply", after=last)
            while not apply.figures.get("commits") and not apply.figures.get("rejected"):
                apply = wait_for_run(runner, "apply", after=apply.id)
            assert apply.outcome == "ok" and apply.figures["applied"] + apply.figures["rejected"] == len(proposed)
            decisions = runner.queue.decisions()
            assert decisions and {"agreement", "kl", "max_l1_growth", "efficacy"} <= set(decisions[-1].figures)
            verify = wait_for_run(runner, "verify", after=apply.id)
            assert verify.outcome == "ok" and verify.figures["sampled"] == apply.figures["applied"]
            assert verify.figures["still_shown"] >= verify.figures["sampled"] - 1
            assert verify.figures["probe_agreement"] >= config.guard.min_agreement
        finally:
            schedule.shutdown()
            runner.close()
    print(f"\nSCHEDULE detect={detect.figures} apply={apply.figures} verify={verify.figures} "
          f"decisions={[(d.outcome, d.reason) for d in decisions]}")
