"""The serving process's services: the model and engine, the updater, the scheduler.

They open in the background, so the web page is up within seconds while the one-time
work (converting the default model, the covariance statistics) runs; its progress is
logged and kept in ``progress`` for the UI. Chat waits politely until the model is ready.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator

from assistant.config import Config
from assistant.errors import LiveditError, ModelNotReady

log = logging.getLogger(__name__)


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
        self.editor = self.store = self.queue = self.runner = self.schedule = None
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
        self.runner = JobRunner.open(self.editor, self.config, self._stop)
        self.store, self.queue = self.runner.store, self.runner.queue
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
        for name in ("runner", "editor"):           # the runner closes the store and the queue
            part = getattr(self, name)
            if part is not None:
                part.close()
                setattr(self, name, None)
        self.store = self.queue = None

    # -- chat -------------------------------------------------------------------------------
    def chat(self, question: str) -> Iterator[str]:
        """The answer as it grows; a polite note while the model is not ready yet."""
        if not self._ready.is_set():
            progress = self.progress
            if progress.stage == "failed":
                raise ModelNotReady(f"the model could not be started: {progress.error}")
            raise ModelNotReady(f"the model is still starting ({progress.message}); ask again in a moment")
        from assistant.model.chat import stream_answer

        editor, chat = self.editor, self.config.chat
        yield from stream_answer(editor.model, editor.tokenizer, question, chat.max_new_tokens, chat.system_prompt,
                                 reading=editor.weights.reading, stall_seconds=chat.stall_seconds)
