"""How the target optimisation of a batch of chat facts converges: each fact's P(target) in
its hardest form at every step, the step at which it passes the stop probability, and the
seconds the optimisation takes. It runs the engine's first optimisation of a batch (the rows
as `BatchSolver.rows` builds them, on the unedited model), so settings that change the number of
steps (``--set editing.chat_learning_rate=...``) can be compared on a tuning slice.

    python -m benchmarks.target_convergence --start 100 --count 16 --state-dir DIR \
        --out benchmarks/results/target-convergence-chat-100-115.json
"""

from __future__ import annotations

import argparse
import dataclasses
import time

from assistant.editing.batch_solve import BatchSolver
from assistant.editing.keys import average_by_fact, keys_and_hidden
from assistant.editing.targets import TargetSettings, optimise_targets
from assistant.model.architectures import get_module
from benchmarks.common import one_batch_arguments, open_one_batch, write_json


def passed_at_step(trajectory: list[list[float]], stop_probability: float) -> list[int | None]:
    """Per fact, the first step (from 1) at which its P reached ``stop_probability``; None
    when it never did. ``trajectory[step - 1][fact]`` is the fact's P at that step."""
    facts = len(trajectory[0]) if trajectory else 0
    return [next((step for step, row in enumerate(trajectory, 1) if row[fact] >= stop_probability), None)
            for fact in range(facts)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    one_batch_arguments(parser)
    args = parser.parse_args()
    config, started_in, editor, facts, kind = open_one_batch(args)
    key_batch, train, kl = BatchSolver(editor).rows(facts, kind)
    shadow, n = editor.shadow, len(facts)
    block = get_module(shadow, editor.arch.block_module.format(kind.layers[-1]))
    first = get_module(shadow, editor.names[kind.layers[0]])
    _, hidden, owner = keys_and_hidden(shadow, key_batch, n, first, block, kind.key_mode == "per_form")
    h_norm = average_by_fact(hidden.norm(dim=0)[:, None], owner, n)[:, 0].float()
    settings = TargetSettings.from_editing(kind)
    trajectory: list[list[float]] = []
    started = time.perf_counter()
    found = optimise_targets(shadow, train, kl, block, h_norm, settings, editor.tokenizer.pad_token_id,
                             on_step=lambda step, probability: trajectory.append(probability.tolist()))
    seconds = time.perf_counter() - started
    passed_at = passed_at_step(trajectory, settings.stop_probability)
    print(f"{n} facts: {found.steps} steps in {seconds:.1f} s, {sum(s is not None for s in passed_at)} passed "
          f"P {settings.stop_probability}, lowest P {float(found.probability.min()):.3f}; passed at {passed_at}")
    write_json(args.out, {"data": args.data, "start": args.start, "count": n, "rows": len(train.rows),
                          "settings": dataclasses.asdict(settings), "steps": found.steps, "seconds": seconds,
                          "passed_at_step": passed_at, "final_probability": found.probability.tolist(),
                          "probability_by_step": trajectory, "environment": started_in,
                          "config": dataclasses.asdict(config.editing)})


if __name__ == "__main__":
    main()
