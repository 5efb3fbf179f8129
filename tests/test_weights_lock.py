"""The lock between generations and weight swaps: readers together, a swap alone."""

import threading
import time

from assistant.model.weights_lock import WeightsLock


def test_readers_share_and_a_swap_waits_for_them():
    lock, events = WeightsLock(), []
    inside = threading.Barrier(3)

    def read(name):
        with lock.reading():
            inside.wait(timeout=5)          # both readers are in at once
            time.sleep(0.05)
            events.append(f"{name} done")

    readers = [threading.Thread(target=read, args=(n,)) for n in ("a", "b")]
    for thread in readers:
        thread.start()
    inside.wait(timeout=5)
    with lock.swapping():
        events.append("swap")
    for thread in readers:
        thread.join()
    assert events[-1] == "swap" and sorted(events[:2]) == ["a done", "b done"]
    assert lock.last_wait_seconds > 0.02 and lock.last_swap_seconds < lock.last_wait_seconds


def test_a_waiting_swap_holds_new_readers_back():
    lock, events = WeightsLock(), []
    first_in, swap_waiting = threading.Event(), threading.Event()

    def first_reader():
        with lock.reading():
            first_in.set()
            swap_waiting.wait(timeout=5)
            time.sleep(0.05)
            events.append("first reader")

    def swapper():
        first_in.wait(timeout=5)
        swap_waiting.set()
        with lock.swapping():
            events.append("swap")

    def late_reader():
        swap_waiting.wait(timeout=5)
        time.sleep(0.02)                    # arrives while the swap is waiting
        with lock.reading():
            events.append("late reader")

    threads = [threading.Thread(target=f) for f in (first_reader, swapper, late_reader)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=5)
    assert events == ["first reader", "swap", "late reader"]


def test_the_swap_owner_may_swap_again_and_read():
    lock = WeightsLock()
    with lock.swapping():
        with lock.swapping():
            with lock.reading():
                pass
    done = threading.Event()

    def reader():
        with lock.reading():
            done.set()

    thread = threading.Thread(target=reader)
    thread.start()
    thread.join(timeout=5)
    assert done.is_set()                    # the write side was fully released
