"""Crash safety: a real `livedit serve` process, applying approved items on its schedule, is
killed with SIGKILL at several points of the apply. After each kill the state is checked as
a restart finds it: the model is the state before a batch or after it, the rebuilt weights
are bit-identical to W0 + the committed sums solved afresh, items left applying are settled
(applied if their commit landed, else approved again), and no approved correction is lost."""

from __future__ import annotations

import signal
import sqlite3
import time

import torch
from test_serve import _free_port, start_serving, write_tiny_config

from assistant.config import load_config
from assistant.editing.editor import Editor
from assistant.state.ledger import read_status
from updater.apply import settle_applying
from updater.queue import EditQueue

WHO = "ada"
ITEMS = 8


def serving_config(tmp_path, make_config) -> str:
    """The tiny model, batches of two, the apply job every 0.12 s, no guard (its figures are
    tested elsewhere), the other jobs off."""
    path = tmp_path / "config.toml"
    write_tiny_config(path, lambda model: make_config(model, batch_size=2))
    with path.open("a", encoding="utf-8") as file:
        file.write("[guard]\nenabled = false\n"
                   "[scheduler]\napply_minutes = 0.002\ndetect_minutes = 0.0\nverify_minutes = 0.0\n")
    return str(path)


def states(queue_file) -> dict[int, str]:
    with sqlite3.connect(queue_file) as conn:
        return dict(conn.execute("SELECT id, state FROM items ORDER BY id"))


def kill_when(process, queue_file, applied_at_least: int, extra_seconds: float, timeout: float = 120) -> None:
    """SIGKILL once a batch is in flight and ``applied_at_least`` items are applied, after ``extra_seconds``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = states(queue_file) if queue_file.exists() else {}
        if "applying" in now.values() and sum(s == "applied" for s in now.values()) >= applied_at_least:
            time.sleep(extra_seconds)
            process.send_signal(signal.SIGKILL)
            process.wait(30)
            return
        if process.poll() is not None:
            raise AssertionError(f"livedit serve ended early: {process.stdout.read()}")
        time.sleep(0.01)
    raise AssertionError(f"no batch was applying within {timeout} s: {states(queue_file)}")


def check_after_restart(config_file: str, approved: set[int], generations_seen: list[int],
                        settled: dict[int, str] | None = None) -> dict[int, str]:
    config = load_config(config_file)
    with Editor.open(config, progress=False) as editor, EditQueue.open(config) as queue:
        status = read_status(editor.sums_dir.parent)
        generation = editor.generation
        assert status.generation == generation >= generations_seen[-1]
        served = editor.current_weights()
        for layer in editor.layers:                                 # a fresh solve of the committed sums
            fresh = (editor.W0[layer].double() + editor.sums.offset(layer, editor.prior(layer),
                                                                     config.editing.mom2_weight)).to(served[layer].dtype)
            assert torch.equal(served[layer], fresh), f"layer {layer} is not W0 + the committed sums"
        kept = sorted(p.name for p in editor.sums_dir.iterdir()) if editor.sums_dir.exists() else []
        assert kept == ([f"gen-{generation:06d}.safetensors"] if generation else [])   # no stray half-written file
        (settled if settled is not None else {}).update(settle_applying(editor, queue, who="restart"))
        now = {item.id: item.state for item in queue.list()}
        assert set(now) == approved                                 # nothing lost, nothing added
        assert set(now.values()) <= {"approved", "applied"}
        applied = {item.fact_id: item.edit_id for item in queue.list(state="applied")}
        active = {record.fact.id: record.id for record in editor.edits("active")}
        assert applied == active                                    # an item is applied iff its edit is in the model
        assert len(active) == 2 * generation                        # every commit is one whole batch of two
    generations_seen.append(generation)
    return now


def test_sigkill_at_several_points_of_an_apply_loses_nothing(tmp_path, make_config, new_fact, monkeypatch):
    home, state = tmp_path / "home", tmp_path / "state"
    monkeypatch.setenv("LIVEDIT_HOME", str(home))
    monkeypatch.setenv("LIVEDIT_STATE_DIR", str(state))
    config_file = serving_config(tmp_path, make_config)
    with EditQueue.open(load_config(config_file)) as queue:
        approved = set()
        for index in range(ITEMS):
            fact = new_fact(index)
            item = queue.propose(fact_id=fact.id, subject=fact.subject, prompt=fact.prompt,
                                 new_object=fact.target_new, origin="curator", who=WHO).item
            approved.add(queue.approve(item.id, who=WHO).id)
    queue_file = home / "queue.sqlite"
    generations, kills, settled = [0], [(0, 0.0), (0, 0.05), (1, 0.2)], {}
    for applied_at_least, extra in kills:
        done = sum(s == "applied" for s in states(queue_file).values())
        process = start_serving(config_file, _free_port())
        try:
            kill_when(process, queue_file, done + applied_at_least, extra)
        finally:
            if process.poll() is None:
                process.kill()
        check_after_restart(config_file, approved, generations, settled)
    assert "approved" in settled.values()             # a kill landed inside a batch, which was rolled back
    assert generations[-1] > 0                         # and others after commits, which were kept

    process = start_serving(config_file, _free_port())              # SIGTERM mid-apply: the batch finishes
    try:
        deadline = time.monotonic() + 120
        while "applying" not in states(queue_file).values() and time.monotonic() < deadline:
            time.sleep(0.01)
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0 and "livedit: stopped" in output, output
    assert "applying" not in states(queue_file).values()            # a clean stop leaves nothing half done

    process = start_serving(config_file, _free_port())              # the last restart finishes the queue
    try:
        deadline = time.monotonic() + 120
        while set(states(queue_file).values()) != {"applied"} and time.monotonic() < deadline:
            time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        process.wait(60)
    finally:
        if process.poll() is None:
            process.kill()
    final = check_after_restart(config_file, approved, generations)
    assert set(final.values()) == {"applied"} and generations[-1] == ITEMS // 2
