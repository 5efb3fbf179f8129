"""Serving while editing, on this CPU: the swap pause of commits, chat speed with and without
an apply running, and the apply step's seconds per fact by batch size.

    LIVEDIT_HOME=.livedit-test-home python -m benchmarks.serving --state-dir /tmp/serving-state \
        --out benchmarks/results/serving.json [--chat-sizes 1 8] [--cloze-sizes 1 8 32]

- swap pause: how long the served weights' write lock is held per commit (the only time no
  chat generates), over ``--commits`` commits (edits and their retractions, one at a time);
- chat: time to first token and tokens per second of streamed answers, idle and while a
  batch of cloze facts is being applied in another thread (as the scheduler does);
- apply: seconds per fact of one batch of each size through the apply job's steps (solve,
  guard, commit), for cloze facts (CounterFact) and chat
  facts (QAEdit questions), each batch in a fresh state.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import threading
import time
from pathlib import Path

from assistant.editing.editor import Editor
from assistant.model.chat import stream_answer
from assistant.model.loading import load_model
from benchmarks.common import common_arguments, configured, environment, load_slice, write_json
from updater.guard import Guard

QUESTIONS = ["What is the capital of France?", "Who wrote Romeo and Juliet?", "What do bees make?",
             "How many legs does a spider have?", "What is the largest planet?", "Who painted the Mona Lisa?"]
CLOZE, CHAT = ("counterfact", 500), ("qaedit", 500)        # slices away from the tuning and report ones


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def chat_speed(editor: Editor, tokens: int) -> list[dict]:
    """Time to first token and tokens per second of each question's streamed answer."""
    rows = []
    for question in QUESTIONS:
        started, first, pieces = time.perf_counter(), None, 0
        for _ in stream_answer(editor.model, editor.tokenizer, question, tokens, editor.system_prompt,
                               reading=editor.weights.reading):
            first = first or time.perf_counter()
            pieces += 1
        ended = time.perf_counter()
        rows.append({"ttft": first - started, "tokens": pieces,
                     "tokens_per_second": (pieces - 1) / (ended - first) if pieces > 1 else None})
    return rows


def summarise(rows: list[dict]) -> dict:
    rates = [r["tokens_per_second"] for r in rows if r["tokens_per_second"]]
    return {"ttft_median": statistics.median(r["ttft"] for r in rows),
            "tokens_per_second_median": statistics.median(rates), "answers": len(rows)}


def swap_pauses(editor: Editor, facts, commits: int) -> list[float]:
    pauses = []
    while len(pauses) < commits and facts:
        report = editor.apply([facts.pop(0)], batch_size=1)
        pauses.append(editor.weights.last_swap_seconds)
        if len(pauses) < commits:
            editor.retract(report.edit_ids[0])
            pauses.append(editor.weights.last_swap_seconds)
    return pauses


def chat_during_apply(editor: Editor, facts, tokens: int) -> dict:
    idle = chat_speed(editor, tokens)
    applying = threading.Thread(target=lambda: editor.apply(facts, batch_size=len(facts)))
    applying.start()
    busy = []
    while applying.is_alive():
        busy += chat_speed(editor, tokens)
    applying.join()
    return {"idle": summarise(idle), "during_apply": summarise(busy) if busy else None,
            "ratio_tokens_per_second": (summarise(busy)["tokens_per_second_median"]
                                        / summarise(idle)["tokens_per_second_median"]) if busy else None}


def apply_seconds(config, loaded, state_root: Path, kind: str, size: int) -> dict:
    """One batch through the apply job's steps: the candidate solved on the shadow, checked by
    the guard, committed (the queue's SQLite bookkeeping is left out: milliseconds)."""
    name, start = CLOZE if kind == "cloze" else CHAT
    facts = load_slice(config, name, start, size)
    with Editor.open(config, state_dir=state_root / f"{kind}-{size}", loaded=loaded, progress=False) as editor:
        guard = Guard.for_editor(editor, config)
        started = time.perf_counter()
        candidate = editor.solve_candidate(facts)
        solved = time.perf_counter()
        verdict = guard.check(editor, candidate, facts)
        checked = time.perf_counter()
        (editor.commit if verdict.ok else editor.discard)(candidate)
        ended = time.perf_counter()
        editor.swap_in(editor.W0)                   # the shared model goes back to W0 for the next state
    return {"kind": kind, "batch_size": size, "seconds": ended - started, "seconds_per_fact": (ended - started) / size,
            "solve_seconds": solved - started, "guard_seconds": checked - solved, "commit_seconds": ended - checked,
            "guard": "commit" if verdict.ok else "refuse", "guard_figures": verdict.figures.to_json(),
            "slice": {"data": name, "start": start, "count": size}}


def markdown(results: dict) -> str:
    """The README's tables from a results file."""
    pause, chat = results["swap_pause"], results["chat"]
    idle, busy = chat["idle"], chat["during_apply"] or {}
    lines = ["| measure | result | target |", "|---|---|---|",
             f"| swap pause, median / p95 over {pause['commits']} commits | {1000 * pause['median']:.1f} ms / "
             f"{1000 * pause['p95']:.1f} ms | <= 50 ms |",
             f"| chat time to first token, idle / during an apply | {1000 * idle['ttft_median']:.0f} ms / "
             f"{1000 * busy.get('ttft_median', float('nan')):.0f} ms | - |",
             f"| chat tokens/s, idle / during an apply | {idle['tokens_per_second_median']:.1f} / "
             f"{busy.get('tokens_per_second_median', float('nan')):.1f} ({100 * (chat['ratio_tokens_per_second'] or 0):.0f}%)"
             " | >= 60% of idle |",
             "", "| facts | batch | s/fact | solve s | guard s | commit s | guard | agreement loss per fact |",
             "|---|---|---|---|---|---|---|---|"]
    for row in results.get("apply", []):
        figures = row["guard_figures"]
        lines.append(f"| {row['kind']} | {row['batch_size']} | {row['seconds_per_fact']:.1f} | {row['solve_seconds']:.1f} | "
                     f"{row['guard_seconds']:.1f} | {row['commit_seconds']:.2f} | {row['guard']} | "
                     f"{figures['agreement_drop'] / row['batch_size']:.4f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common_arguments(parser)
    parser.add_argument("--commits", type=int, default=20)
    parser.add_argument("--chat-tokens", type=int, default=32)
    parser.add_argument("--cloze-sizes", type=int, nargs="*", default=[1, 8, 32])
    parser.add_argument("--chat-sizes", type=int, nargs="*", default=[1, 8, 32])
    parser.add_argument("--table-only", action="store_true", help="print the tables of an existing --out file")
    args = parser.parse_args()
    if args.table_only:
        print(markdown(json.loads(Path(args.out).read_text())))
        return
    config = configured(args.set)
    root = Path(args.state_dir)
    loaded = load_model(config)
    results = {"environment": environment(), "config": dataclasses.asdict(config), "overrides": args.set,
               "seed": "none: fixed slices, greedy answers"}
    with Editor.open(config, state_dir=root / "swaps", loaded=loaded, progress=False) as editor:
        pauses = swap_pauses(editor, load_slice(config, CLOZE[0], CLOZE[1] + 100, args.commits), args.commits)
        results["swap_pause"] = {"seconds": pauses, "median": statistics.median(pauses),
                                 "p95": percentile(pauses, 0.95), "commits": len(pauses)}
        print("swap pause", results["swap_pause"]["median"], results["swap_pause"]["p95"], flush=True)
        results["chat"] = chat_during_apply(editor, load_slice(config, CLOZE[0], CLOZE[1] + 200, 8),
                                            args.chat_tokens)
        print("chat", results["chat"], flush=True)
        editor.swap_in(editor.W0)                   # the shared model goes back to W0 for the next state
    results["apply"] = []
    for kind, sizes in (("cloze", args.cloze_sizes), ("chat", args.chat_sizes)):
        for size in sizes:
            results["apply"].append(apply_seconds(config, loaded, root, kind, size))
            print("apply", results["apply"][-1], flush=True)
            write_json(args.out, results)
    write_json(args.out, results)
    print(markdown(results))


if __name__ == "__main__":
    main()
