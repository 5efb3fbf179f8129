"""The guard's figures on the default model, to set its bounds: a normal stream of corrections
(CounterFact cloze facts and QAEdit chat facts, committed batch by batch) against harmful
batches (edits of very common words, which change the keys of nearly every input).

    LIVEDIT_HOME=.livedit-test-home python -m benchmarks.guard_bounds --state-dir /tmp/guard-state \
        --out benchmarks/results/guard-bounds.json

Every batch is solved as a candidate and measured by the guard before it is committed; the
harmful batches are measured on top of the normal stream and discarded. The bounds in
config.toml should commit every normal batch and stop every harmful one.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

from assistant.config import Config
from assistant.editing.editor import Editor
from assistant.facts import make_fact
from benchmarks.common import common_arguments, load_slice, started, write_json
from updater.guard import Guard

CLOZE = ("counterfact", 0, 32)          # records 0-31 of CounterFact: the speed benchmark's slice
CHAT = ("qaedit", 100, 8)               # records 100-107 of QAEdit: the tuning slice
CHAT_ALONE = ("qaedit", 108, 1)         # a chat correction that arrives alone (the tuning slice)
BATCH = 8

# Corrections that nobody should make: their "subjects" are the commonest words, so the edit's
# key is close to the key of nearly every token of every answer.
HARMFUL = [
    [make_fact(id=f"harm-{word}", subject=word, prompt="{} answer is", target_new="banana")
     for word in ("the", "The", "is", "a", "of", "and", "to", "in")],
    [make_fact(id="harm-I", subject="I", prompt="{} think the answer is", target_new="Zanzibar")],
]


def measure(editor: Editor, guard: Guard, facts, commit: bool) -> dict:
    started = time.perf_counter()
    candidate = editor.solve_candidate(facts)
    verdict = guard.check(editor, candidate, facts)
    row = {"facts": [f.id for f in facts], "verdict": "commit" if verdict.ok else "refuse",
           "reasons": list(verdict.reasons), "figures": verdict.figures.to_json(),
           "seconds": time.perf_counter() - started}
    (editor.commit if commit else editor.discard)(candidate)
    return row


def run(config: Config, state_dir: str) -> dict:
    shared = {"cloze": load_slice(config, *CLOZE), "chat": load_slice(config, *CHAT),
              "chat alone": load_slice(config, *CHAT_ALONE)}
    with Editor.open(config, state_dir=state_dir) as editor:
        if editor.generation:
            raise SystemExit(f"{state_dir} already holds edits; give a fresh --state-dir")
        guard = Guard.for_editor(editor, config)
        normal = []
        for kind, facts in shared.items():
            for start in range(0, len(facts), BATCH):
                normal.append({"kind": kind, **measure(editor, guard, facts[start:start + BATCH], commit=True)})
                print(kind, normal[-1]["figures"], flush=True)
        harmful = [measure(editor, guard, batch, commit=False) for batch in HARMFUL]
        for row in harmful:
            print("harmful", row["figures"], flush=True)
    return {"normal": normal, "harmful": harmful}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common_arguments(parser)
    args, config, started_in = started(parser)
    results = run(config, args.state_dir)
    normal, harmful = results["normal"], results["harmful"]
    summary = {
        "normal_worst": {"max_l1_growth": max(r["figures"]["max_l1_growth"] for r in normal),
                         "efficacy": min(r["figures"]["efficacy"] for r in normal),
                         "agreement": min(r["figures"]["agreement"] for r in normal),
                         "kl": max(r["figures"]["kl"] for r in normal)},
        "harmful_mildest": {"agreement": max(r["figures"]["agreement"] for r in harmful),
                            "kl": min(r["figures"]["kl"] for r in harmful)},
        "normal_committed_by_config": sum(r["verdict"] == "commit" for r in normal),
        "harmful_refused_by_config": sum(r["verdict"] == "refuse" for r in harmful),
    }
    write_json(args.out, {"environment": started_in, "config": dataclasses.asdict(config), "overrides": args.set,
                          "slices": {"cloze": CLOZE, "chat": CHAT, "chat alone": CHAT_ALONE}, "batch_size": BATCH,
                          "seed": "none: fixed slices, greedy answers", "summary": summary, **results})
    print(summary)


if __name__ == "__main__":
    main()
