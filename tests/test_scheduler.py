"""The jobs and their schedule: a real APScheduler over a SQLite job store, and the job runner
over a real engine (the tiny Llama), queue and run log."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone

import pytest
from updater_fixtures import home  # noqa: F401

from assistant.config import load_config
from assistant.errors import ConfigError
from livedit.cli import main
from updater.jobs import JobLog, JobRunner
from updater.scheduler import Schedule, job_store_url

WHO = "ada"


class CountingRunner:
    """Stands in for the job runner where only the schedule is under test: it counts calls."""

    def __init__(self):
        self.calls, self.stop, self.called = [], threading.Event(), threading.Event()

    def run(self, name, who="scheduler"):
        self.calls.append((name, time.monotonic()))
        self.called.set()


def hourly_apply_only(config):
    return config.replace("scheduler", detect_minutes=0.0, verify_minutes=0.0, snapshot_minutes=0.0,
                          apply_minutes=60.0)


def test_the_schedule_survives_a_restart_in_its_sqlite_store(home):
    config = hourly_apply_only(load_config())
    first = Schedule(CountingRunner(), config)
    first.start()
    stored = {job.name: job.next_run for job in first.jobs()}
    first.shutdown()
    assert (home / "schedule.sqlite").exists() and job_store_url(config).endswith("schedule.sqlite")
    assert stored["apply"] is not None and stored["detect"] is None          # 0 minutes: off

    again = Schedule(CountingRunner(), config)
    again.start()
    try:
        assert {job.name: job.next_run for job in again.jobs()} == stored    # the stored next run is kept
    finally:
        again.shutdown()

    changed = Schedule(CountingRunner(), config.replace("scheduler", apply_minutes=30.0, detect_minutes=5.0))
    changed.start()
    try:
        jobs = {job.name: job for job in changed.jobs()}
        assert jobs["apply"].minutes == 30.0 and jobs["apply"].next_run < stored["apply"]
        assert jobs["detect"].next_run is not None
    finally:
        changed.shutdown()


def test_runs_missed_while_stopped_coalesce_into_one(home):
    config = hourly_apply_only(load_config())
    first = Schedule(CountingRunner(), config)
    first.start()
    first.scheduler.pause()                 # as if the process stopped here
    first.scheduler.modify_job("apply", next_run_time=datetime.now(timezone.utc) - timedelta(minutes=150))
    first.shutdown()                       # missed: now-150, now-90 and now-30 minutes (within the grace)

    runner = CountingRunner()
    again = Schedule(runner, config)
    again.start()
    try:
        assert runner.called.wait(10)
        time.sleep(1.0)
        assert [name for name, _ in runner.calls] == ["apply"]                # once, not three times
        next_run = {job.name: job.next_run for job in again.jobs()}["apply"]
        assert timedelta(minutes=29) < next_run - datetime.now(timezone.utc) < timedelta(minutes=31)
    finally:
        again.shutdown()


# -- the runner on a real engine ------------------------------------------------------------
@pytest.fixture
def runner(open_engine, home):
    editor = open_engine("llama")
    config = load_config().replace("guard", enabled=False)
    opened = JobRunner.open(editor, config)
    yield opened
    opened.close()


@pytest.fixture
def plain_runner(open_engine, home):
    """A runner whose engine serves plain weights (no gate), as a fleet of replicas needs."""
    editor = open_engine("llama", gate=0.0)
    opened = JobRunner.open(editor, load_config().replace("guard", enabled=False).replace("editing", gate=0.0))
    yield opened
    opened.close()


def test_apply_job_applies_the_approved_items_and_records_its_run(runner, new_fact):
    for fact in (new_fact(0), new_fact(1)):
        item = runner.queue.propose(fact_id=fact.id, subject=fact.subject, prompt=fact.prompt,
                                    new_object=fact.target_new, origin="curator", who=WHO).item
        runner.queue.approve(item.id, who=WHO)
    run = runner.run("apply", who="test")
    assert run.outcome == "ok" and run.ended_at is not None and run.who == "test"
    assert run.figures["applied"] == 2 and run.figures["commits"] == 1 and run.figures["generation"] == 1
    assert [r.id for r in runner.runs.history("apply")] == [run.id]


def test_a_job_finding_another_running_is_skipped_and_an_unknown_job_is_refused(runner):
    runner.state_lock.acquire()
    try:
        run = runner.run("detect")
    finally:
        runner.state_lock.release()
    assert run.outcome == "skipped" and run.message == "another job was running"
    with pytest.raises(ConfigError, match="there is no job 'nope'; the jobs are detect, apply, verify, snapshot"):
        runner.run("nope")


def test_a_bug_in_a_job_is_recorded_and_raised(runner, monkeypatch):
    def broken(who):
        raise TypeError("a bug")

    monkeypatch.setattr(runner, "_verify", broken)
    with pytest.raises(TypeError):
        runner.run("verify")
    [run] = runner.runs.history("verify")
    assert run.outcome == "error" and run.message.startswith("TypeError: a bug")
    assert runner.state_lock.acquire(blocking=False)          # the lock was let go
    runner.state_lock.release()


def test_verify_requeues_an_applied_edit_that_no_longer_shows(runner, new_fact):
    fact = new_fact(0)
    item = runner.queue.propose(fact_id=fact.id, subject=fact.subject, prompt=fact.prompt,
                                new_object="Zanzibarian", origin="curator", who=WHO).item
    runner.queue.approve(item.id, who=WHO)
    runner.queue.start_applying([item.id])
    runner.queue.mark_applied(item.id, edit_id=1, who=WHO)     # recorded applied, but never in the weights
    run = runner.run("verify")
    assert run.outcome == "ok" and run.figures["sampled"] == 1 and run.figures["still_shown"] == 0
    [again] = run.figures["requeued"]
    proposed = runner.queue.get(again)
    assert proposed.state == "proposed" and proposed.new_object == "Zanzibarian"
    assert "no longer shows" in str(proposed.evidence[-1])


def test_snapshot_job_writes_one_patch_per_generation(plain_runner, new_fact, tmp_path):
    runner = plain_runner
    runner.config = runner.config.replace("scheduler", snapshot_dir=str(tmp_path / "patches"))
    assert runner.run("snapshot").figures == {"generation": 0, "written": False, "seconds": pytest.approx(0, abs=5)}
    runner.editor.apply([new_fact(0)])
    run = runner.run("snapshot")
    assert run.figures["written"] and (tmp_path / "patches" / "gen-000001" / "manifest.json").exists()
    assert runner.run("snapshot").figures["written"] is False


def test_snapshot_job_behind_the_gate_is_an_error_that_says_what_to_set(runner, new_fact, tmp_path):
    assert runner.editor.editing.gate > 0                      # the default engine serves through the gate
    runner.config = runner.config.replace("scheduler", snapshot_dir=str(tmp_path / "patches"))
    runner.editor.apply([new_fact(0)])
    run = runner.run("snapshot")
    assert run.outcome == "error" and "gate = 0" in run.message and not (tmp_path / "patches").exists()


def test_jobs_cli_lists_runs_and_history(home, capsys):
    assert main(["-q", "jobs", "list"]) == 0
    listed = capsys.readouterr().out
    assert "apply" in listed and "2 min" in listed and "snapshot" in listed and "off" in listed
    with JobLog.open(load_config()) as runs:
        run_id = runs.start("detect", "ada")
        runs.finish(run_id, "ok", {"checked": 3})
    assert main(["-q", "jobs", "history"]) == 0
    assert f"run {run_id}: detect by ada" in capsys.readouterr().out
    assert main(["-q", "jobs", "run", "nope"]) == 2
    assert "there is no job 'nope'" in capsys.readouterr().err
