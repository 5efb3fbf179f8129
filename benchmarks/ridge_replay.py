"""What would another chat ridge have given? Per layer of a d4s state of chat edits, the
state's own sums are solved again against ``ridged(C, ridge)`` (``[editing] chat_ridge``) for
each ridge: the L1 growth of W0 + Delta, and the share of each chat edit's stored residual
that Delta realises at its stored key (median and least over the edits).

This is an estimate, not a new run: the residuals were measured and refined with the run's own
ridge, and a real run raises the residuals of the facts that fall behind. It reads the state only,
records the ids of the chat facts it replays (the data slice), and samples nothing (no seed).

    LIVEDIT_HOME=.livedit-test-home python -m benchmarks.ridge_replay --state-dir DIR \\
        --ridges 0,0.5,1,2 --out benchmarks/results/ridge-replay-NAME.json
"""

from __future__ import annotations

import argparse
import dataclasses

import torch

from assistant.editing.closed_form import ridged
from assistant.editing.editor import Editor
from assistant.state.l1 import layer_norms
from assistant.state.sums import edited_weight
from benchmarks.common import common_arguments, started, write_json


def realised_shares(delta: torch.Tensor, K: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
    """(n,) the share of each residual column r_j that Delta realises at its key k_j: the
    projection (Delta k_j) . r_j / ||r_j||^2 (1: all of it)."""
    return ((delta @ K) * R).sum(dim=0) / (R * R).sum(dim=0)


def replay_layer(editor: Editor, layer: int, ridge: float) -> dict:
    """L1 growth and realised shares of ``layer`` solved from the state's sums against C with ``ridge``."""
    sums = editor.sums
    delta = sums.offset(layer, ridged(editor.C[layer].double(), ridge), editor.editing.layer_lambda(layer))
    shares = realised_shares(delta, sums.tensors[f"GK.{layer}"], sums.tensors[f"GR.{layer}"])
    W = edited_weight(editor.W0[layer], delta)
    return {"ridge": ridge, "l1_growth": layer_norms(layer, W, editor.W0[layer]).growth,
            "realised_median": float(shares.median()), "realised_least": float(shares.min())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ridges", default="0,0.5,1,2", help="comma-separated ridges (shares of median(diag C))")
    common_arguments(parser)
    args, config, started_in = started(parser)
    ridges = [float(r) for r in args.ridges.split(",")]
    with Editor.open(config, state_dir=args.state_dir, progress=False) as editor:
        if editor.method != "d4s":
            raise SystemExit(f"the ridge replay solves d4s sums; this state uses {editor.method}")
        layers = [layer for layer in editor.layers if editor.sums.tensors[f"GK.{layer}"].shape[1]]
        if not layers:
            raise SystemExit(f"state {args.state_dir} holds no chat edit to replay")
        replays = {}
        for layer in layers:
            replays[str(layer)] = [replay_layer(editor, layer, ridge) for ridge in ridges]
            print(f"layer {layer}: " + " | ".join(
                f"ridge {row['ridge']}: L1 {100 * row['l1_growth']:.2f}%, realised {row['realised_median']:.3f}"
                for row in replays[str(layer)]), flush=True)
        chat_facts = [record.fact.id for record in editor.edits("active") if record.fact.question]
    write_json(args.out, {"state_dir": args.state_dir, "chat_edits": len(chat_facts), "chat_facts": chat_facts,
                          "seed": None, "ridges": ridges,
                          "layers": replays, "config": dataclasses.asdict(config.editing),
                          "environment": started_in})


if __name__ == "__main__":
    main()
