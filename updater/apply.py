"""The apply step: write approved queue items into the model's weights with the engine.

Approved items are taken oldest first, in batches. A batch is marked applying, applied
by ``Editor.apply`` as one atomic commit, and then each item is marked applied with its
engine edit id. When the engine raises, every item of the batch is marked failed with
the error (a curator can approve it again) and the model keeps its previous weights.
Items that a crash left in "applying" are settled first against the engine's ledger.

Only one process may apply at a time: the engine's state directory has one writer.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Callable

from assistant.config import Config
from assistant.errors import InvalidFact
from assistant.facts import Fact
from updater.queue import EditQueue, QueueItem

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]       # (done, total)
REASON_CHARS = 1000


@dataclass
class ApplyOutcome:
    applied: dict[int, int] = field(default_factory=dict)    # queue item id -> engine edit id
    failed: dict[int, str] = field(default_factory=dict)     # queue item id -> why
    settled: dict[int, str] = field(default_factory=dict)    # items a crash left applying -> their new state
    stopped: bool = False                                    # the stop event ended the run early


def reason(error: BaseException) -> str:
    """An error as one line that the queue accepts as a reason."""
    text = " ".join(str(error).split()) or type(error).__name__
    text = "".join(ch for ch in text if ch.isprintable())
    return text[:REASON_CHARS]


def plan_batches(items: list[QueueItem], size: int) -> list[list[QueueItem]]:
    """Batches of at most ``size`` items, oldest first; a fact's later item goes in a later batch."""
    batches: list[list[QueueItem]] = []
    for item in items:
        after = max((i for i, batch in enumerate(batches) if any(other.fact_id == item.fact_id for other in batch)),
                    default=-1)
        home = next((batch for batch in batches[after + 1:] if len(batch) < size), None)
        if home is None:
            batches.append(home := [])
        home.append(item)
    return batches


def settle_applying(editor, queue: EditQueue, who: str = "scheduler") -> dict[int, str]:
    """Settle items left in "applying" by a crash: applied if the ledger holds their edit, else failed."""
    settled = {}
    for item in queue.list(state="applying"):
        active = editor.active_edit(item.fact_id)
        if active is not None and active.fact.target_new == item.new_object:
            queue.mark_applied(item.id, active.id, who, f"settled after an interruption: edit {active.id} holds it")
            settled[item.id] = "applied"
        else:
            queue.mark_failed(item.id, "interrupted before its edit was committed; approve it again to retry", who)
            settled[item.id] = "failed"
    return settled


def _editable(editor, items: list[QueueItem]) -> tuple[list[tuple[QueueItem, Fact]], dict[int, str]]:
    """The engine's fact for each item that the engine can take; the others with why they cannot."""
    ready, bad = [], {}
    for item in items:
        try:
            fact = item.to_edit_fact()
            editor.check_lengths([fact])
        except InvalidFact as error:
            bad[item.id] = f"cannot be edited: {reason(error)}"
            continue
        ready.append((item, fact))
    return ready, bad


def apply_batch(editor, queue: EditQueue, items: list[QueueItem], outcome: ApplyOutcome,
                who: str = "scheduler") -> None:
    """Apply one batch of approved items as one engine commit; record the result on each item."""
    items = [item for item in (queue.get(item.id) for item in items) if item.state == "approved"]   # still approved
    if not items:
        return
    ready, bad = _editable(editor, items)
    queue.start_applying([item.id for item in items], who, f"applying a batch of {len(items)} item(s)")
    for item_id, why in bad.items():
        queue.mark_failed(item_id, why, who)
        outcome.failed[item_id] = why
    if not ready:
        return
    before = {fact.id: _active_id(editor, fact) for _, fact in ready}
    try:
        report = editor.apply([fact for _, fact in ready], batch_size=len(ready))
    except BaseException as error:
        _record_failure(editor, queue, ready, before, error, outcome, who)
        if not isinstance(error, Exception):
            raise
        return
    new_ids, unchanged = iter(report.edit_ids), set(report.unchanged)
    for item, fact in ready:
        if fact.id in unchanged:
            edit_id, why = editor.active_edit(fact.id).id, "the model already holds this object"
        else:
            edit_id, why = next(new_ids), f"applied with {editor.method}"
        queue.mark_applied(item.id, edit_id, who, f"{why} (edit {edit_id})")
        outcome.applied[item.id] = edit_id


def _active_id(editor, fact: Fact) -> int | None:
    """The engine's active edit that holds this fact's object, if any."""
    active = editor.active_edit(fact.id)
    return active.id if active is not None and active.fact.target_new == fact.target_new else None


def _record_failure(editor, queue: EditQueue, ready: list[tuple[QueueItem, Fact]], before: dict[str, int | None],
                    error: BaseException, outcome: ApplyOutcome, who: str) -> None:
    """Mark a raising batch's items failed; an edit the engine committed before it raised counts as applied."""
    why = f"the batch failed: {type(error).__name__}: {reason(error)}"
    log.warning("apply: %s", why)
    for item, fact in ready:
        edit_id = _active_id(editor, fact)
        if edit_id is not None and edit_id != before[fact.id]:
            queue.mark_applied(item.id, edit_id, who, f"committed as edit {edit_id} before the batch raised")
            outcome.applied[item.id] = edit_id
        else:
            queue.mark_failed(item.id, why, who)
            outcome.failed[item.id] = why


def apply_approved(editor, queue: EditQueue, limit: int | None = None, batch_size: int | None = None,
                   who: str = "scheduler", progress: Progress | None = None,
                   stop: threading.Event | None = None) -> ApplyOutcome:
    """Apply the approved items (oldest first, at most ``limit``) in batches; see the module docstring."""
    outcome = ApplyOutcome(settled=settle_applying(editor, queue, who))
    items = queue.list(state="approved")
    items = items[:limit] if limit is not None else items
    done = 0
    for batch in plan_batches(items, batch_size or editor.editing.batch_size):
        if stop is not None and stop.is_set():
            outcome.stopped = True
            break
        apply_batch(editor, queue, batch, outcome, who)
        done += len(batch)
        if progress is not None:
            progress(done, len(items))
    log.info("apply: %d applied, %d failed", len(outcome.applied), len(outcome.failed))
    return outcome


def run_apply(editor, config: Config, limit: int | None = None, batch_size: int | None = None,
              who: str = "scheduler", progress: Progress | None = None,
              stop: threading.Event | None = None) -> ApplyOutcome:
    """apply_approved with the edit queue of ``config``."""
    with EditQueue.open(config) as queue:
        return apply_approved(editor, queue, limit, batch_size, who, progress, stop)
