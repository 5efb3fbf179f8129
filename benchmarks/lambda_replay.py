"""What would another lambda have given? Replays a d4s run's ledger: every edit's stored
per-layer (k, r) is summed again and solved with other lambdas, W = W0 + S (lambda C + T)^-1,
then the edits are scored (CounterFact scores, or chat efficacy for QAEdit questions)
and the L1 growth per layer is measured.

This is an estimate, not a new run: the residuals were measured on the model as edited with
the run's own lambda. It shows which lambda is worth a real sequential run.

    python -m benchmarks.lambda_replay --state-dir STATE --edits 300 --lambdas 500,1000,2000 \
        --out benchmarks/results/lambda-replay.json
"""

from __future__ import annotations

import argparse
import dataclasses

import torch

from assistant.editing.editor import Editor
from assistant.state.l1 import layer_norms
from assistant.evaluation.metrics import chat_scores, counterfact_scores
from assistant.state.sums import EditSums, edited_weight
from benchmarks.common import configured, environment, write_json


def replay(editor, edits, lam: float) -> dict:
    sums = EditSums.empty("d4s", {layer: tuple(editor.W0[layer].shape) for layer in editor.layers})
    for record in edits:
        for layer, (K, R) in editor.vectors(record.id).items():
            sums.add(layer, K, R)
    factors = editor.editing.layer_mom2_factors          # each layer keeps its factor on the replayed lambda
    weights = {layer: edited_weight(editor.W0[layer], sums.offset(layer, editor.prior(layer),
                                                                  lam * factors.get(layer, 1.0)))
               for layer in editor.layers}
    editor.swap_in(weights)
    facts = [record.fact for record in edits]
    if all(f.target_true for f in facts):
        scores = dataclasses.asdict(counterfact_scores(editor.model, editor.tokenizer, facts))
    else:                                    # QAEdit questions: chat efficacy by greedy answers
        chat = chat_scores(editor.model, editor.tokenizer, facts, system_prompt=editor.system_prompt)
        scores = {"chat_efficacy": chat.efficacy, "chat_paraphrase": chat.paraphrase}
    growth = {str(layer): layer_norms(layer, W, editor.W0[layer]).growth for layer, W in weights.items()}
    return {"lambda": lam, **scores, "l1_growth": growth, "max_l1_growth": max(growth.values())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--state-dir", required=True, help="the state directory of a d4s run")
    parser.add_argument("--edits", type=int, required=True, help="replay the first N active edits")
    parser.add_argument("--lambdas", required=True, help="comma-separated lambdas")
    parser.add_argument("--out", required=True)
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = parser.parse_args()
    editor = Editor.open(configured(args.set), state_dir=args.state_dir, progress=False)
    edits = editor.edits("active")[:args.edits]
    results = {"state": args.state_dir, "edits": len(edits), "run_lambda": editor.editing.mom2_weight,
               "layer_mom2_factors": editor.editing.layer_mom2_factors,   # each replayed lambda keeps them
               "environment": environment(), "replays": []}
    with torch.no_grad():
        for lam in (float(x) for x in args.lambdas.split(",")):
            results["replays"].append(replay(editor, edits, lam))
            print(results["replays"][-1], flush=True)
            write_json(args.out, results)


if __name__ == "__main__":
    main()
