"""Do cloze edits pass the gate? CounterFact facts edited in fresh states with the defaults
and each given variant (the editor's own gate on, as served), then scored as served: the new
object preferred to the true one on the prompt and its first paraphrase (efficacy,
paraphrase), the true object kept on two neighbourhood prompts per fact, and each layer's L1
growth. When the gate acted on every edit's change, a cloze edit's change at the subject was
mostly below its threshold without refinement (RESULTS 10); the gate now acts on chat edits
only, and this script shows cloze edits as served all the same.

    LIVEDIT_HOME=.livedit-test-home python -m benchmarks.cloze_gate --start 1000 --count 30 \
        --variant editing.refine_rounds=0 --state-dir /tmp/cloze-gate --out benchmarks/results/cloze-gate-1000-1029.json
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

from assistant.config import with_overrides
from assistant.editing.editor import Editor
from assistant.evaluation.metrics import completion_nll
from benchmarks.common import common_arguments, configured, environment, load_slice, write_json


def preferred(model, tokenizer, pairs: list[tuple[str, str, str]]) -> dict:
    """How many (prompt, wanted, other) give ``wanted`` the lower NLL."""
    prompts, wanted, other = (list(column) for column in zip(*pairs))
    wins = completion_nll(model, tokenizer, prompts, wanted) < completion_nll(model, tokenizer, prompts, other)
    return {"count": int(wins.sum()), "of": len(pairs)}


def scored(editor: Editor, facts) -> dict:
    model, tok = editor.model, editor.tokenizer
    return {
        "efficacy": preferred(model, tok, [(f.filled_prompt, f.target_new, f.target_true) for f in facts]),
        "paraphrase": preferred(model, tok, [(p, f.target_new, f.target_true) for f in facts for p in f.paraphrases[:1]]),
        "neighbourhood": preferred(model, tok, [(p, f.target_true, f.target_new) for f in facts
                                                for p, _ in f.neighborhood[:2]]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--start", type=int, default=1000)
    parser.add_argument("--count", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--variant", action="append", default=[],
                        help="SECTION.KEY=VALUE overrides of one more row, beside the defaults (repeatable)")
    common_arguments(parser)
    args = parser.parse_args()
    config = configured(args.set)
    started_in = environment()
    facts = load_slice(config, "counterfact", args.start, args.count)
    rows = []
    for index, variant in enumerate([None, *args.variant]):
        chosen = with_overrides(config, [variant] if variant else [])
        state = Path(args.state_dir) / f"row-{index}"            # one fresh state per row
        if state.exists():
            raise SystemExit(f"{state} exists; give a fresh --state-dir")
        with Editor.open(chosen, state_dir=state, progress=False) as editor:
            before = scored(editor, facts) if not rows else rows[0]["before"]
            started = time.perf_counter()
            editor.apply(facts, batch_size=args.batch_size)
            seconds = time.perf_counter() - started
            rows.append({"variant": variant or "defaults", "before": before, "after": scored(editor, facts),
                         "l1_growth": {n.layer: n.growth for n in editor.norms()},
                         "seconds_per_edit": seconds / len(facts)})
        print(rows[-1]["variant"], rows[-1]["after"], flush=True)
    write_json(args.out, {"data": "counterfact", "start": args.start, "count": len(facts), "batch_size": args.batch_size,
                          "config": dataclasses.asdict(config), "overrides": args.set, "environment": started_in,
                          "seed": "none: fixed slice, NLL comparisons", "rows": rows})


if __name__ == "__main__":
    main()
