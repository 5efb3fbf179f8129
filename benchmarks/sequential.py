"""Sequential editing: N CounterFact edits, one batch after another, with every edit so far
evaluated every K edits (efficacy, paraphrase, neighbourhood), plus the L1 growth per
layer and the seconds per edit. Resumable: run it again with the same arguments.

    python -m benchmarks.sequential --method d4s --count 300 --every 50 --batch-size 1 \
        --state-dir /tmp/seq-d4s --out benchmarks/results/sequential-d4s.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from pathlib import Path

from tqdm.auto import tqdm

from assistant.engine import open_editor
from assistant.metrics import counterfact_scores
from benchmarks.common import common_arguments, configured, environment, load_slice, write_json

log = logging.getLogger("benchmarks.sequential")


def checkpoint(editor, facts, edits_done: int, seconds: float) -> dict:
    scores = counterfact_scores(editor.model, editor.tokenizer, facts[:edits_done])
    return {"edits": edits_done, **dataclasses.asdict(scores),
            "seconds_per_edit": seconds / edits_done if edits_done else None,
            "l1_growth": {str(n.layer): n.growth for n in editor.norms()},
            "l1": {str(n.layer): n.mean_abs for n in editor.norms()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--method", required=True, choices=["d4s", "memit-seq"])
    parser.add_argument("--start", type=int, default=0, help="first CounterFact record")
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=1)
    common_arguments(parser)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    config = configured(args.set)
    facts = load_slice(config, "counterfact", args.start, args.count)
    editor = open_editor(config, state_dir=args.state_dir, method=args.method, progress=False)
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else None
    done = len(editor.ledger.edits())
    if results is None or done == 0:
        unedited = counterfact_scores(editor.model, editor.tokenizer, facts)
        results = {"method": args.method, "data": f"counterfact[{args.start}:{args.start + args.count}]",
                   "batch_size": args.batch_size, "config": dataclasses.asdict(config.editing),
                   "environment": environment(), "unedited": dataclasses.asdict(unedited),
                   "edit_seconds": 0.0, "checkpoints": []}
    bar = tqdm(total=len(facts), initial=done, desc=args.method, unit="edit")
    while done < len(facts):
        step = min(args.every - done % args.every, len(facts) - done)
        started = time.perf_counter()
        editor.apply(facts[done:done + step], batch_size=args.batch_size, progress=bar.update)
        results["edit_seconds"] += time.perf_counter() - started
        done += step
        if done % args.every == 0 or done == len(facts):
            results["checkpoints"].append(checkpoint(editor, facts, done, results["edit_seconds"]))
            write_json(out, results)
            log.info("%s after %d edits: %s", args.method, done, results["checkpoints"][-1])
    bar.close()


if __name__ == "__main__":
    main()
