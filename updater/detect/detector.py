"""The detector: find the curated facts that the served model gets wrong, and queue them.

A fact is *due* when it was never checked, when its current version is newer than the
one last checked, or when its last check is older than ``[updater] recheck_days``. Due
facts are asked in batches (``updater.detect.probing``); an answer that does not hold the
curated object makes the fact *outdated*, and it is proposed to the edit queue (origin
"detector") with the model's answer and the scores as evidence, unless the queue holds
that object for the fact already (pending or applied). Every check is recorded in the
``CheckLog`` batch by batch, so a run that is stopped keeps what it did.
"""

from __future__ import annotations

import logging
import threading
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import Callable, ContextManager

from assistant.config import Config
from assistant.state.migrations import now
from updater.detect.checks import Check, CheckLog
from updater.errors import StaleProposal
from updater.detect.probing import Probe, ProbeSettings, probe_facts
from updater.queue import EditQueue, QueueItem, same_object
from updater.store.records import CuratedFact
from updater.store.knowledge import KnowledgeStore

log = logging.getLogger(__name__)

HOLDING = ("proposed", "approved", "applying", "applied")    # states in which an item holds its object
Progress = Callable[[int, int], None]                          # (done, total)


@dataclass(frozen=True)
class DetectorSettings:
    recheck_days: int = 7            # days before a checked fact is asked again
    who: str = "detector"            # recorded as the proposer of queue items
    probe: ProbeSettings = ProbeSettings()

    @classmethod
    def from_config(cls, config: Config, batch_size: int | None = None) -> "DetectorSettings":
        probe = ProbeSettings(system_prompt=config.chat.system_prompt,
                              question_tokens=min(config.chat.max_new_tokens, ProbeSettings.question_tokens))
        if batch_size is not None:
            probe = replace(probe, batch_size=batch_size)
        return cls(recheck_days=config.updater.recheck_days, probe=probe)


@dataclass
class DetectReport:
    due: int                                                  # facts due when the run started
    checks: list[Check] = field(default_factory=list)         # the checks made, in order
    queued: list[int] = field(default_factory=list)           # queue items proposed (or merged into)
    already_queued: list[int] = field(default_factory=list)   # items that already held the object
    stopped: bool = False                                     # the stop event ended the run early

    @property
    def outdated(self) -> list[Check]:
        return [check for check in self.checks if check.outdated]

    @property
    def current(self) -> list[Check]:
        return [check for check in self.checks if not check.outdated]


def _last_checked(check: Check) -> datetime:
    return datetime.fromisoformat(check.checked_at)


def due_facts(facts: list[CuratedFact], latest: dict[str, Check], recheck_days: int,
              at: datetime | None = None) -> list[CuratedFact]:
    """The facts to ask: new or changed ones first, then the longest unchecked."""
    at = at or datetime.now(timezone.utc)
    cutoff = at - timedelta(days=recheck_days)
    fresh, stale = [], []
    for fact in facts:
        last = latest.get(fact.id)
        if last is None or last.fact_version != fact.version:
            fresh.append(fact)
        elif _last_checked(last) <= cutoff:
            stale.append((last.checked_at, fact))
    return fresh + [fact for _, fact in sorted(stale, key=lambda pair: pair[0])]


def holding_item(queue: EditQueue, fact: CuratedFact) -> QueueItem | None:
    """The queue item that already holds this object for the fact (pending or applied), if any."""
    for item in reversed(queue.list(fact_id=fact.id)):
        if item.state in HOLDING and same_object(item.new_object, fact.object):
            return item
    return None


class Detector:
    """Probes the served model about curated facts; see the module's docstring."""

    def __init__(self, model, tokenizer, store: KnowledgeStore, queue: EditQueue, checks: CheckLog,
                 settings: DetectorSettings = DetectorSettings(),
                 reading: Callable[[], ContextManager] | None = None,
                 model_state: str | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.store, self.queue, self.checks = store, queue, checks
        self.settings, self.reading, self.model_state = settings, reading, model_state

    @classmethod
    def for_editor(cls, editor, config: Config, store: KnowledgeStore, queue: EditQueue, checks: CheckLog,
                   batch_size: int | None = None) -> "Detector":
        """A detector on the engine's served model, holding its weights still while it asks."""
        generation = editor.generation
        return cls(editor.model, editor.tokenizer, store, queue, checks,
                   DetectorSettings.from_config(config, batch_size), editor.weights.reading,
                   f"{editor.loaded.fingerprint[:12]}@{generation}")

    def due(self, force: bool = False, at: datetime | None = None) -> list[CuratedFact]:
        """The facts a run would ask (every current fact with force)."""
        facts = self.store.facts()
        return facts if force else due_facts(facts, self.checks.latest(), self.settings.recheck_days, at)

    def check(self, facts: list[CuratedFact]) -> list[Check]:
        """Ask the model about the facts and give each a verdict; nothing is stored or queued."""
        with self.reading() if self.reading else nullcontext():
            probes = probe_facts(self.model, self.tokenizer, facts, self.settings.probe)
        return [self._verdict(fact, probe) for fact, probe in zip(facts, probes)]

    def _verdict(self, fact: CuratedFact, probe: Probe) -> Check:
        return Check(fact_id=fact.id, fact_version=fact.version, checked_at=now(),
                     verdict="current" if probe.match else "outdated", form=probe.form, probe=probe.text,
                     object=fact.object, answer=probe.answer, p_object=probe.p_object, p_answer=probe.p_answer,
                     model=self.model_state)

    def run(self, force: bool = False, limit: int | None = None, progress: Progress | None = None,
            stop: threading.Event | None = None, at: datetime | None = None) -> DetectReport:
        """Check the due facts batch by batch, queue the outdated ones, record every check."""
        facts = self.due(force, at)
        facts = facts[:limit] if limit is not None else facts
        report = DetectReport(due=len(facts))
        size = self.settings.probe.batch_size
        for start in range(0, len(facts), size):
            if stop is not None and stop.is_set():
                report.stopped = True
                log.info("detector: stopped after %d of %d fact(s)", start, len(facts))
                break
            batch = facts[start:start + size]
            checks = [self._queue_if_outdated(fact, check, report) for fact, check in zip(batch, self.check(batch))]
            self.checks.record(checks)
            report.checks += checks
            if progress is not None:
                progress(start + len(batch), len(facts))
        log.info("detector: %d checked, %d outdated, %d queued", len(report.checks), len(report.outdated),
                 len(report.queued))
        return report

    def _queue_if_outdated(self, fact: CuratedFact, check: Check, report: DetectReport) -> Check:
        if not check.outdated:
            return check
        held = holding_item(self.queue, fact)
        if held is not None:
            if held.state == "applied":
                log.warning("detector: fact %s is applied (edit %s) but the model answered %r",
                            fact.id, held.edit_id, check.answer)
            report.already_queued.append(held.id)
            return replace(check, queue_item=held.id)
        evidence = {"form": check.form, "probe": check.probe, "p_object": check.p_object,
                    "p_answer": check.p_answer, "checked_at": check.checked_at, "model": check.model}
        try:
            proposal = self.queue.propose_fact(fact, origin="detector", who=self.settings.who,
                                               old_answer=check.answer, evidence=evidence,
                                               why=f"the model's answer does not contain {fact.object!r}")
        except StaleProposal as error:
            log.warning("detector: fact %s changed while it was checked; not queued (%s)", fact.id, error)
            return check
        report.queued.append(proposal.item.id)
        return replace(check, queue_item=proposal.item.id)


def run_detection(editor, config: Config, force: bool = False, limit: int | None = None,
                  batch_size: int | None = None, progress: Progress | None = None,
                  stop: threading.Event | None = None) -> DetectReport:
    """One detector run on the engine's served model, with the store, queue and check log of ``config``."""
    with KnowledgeStore.open(config) as store, EditQueue.open(config) as queue, CheckLog.open(config) as checks:
        detector = Detector.for_editor(editor, config, store, queue, checks, batch_size)
        return detector.run(force=force, limit=limit, progress=progress, stop=stop)
