"""The lock between chat generations and weight swaps.

Many generations read the served model at once; a commit swaps the edited layers' weights
in. A generation holds the read side for its whole answer, so every answer comes from one
set of weights, all old or all new, never a mix. A swap takes the write side: it waits for
the generations in flight to finish (new ones wait behind it, so a steady stream of chats
cannot starve a commit), copies the new weights in, and lets the readers go again. The
copy itself is the only time nobody generates; the gradient steps of an edit run on the
engine's shadow and hold nothing.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager


class WeightsLock:
    """A writer-preferring readers-writer lock. The write side is re-entrant for its owner,
    and its owner may also read (an engine that measures the served model while swapping).
    A reader must not ask to swap: it would wait for itself."""

    def __init__(self):
        self._condition = threading.Condition()
        self._readers = 0
        self._writer: int | None = None          # thread id of the owner of the write side
        self._writes = 0                          # re-entrant depth of that owner
        self._writers_waiting = 0
        self.last_swap_seconds = 0.0              # how long the latest write side was held
        self.last_wait_seconds = 0.0              # how long it waited for readers to drain

    @contextmanager
    def reading(self):
        """Hold the weights still for one generation."""
        me = threading.get_ident()
        with self._condition:
            if self._writer != me:
                while self._writer is not None or self._writers_waiting:
                    self._condition.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._condition:
                self._readers -= 1
                if not self._readers:
                    self._condition.notify_all()

    @contextmanager
    def swapping(self):
        """Exclusive use of the served weights: no generation runs while the block runs."""
        me = threading.get_ident()
        started = time.perf_counter()
        with self._condition:
            if self._writer == me:
                self._writes += 1
            else:
                self._writers_waiting += 1
                try:
                    while self._writer is not None or self._readers:
                        self._condition.wait()
                finally:
                    self._writers_waiting -= 1
                self._writer, self._writes = me, 1
        held = time.perf_counter()
        try:
            yield
        finally:
            with self._condition:
                self._writes -= 1
                if not self._writes:
                    self._writer = None
                    self.last_wait_seconds = held - started
                    self.last_swap_seconds = time.perf_counter() - held
                    self._condition.notify_all()
