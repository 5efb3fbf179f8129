"""The updater's jobs: detect, apply, verify and snapshot, and the log of their runs.

``JobRunner.run(name)`` is what the scheduler, `livedit jobs run NAME` and the UI call. It
takes one lock for every job that touches the model's state, so no job runs twice at once
and detect and apply never edit the state together; a job that finds the lock taken is
recorded as skipped instead of waiting. Every run is kept in SQLite with its start, end,
outcome and figures.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from assistant.config import Config
from assistant.errors import ConfigError, LiveditError
from assistant.evaluation.drift import measure_drift
from assistant.model.answers import answer_contains
from assistant.state.l1 import edits_left
from assistant.state.migrations import Migration, now
from updater.apply import apply_approved
from updater.database import Database, write_transaction
from updater.detect.checks import CheckLog
from updater.detect.detector import Detector
from updater.detect.probing import ProbeSettings, ask_forms
from updater.guard import Guard
from updater.queue import EditQueue
from updater.store.knowledge import KnowledgeStore

log = logging.getLogger(__name__)

JOB_NAMES = ("detect", "apply", "verify", "snapshot")
OUTCOMES = ("ok", "error", "skipped", "stopped")

JOB_MIGRATIONS = [
    Migration("0001_job_runs", """
        CREATE TABLE runs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            job TEXT NOT NULL,
            who TEXT NOT NULL,
            started_at TEXT NOT NULL,
            ended_at TEXT,
            outcome TEXT CHECK (outcome IN ('ok', 'error', 'skipped', 'stopped')),
            figures_json TEXT NOT NULL DEFAULT '{}',
            message TEXT NOT NULL DEFAULT '');
        CREATE INDEX runs_by_job ON runs (job, id)
    """),
]


@dataclass(frozen=True)
class JobRun:
    id: int
    job: str
    who: str
    started_at: str
    ended_at: str | None            # None while it runs (or if the process died during it)
    outcome: str | None
    figures: dict
    message: str


class JobLog(Database):
    MIGRATIONS = JOB_MIGRATIONS
    FILE_NAME = "jobs.sqlite"

    def start(self, job: str, who: str) -> int:
        with write_transaction(self.conn, self.lock):
            return self.conn.execute("INSERT INTO runs (job, who, started_at) VALUES (?, ?, ?)",
                                     (job, who, now())).lastrowid

    def finish(self, run_id: int, outcome: str, figures: dict, message: str = "") -> None:
        with write_transaction(self.conn, self.lock):
            self.conn.execute("UPDATE runs SET ended_at = ?, outcome = ?, figures_json = ?, message = ? WHERE id = ?",
                              (now(), outcome, json.dumps(figures), message, run_id))

    def history(self, job: str | None = None, limit: int = 20) -> list[JobRun]:
        """The newest runs first (of one job, or of all)."""
        where, args = ("WHERE job = ?", (job,)) if job else ("", ())
        rows = self.conn.execute(f"SELECT * FROM runs {where} ORDER BY id DESC LIMIT ?", (*args, limit))
        return [_run(row) for row in rows]

    def get(self, run_id: int) -> JobRun:
        return _run(self.conn.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone())


def _run(row) -> JobRun:
    return JobRun(row["id"], row["job"], row["who"], row["started_at"], row["ended_at"], row["outcome"],
                  json.loads(row["figures_json"]), row["message"])


def check_job(name: str) -> str:
    if name not in JOB_NAMES:
        raise ConfigError(f"there is no job {name!r}; the jobs are {', '.join(JOB_NAMES)}")
    return name


class JobRunner:
    """Runs the jobs over one engine, store and queue; see the module docstring."""

    def __init__(self, editor, config: Config, store: KnowledgeStore, queue: EditQueue, checks: CheckLog,
                 runs: JobLog, stop: threading.Event | None = None):
        self.editor, self.config = editor, config
        self.store, self.queue, self.checks, self.runs = store, queue, checks, runs
        self.stop = stop or threading.Event()
        self.state_lock = threading.Lock()
        self._guard: Guard | None = None
        self.progress: Callable[[str, int, int], None] | None = None     # (job, done, total) for the UI

    @classmethod
    def open(cls, editor, config: Config, stop: threading.Event | None = None) -> "JobRunner":
        return cls(editor, config, KnowledgeStore.open(config), EditQueue.open(config), CheckLog.open(config),
                   JobLog.open(config), stop)

    def close(self) -> None:
        for part in (self.store, self.queue, self.checks, self.runs):
            part.close()

    @property
    def guard(self) -> Guard | None:
        """The guard, built on first use (it measures the unedited model once); None when off."""
        if self._guard is None and self.config.guard.enabled:
            self._guard = Guard.for_editor(self.editor, self.config)
        return self._guard

    def run(self, name: str, who: str = "scheduler") -> JobRun:
        """Run one job now and record it; errors a user can act on are recorded, bugs raise."""
        job = getattr(self, f"_{check_job(name)}")
        run_id = self.runs.start(name, who)
        if not self.state_lock.acquire(blocking=False):
            self.runs.finish(run_id, "skipped", {}, "another job was running")
            return self.runs.get(run_id)
        started = time.perf_counter()
        try:
            figures, stopped = job(who)
            figures["seconds"] = round(time.perf_counter() - started, 3)
            self.runs.finish(run_id, "stopped" if stopped else "ok", figures)
        except LiveditError as error:
            self.runs.finish(run_id, "error", {}, str(error))
            log.warning("job %s: %s", name, error)
        except BaseException as error:
            self.runs.finish(run_id, "error", {}, f"{type(error).__name__}: {error} (a bug; see the log)")
            raise
        finally:
            self.state_lock.release()
        return self.runs.get(run_id)

    # -- the jobs: each returns (figures, stopped) ------------------------------------------------
    def _report(self, job: str) -> Callable[[int, int], None]:
        """A progress(done, total) callback that passes the job's progress on to ``self.progress``."""
        def report(done: int, total: int) -> None:
            if self.progress is not None:
                self.progress(job, done, total)
        return report

    def _detect(self, who: str) -> tuple[dict, bool]:
        detector = Detector.for_editor(self.editor, self.config, self.store, self.queue, self.checks)
        report = detector.run(progress=self._report("detect"), stop=self.stop)
        return {"due": report.due, "checked": len(report.checks), "outdated": len(report.outdated),
                "queued": len(report.queued)}, report.stopped

    def _apply(self, who: str) -> tuple[dict, bool]:
        before = self.editor.generation
        guard = self.guard if self.queue.list(state="approved") else None
        outcome = apply_approved(self.editor, self.queue, who=who, progress=self._report("apply"), stop=self.stop,
                                 guard=guard)
        status = self.editor.status()
        left = edits_left(status.growth_history, self.config.guard.max_l1_growth)
        return {"applied": len(outcome.applied), "failed": len(outcome.failed), "rejected": len(outcome.rejected),
                "settled": len(outcome.settled), "generation": self.editor.generation,
                "commits": self.editor.generation - before,
                "max_l1_growth": max((n.growth for n in status.norms), default=0.0),
                "edits_left_at_recent_rate": None if left is None else round(left)}, outcome.stopped

    def _verify(self, who: str) -> tuple[dict, bool]:
        """Re-ask a sample of applied edits on the served model; one that no longer shows is
        proposed again with the evidence. Also the served model's drift on the guard's probes."""
        applied = self.queue.list(state="applied")
        sample = random.Random(self.editor.generation).sample(applied, min(self.config.scheduler.verify_sample,
                                                                          len(applied)))
        forms = [("question", i.question) if i.question else ("cloze", i.prompt.replace("{}", i.subject))
                 for i in sample]
        with self.editor.weights.reading():
            said = ask_forms(self.editor.model, self.editor.tokenizer, forms,
                             ProbeSettings(system_prompt=self.editor.system_prompt))
        lost = []
        for item, (form, text), answer in zip(sample, forms, said):
            if answer_contains(answer, item.new_object):
                continue
            evidence = {"why": f"verify: edit {item.edit_id} no longer shows", "probe": text, "answer": answer}
            proposal = self.queue.propose(fact_id=item.fact_id, subject=item.subject, prompt=item.prompt,
                                          new_object=item.new_object, origin="detector", who=who,
                                          question=item.question, old_answer=answer, evidence=evidence)
            lost.append(proposal.item.id)
        figures = {"sampled": len(sample), "still_shown": len(sample) - len(lost), "requeued": lost}
        if self.guard is not None:
            with self.editor.weights.reading():
                drift = measure_drift(self.editor.model, self.guard.ref, self.editor.tokenizer.pad_token_id)
            figures |= {"probe_agreement": drift.agreement, "probe_kl": drift.kl}
        return figures, False

    def _snapshot(self, who: str) -> tuple[dict, bool]:
        """Write the weight patch of the committed generation, once per generation."""
        from assistant.state.patch import patch_from_editor, write_patch

        folder = Path(self.config.scheduler.snapshot_dir or self.config.paths.home_dir() / "patches").expanduser()
        generation = self.editor.generation
        out = folder / f"gen-{generation:06d}"
        if generation == 0 or out.exists():
            return {"generation": generation, "written": False}, False
        patch = patch_from_editor(self.editor, since=0)          # refused behind the gate, before any folder
        folder.mkdir(parents=True, exist_ok=True)
        write_patch(patch, out)
        return {"generation": generation, "written": True, "path": str(out)}, False
