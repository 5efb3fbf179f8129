"""The schedule: APScheduler 3's BackgroundScheduler over a SQLAlchemy job store.

Each job of updater.jobs runs on its interval from [scheduler] in config.toml (0 switches it
off). The store (SQLite in $LIVEDIT_HOME by default; any SQLAlchemy URL, PostgreSQL for a
deployment) keeps the schedule across restarts; misfired runs coalesce into one, and a job
never runs twice at once. APScheduler pickles a job as a module-level function with plain
arguments, so the scheduled function finds its runner by the job store's URL.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta

from assistant.config import Config
from updater.jobs import JOB_NAMES, JobRunner

log = logging.getLogger(__name__)

MISFIRE_GRACE_SECONDS = 3600            # a run missed by up to an hour still runs (once: coalesced)
_RUNNERS: dict[str, JobRunner] = {}     # job store URL -> the runner its jobs call
_RUNNERS_LOCK = threading.Lock()


def job_store_url(config: Config) -> str:
    """[scheduler] job_store, else SQLite in $LIVEDIT_HOME (the folder is made if missing)."""
    if config.scheduler.job_store:
        return config.scheduler.job_store
    home = config.paths.home_dir()
    home.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{home / 'schedule.sqlite'}"


def intervals(config: Config) -> dict[str, float]:
    """Minutes between runs of each job (0: off)."""
    s = config.scheduler
    return {"detect": s.detect_minutes, "apply": s.apply_minutes, "verify": s.verify_minutes,
            "snapshot": s.snapshot_minutes}


def run_scheduled_job(store_url: str, name: str) -> None:
    """What APScheduler calls: the named job on the runner registered for ``store_url``."""
    with _RUNNERS_LOCK:
        runner = _RUNNERS.get(store_url)
    if runner is None:
        log.warning("scheduler: no runner for %s; job %s not run", store_url, name)
        return
    runner.run(name, who="scheduler")


@dataclass(frozen=True)
class ScheduledJob:
    name: str
    minutes: float                  # 0: off
    next_run: datetime | None


class Schedule:
    """The running scheduler of one serving process."""

    def __init__(self, runner: JobRunner, config: Config, url: str | None = None):
        from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
        from apscheduler.schedulers.background import BackgroundScheduler

        self.runner, self.config, self.url = runner, config, url or job_store_url(config)
        self.scheduler = BackgroundScheduler(
            jobstores={"default": SQLAlchemyJobStore(url=self.url)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": MISFIRE_GRACE_SECONDS})

    def start(self) -> None:
        """Register the runner, start, and bring the stored jobs in line with the config: a job
        whose interval is unchanged keeps its stored next run (so a missed run still comes)."""
        with _RUNNERS_LOCK:
            _RUNNERS[self.url] = self.runner
        self.scheduler.start(paused=True)
        for name, minutes in intervals(self.config).items():
            self._ensure(name, minutes)
        self.scheduler.resume()
        log.info("scheduler: %s", ", ".join(f"{j.name} every {j.minutes:g} min" if j.minutes else f"{j.name} off"
                                            for j in self.jobs()))

    def _ensure(self, name: str, minutes: float) -> None:
        job = self.scheduler.get_job(name)
        if not minutes:
            if job is not None:
                job.remove()
            return
        wanted = timedelta(minutes=minutes)
        if job is not None and getattr(job.trigger, "interval", None) == wanted and job.args == (self.url, name):
            return
        self.scheduler.add_job(run_scheduled_job, "interval", args=(self.url, name), id=name, name=name,
                               minutes=minutes, replace_existing=True)

    def jobs(self) -> list[ScheduledJob]:
        minutes = intervals(self.config)
        return [ScheduledJob(name, minutes[name], getattr(self.scheduler.get_job(name), "next_run_time", None))
                for name in JOB_NAMES]

    def shutdown(self) -> None:
        """Stop scheduling and wait for a running job (which sees the runner's stop event and
        ends after its batch)."""
        self.runner.stop.set()
        self.scheduler.pause()
        # Detach the store first: APScheduler processes due jobs once more while it shuts down,
        # and a job due at that moment would have its run used up by a refused submission. Left
        # in the store, it stays due and runs (coalesced) at the next start.
        self.scheduler.remove_jobstore("default", shutdown=True)
        self.scheduler.shutdown(wait=True)
        with _RUNNERS_LOCK:
            if _RUNNERS.get(self.url) is self.runner:
                del _RUNNERS[self.url]
