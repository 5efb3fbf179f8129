"""The apply step: write approved queue items into the model's weights with the engine.

Approved items are taken oldest first, in batches. A batch is marked applying and solved
by the engine as a candidate. The guard (updater.guard), when given, checks the candidate:
a passing batch is committed and each item is marked applied with its engine edit id; a
failing batch is discarded, split in halves and each half tried again, so one harmful fact
does not block the others; a single failing fact is rejected with the guard's reason and
figures. Every decision is kept with its figures.

When the engine refuses a batch (its own errors, or the disk), every item of the batch is
marked failed with the error (a curator can approve it again) and the model keeps its
weights. Any other exception is a bug: the items go back to approved and it is raised.
Items that a crash left in "applying" are settled first against the engine's ledger:
applied if their commit landed, else approved again, so no correction is lost.

Only one process may apply at a time: the engine's state directory has one writer.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Callable

from assistant.config import Config
from assistant.errors import InvalidFact, LiveditError
from assistant.facts import Fact
from updater.queue import EditQueue, QueueItem

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]       # (done, total)
REASON_CHARS = 1000


@dataclass
class ApplyOutcome:
    applied: dict[int, int] = field(default_factory=dict)    # queue item id -> engine edit id
    failed: dict[int, str] = field(default_factory=dict)     # queue item id -> why
    rejected: dict[int, str] = field(default_factory=dict)   # queue item id -> the guard's reason
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
    """Settle items left in "applying" by a crash: applied if the ledger holds their edit,
    else approved again (the batch never committed; the next run retries it)."""
    settled = {}
    for item in queue.list(state="applying"):
        active = editor.active_edit(item.fact_id)
        if active is not None and active.fact.target_new == item.new_object:
            queue.mark_applied(item.id, active.id, who, f"settled after an interruption: edit {active.id} holds it")
            settled[item.id] = "applied"
        else:
            queue.transition(item.id, "approved", who, "interrupted before its edit was committed; it will be retried")
            settled[item.id] = "approved"
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
                who: str = "scheduler", guard=None) -> None:
    """Apply one batch of approved items; record the result on each item (see the module docstring)."""
    items = [item for item in (queue.get(item.id) for item in items) if item.state == "approved"]   # still approved
    if not items:
        return
    ready, bad = _editable(editor, items)
    queue.start_applying([item.id for item in items], who, f"applying a batch of {len(items)} item(s)")
    for item_id, why in bad.items():
        queue.mark_failed(item_id, why, who)
        outcome.failed[item_id] = why
    todo = []
    for item, fact in ready:
        held = _active_id(editor, fact)
        if held is not None:
            queue.mark_applied(item.id, held, who, f"the model already holds this object (edit {held})")
            outcome.applied[item.id] = held
        else:
            todo.append((item, fact))
    if todo:
        _write(editor, queue, todo, outcome, who, guard)


def _write(editor, queue: EditQueue, pairs: list[tuple[QueueItem, Fact]], outcome: ApplyOutcome, who: str,
           guard) -> None:
    """Solve ``pairs`` as one candidate; commit it, or split it, or reject its one fact."""
    facts, item_ids = [fact for _, fact in pairs], [item.id for item, _ in pairs]
    solved, candidate = _attempt(lambda: editor.solve_candidate(facts), queue, pairs, outcome, who)
    if not solved:
        return
    checked, verdict = _attempt(lambda: guard.check(editor, candidate, facts) if guard is not None else None,
                                queue, pairs, outcome, who, undo=lambda: editor.discard(candidate))
    if not checked:
        return
    if verdict is None or verdict.ok:
        _commit(editor, queue, pairs, candidate, verdict, outcome, who)
        return
    editor.discard(candidate)
    figures = verdict.figures.to_json()
    if len(pairs) > 1:
        queue.record_decision(item_ids, "split", verdict.summary(), figures)
        half = len(pairs) // 2
        for part in (pairs[:half], pairs[half:]):
            _write(editor, queue, part, outcome, who, guard)
        return
    queue.record_decision(item_ids, "reject", verdict.summary(), figures)
    why = f"rejected by the guard: {verdict.summary()}"
    queue.transition(item_ids[0], "rejected", who, why)
    outcome.rejected[item_ids[0]] = why


def _commit(editor, queue: EditQueue, pairs, candidate, verdict, outcome: ApplyOutcome, who: str) -> None:
    committed, edit_ids = _attempt(lambda: editor.commit(candidate), queue, pairs, outcome, who)
    if not committed:
        return
    if verdict is not None:
        queue.record_decision([item.id for item, _ in pairs], "commit", verdict.summary(), verdict.figures.to_json(),
                              editor.generation)
    for (item, _), edit_id in zip(pairs, edit_ids):
        queue.mark_applied(item.id, edit_id, who, f"applied with {editor.method} (edit {edit_id})")
        outcome.applied[item.id] = edit_id


def _attempt(step, queue: EditQueue, pairs, outcome: ApplyOutcome, who: str, undo=None) -> tuple[bool, object]:
    """(True, step()) or, when it raises, (False, None) after ``undo`` and recording the failure
    on the batch's items; an error that is not a refusal (a bug) is raised after that."""
    try:
        return True, step()
    except BaseException as error:
        if undo is not None:
            undo()
        _record_failure(queue, pairs, error, outcome, who)
        raise_unless_refusal(error)
        return False, None


def _active_id(editor, fact: Fact) -> int | None:
    """The engine's active edit that holds this fact's object, if any."""
    active = editor.active_edit(fact.id)
    return active.id if active is not None and active.fact.target_new == fact.target_new else None


def is_refusal(error: BaseException) -> bool:
    """The engine's own refusals and the disk's errors fail a batch's items; anything else is a bug."""
    return isinstance(error, (LiveditError, OSError))


def raise_unless_refusal(error: BaseException) -> None:
    if not is_refusal(error):
        raise error


def _record_failure(queue: EditQueue, pairs: list[tuple[QueueItem, Fact]], error: BaseException,
                    outcome: ApplyOutcome, who: str) -> None:
    """Nothing of the batch was committed: its items fail with the engine's refusal, or go
    back to approved when the error is a bug (which the caller raises)."""
    if is_refusal(error):
        why = f"the batch failed: {type(error).__name__}: {reason(error)}"
        log.warning("apply: %s", why)
        for item, _ in pairs:
            queue.mark_failed(item.id, why, who)
            outcome.failed[item.id] = why
        return
    log.error("apply: %s while applying; the batch's items are approved again", type(error).__name__)
    for item, _ in pairs:
        queue.transition(item.id, "approved", who, f"not applied: {type(error).__name__} in livedit (a bug); "
                         "the item waits for the next run")


def apply_approved(editor, queue: EditQueue, limit: int | None = None, batch_size: int | None = None,
                   who: str = "scheduler", progress: Progress | None = None,
                   stop: threading.Event | None = None, guard=None) -> ApplyOutcome:
    """Apply the approved items (oldest first, at most ``limit``) in batches; see the module docstring."""
    outcome = ApplyOutcome(settled=settle_applying(editor, queue, who))
    items = queue.list(state="approved")
    items = items[:limit] if limit is not None else items
    done = 0
    for batch in plan_batches(items, batch_size or editor.editing.batch_size):
        if stop is not None and stop.is_set():
            outcome.stopped = True
            break
        apply_batch(editor, queue, batch, outcome, who, guard)
        done += len(batch)
        if progress is not None:
            progress(done, len(items))
    log.info("apply: %d applied, %d failed, %d rejected", len(outcome.applied), len(outcome.failed),
             len(outcome.rejected))
    return outcome


def run_apply(editor, config: Config, limit: int | None = None, batch_size: int | None = None,
              who: str = "scheduler", progress: Progress | None = None,
              stop: threading.Event | None = None, guard=None) -> ApplyOutcome:
    """apply_approved with the edit queue of ``config``."""
    with EditQueue.open(config) as queue:
        return apply_approved(editor, queue, limit, batch_size, who, progress, stop, guard)
