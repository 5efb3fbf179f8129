"""The serving process's services: the model and engine, the updater, the scheduler.

They open in the background, so the web page is up within seconds while the one-time
work (converting the default model, the covariance statistics) runs; its progress is
logged and kept in ``progress`` for the UI. Chat waits politely until the model is ready.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from assistant.config import Config
from assistant.errors import InvalidFact, LiveditError, ModelNotReady, StateError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkProgress:
    """A job in flight: its name and how far it is (done of total)."""
    job: str
    done: int
    total: int


STATUS_LABELS = {       # what a user reads about their correction, by queue state
    "proposed": "pending review: a curator will look at it",
    "approved": "approved: it is written into the model at the next apply",
    "applying": "applying: it is being written into the model now",
    "applied": "applied: ask again to see the corrected answer",
    "failed": "failed",
    "rejected": "rejected",
    "superseded": "superseded by a newer correction",
    "retracted": "retracted by a curator",
}
WITH_REASON = ("failed", "rejected", "retracted", "superseded")


@dataclass(frozen=True)
class CorrectionStatus:
    item_id: int
    state: str
    label: str
    reason: str              # why it is rejected, failed, retracted or superseded ("" otherwise)
    new_object: str
    question: str | None

    @property
    def final(self) -> bool:
        return self.state in ("applied", "rejected", "superseded", "retracted")


@dataclass(frozen=True)
class Progress:
    """Where the background start is: a stage, its share done (0-1, or None), and a message."""
    stage: str = "starting"
    fraction: float | None = None
    message: str = "starting"
    error: str = ""
    started_at: float = field(default_factory=time.time)

    @property
    def ready(self) -> bool:
        return self.stage == "ready"


class Services:
    """Everything `livedit serve` runs, opened by ``start()`` and closed by ``close()``."""

    def __init__(self, config: Config, state_dir: Path | str | None = None):
        self.config, self.state_dir = config, state_dir
        self.editor = self.store = self.queue = self.runner = self.schedule = self.feedback = None
        self._intake = None
        self._work: WorkProgress | None = None    # the job in flight, for the console's Health tab
        self._listeners: list[Callable[[str, int, int], None]] = []
        self._stop = threading.Event()           # running jobs end after their batch once it is set
        self._progress = Progress()
        self._progress_lock = threading.Lock()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None

    # -- progress ---------------------------------------------------------------------------
    @property
    def progress(self) -> Progress:
        with self._progress_lock:
            return self._progress

    def report(self, stage: str, message: str, fraction: float | None = None) -> None:
        with self._progress_lock:
            self._progress = replace(self._progress, stage=stage, message=message, fraction=fraction)
        log.info("%s: %s%s", stage, message, "" if fraction is None else f" ({fraction:.0%})")

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        """Open everything in a background thread; returns at once."""
        self._thread = threading.Thread(target=self._open, name="livedit-start", daemon=True)
        self._thread.start()

    def wait_ready(self, timeout: float | None = None) -> bool:
        return self._ready.wait(timeout)

    def _open(self) -> None:
        try:
            self._open_model()
            self._open_updater()
            self.report("ready", f"serving {self.editor.loaded.path.name}")
            self._ready.set()
        except LiveditError as error:
            with self._progress_lock:
                self._progress = replace(self._progress, stage="failed", message=str(error), error=str(error))
            log.error("livedit serve could not start: %s", error)

    def _open_model(self) -> None:
        from assistant.editing.editor import Editor
        from assistant.model.loading import load_model

        self.report("model", "loading the model (the default model is converted once, about a minute)")
        loaded = load_model(self.config)
        self.report("covariance", "the edited layers' key statistics (computed once per model, then cached)")
        self.editor = Editor.open(self.config, state_dir=self.state_dir, loaded=loaded, progress=False)

    def _open_updater(self) -> None:
        from updater.jobs import JobRunner
        from updater.scheduler import Schedule

        self.report("updater", "opening the knowledge store, the edit queue and the jobs")
        from updater.feedback import FeedbackLog

        self.runner = JobRunner.open(self.editor, self.config, self._stop)
        self.store, self.queue = self.runner.store, self.runner.queue
        self.runner.progress = self._job_progress
        self.feedback = FeedbackLog.open(self.config)
        if self.config.scheduler.enabled:
            self.schedule = Schedule(self.runner, self.config)
            self.schedule.start()

    def close(self) -> None:
        """Stop cleanly: the scheduler lets a running job finish its batch, then everything closes."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.schedule is not None:
            self.schedule.shutdown()
            self.schedule = None
        for name in ("feedback", "runner", "editor"):   # the runner closes the store and the queue
            part = getattr(self, name)
            if part is not None:
                part.close()
                setattr(self, name, None)
        self.store = self.queue = None

    # -- chat -------------------------------------------------------------------------------
    def require_ready(self) -> None:
        """ModelNotReady, said politely, until everything is open."""
        if not self._ready.is_set():
            progress = self.progress
            if progress.stage == "failed":
                raise ModelNotReady(f"the model could not be started: {progress.error}")
            raise ModelNotReady(f"the model is still starting ({progress.message}); ask again in a moment")

    def chat(self, question: str, history: list[dict] = ()) -> Iterator[str]:
        """The answer as it grows (to ``question`` after the earlier role/content ``history``);
        a polite ModelNotReady while the model is not ready."""
        self.require_ready()
        from assistant.model.chat import stream_conversation

        editor, chat = self.editor, self.config.chat
        turns = self.config.ui.history_turns
        earlier = list(history)[-2 * turns:] if turns else []
        messages = earlier + [{"role": "user", "content": question}]
        yield from stream_conversation(editor.model, editor.tokenizer, messages, chat.max_new_tokens,
                                       chat.system_prompt, reading=editor.weights.reading,
                                       stall_seconds=chat.stall_seconds)

    # -- feedback and corrections -----------------------------------------------------------
    @property
    def intake(self):
        """The correction intake over the store and the queue (deterministic extraction: fast,
        and the same answer every time; the trust policy decides what happens next)."""
        self.require_ready()
        if self._intake is None:
            from updater.intake.corrections import CorrectionIntake
            self._intake = CorrectionIntake(self.store, self.queue, llm=None)
        return self._intake

    def record_feedback(self, liked: bool, question: str, answer: str, who: str) -> None:
        self.require_ready()
        self.feedback.record(liked, question, answer, who, self.editor.generation)

    def guess_subject(self, question: str) -> str:
        """What the intake takes the question to be about ("" when it cannot tell)."""
        from updater.intake.fallback import subject_from_question
        from updater.intake.policy import pick_anchor

        intake = self.intake
        try:
            anchor = pick_anchor(question, intake._related_facts(intake.retriever.invoke(question)))
            return anchor.fact.subject if anchor else subject_from_question(question)
        except InvalidFact:
            return ""

    def submit_correction(self, question: str, answer: str, correction: str, subject: str = "",
                          who: str = "chat") -> CorrectionStatus:
        """A chat correction through the intake and its trust policy into the queue."""
        intake = self.intake
        candidate = intake.propose_correction(question, answer, correction, use_model=False)
        if subject.strip() and subject.strip() != candidate.subject:
            candidate = intake.revise(candidate, subject=subject.strip())
        item = intake.confirm(candidate, who=who)
        return self.correction_status(item.id)

    def correction_status(self, item_id: int) -> CorrectionStatus:
        self.require_ready()
        detail = self.queue.show(int(item_id))
        item = detail.item
        reason = detail.events[-1].why if item.state in WITH_REASON and detail.events else ""
        return CorrectionStatus(item.id, item.state, STATUS_LABELS[item.state], reason, item.new_object,
                                item.question)

    # -- curators ---------------------------------------------------------------------------
    def _job_progress(self, job: str, done: int, total: int) -> None:
        self._work = WorkProgress(job, done, total)
        for listener in list(self._listeners):
            listener(job, done, total)

    @property
    def work(self) -> WorkProgress | None:
        """The job in flight, if any (None when the job lock is free)."""
        runner = self.runner
        if runner is None or not runner.state_lock.locked():
            return None
        return self._work or WorkProgress("a job", 0, 0)

    def apply_now(self, who: str, on_progress: Callable[[str, int, int], None] | None = None):
        """Run the apply job now (the job lock keeps it from running twice); its JobRun."""
        self.require_ready()
        if on_progress is not None:
            self._listeners.append(on_progress)
        try:
            return self.runner.run("apply", who=who)
        finally:
            if on_progress is not None:
                self._listeners.remove(on_progress)
            self._work = None

    def jobs(self) -> list[dict]:
        """Each job: its interval, its last run and its next run (when the scheduler runs)."""
        from updater.jobs import JOB_NAMES
        from updater.scheduler import intervals

        self.require_ready()
        scheduled = {job.name: job for job in self.schedule.jobs()} if self.schedule else {}
        minutes = intervals(self.config)
        return [{"name": name, "minutes": minutes[name] if self.schedule else 0.0,
                 "last_run": next(iter(self.runner.runs.history(name, limit=1)), None),
                 "next_run": getattr(scheduled.get(name), "next_run", None), "scheduled": bool(self.schedule)}
                for name in JOB_NAMES]

    def retract(self, edit_id: int, who: str, why: str = "") -> list[int]:
        """Take an applied edit out of the model (exactly, with d4s); its queue items become
        retracted. Refused while a job holds the state."""
        self.require_ready()
        if not self.runner.state_lock.acquire(blocking=False):
            raise StateError("a job is writing the model now; retract when it has finished")
        try:
            self.editor.retract(int(edit_id))
        finally:
            self.runner.state_lock.release()
        items = [item.id for item in self.queue.list(state="applied") if item.edit_id == int(edit_id)]
        for item_id in items:
            self.queue.retract(item_id, who, why or f"edit {edit_id} retracted by {who}")
        return items

    def import_facts(self, path: str, who: str, existing: str = "error") -> tuple[object | None, list[str]]:
        """(the import report, []) or (None, every rejected record with why): all or nothing."""
        from updater.store.fact_files import read_records
        from updater.store.records import fields_from_record, validate_fact

        self.require_ready()
        try:
            return self.store.import_file(path, who, existing=existing), []
        except InvalidFact as error:
            rejected = []
            for where, record in read_records(path):
                try:
                    validate_fact(fields_from_record(record, where), where, self.store.config, who)
                except InvalidFact as bad:
                    rejected.append(str(bad))
            return None, rejected or [str(error)]
