"""What one step of the target optimisation costs, with the suffix's blocks up to the
delta's computed at every step or run once and replayed (`prefix_cache.split_rows`'s
``through``), and replayed with the rows in passes of similar length
(`prefix_cache.width_buckets`), as the engine runs them. A step is what `optimise_targets`
does for a batch: the forward pass of every training row with the delta at its subject, the
target NLL, and the backward pass.

    python -m benchmarks.target_speed --start 100 --count 16 --state-dir DIR \
        --out benchmarks/results/target-speed-chat-100-115.json

The facts are QAEdit chat facts with their rows as the engine builds them (cloze forms,
question forms, lead-ins). The three ways alternate, ``--repeats`` steps each, and the medians
are reported with their ratios.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch

from assistant.editing.batch_solve import BatchSolver
from assistant.editing.prefix_cache import split_rows, suffix_hidden, width_buckets
from assistant.editing.targets import add_delta_at, delta_sites
from assistant.model.architectures import get_module
from assistant.model.hooks import edit_output
from benchmarks.common import one_batch_arguments, open_one_batch, write_json


def one_step(model, splits, block) -> float:
    """Seconds of the forward passes of the splits' rows with a delta at each subject and one
    backward pass."""
    delta = torch.zeros(max(int(split.source.fact.max()) for split in splits) + 1, model.config.hidden_size,
                        requires_grad=True)
    started = time.perf_counter()
    loss = 0.0
    for split in splits:
        rows = split.source
        with edit_output(block, add_delta_at(delta_sites(rows, from_subject=True), delta)):
            hidden = suffix_hidden(model, split)
        picks = [(i, t - 1 - row.subject_pos, row.ids[t]) for i, row in enumerate(rows.rows)
                 for t in range(len(row.ids) - row.target_len, len(row.ids))]
        index, position, token = (torch.tensor(column) for column in zip(*picks))
        logprobs = torch.log_softmax(model.get_output_embeddings()(hidden[index, position]).float(), dim=-1)
        loss = loss - logprobs.gather(1, token[:, None]).sum()
    loss.backward()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    one_batch_arguments(parser)
    args = parser.parse_args()
    config, started_in, editor, facts, kind = open_one_batch(args)
    tok, shadow = editor.tokenizer, editor.shadow
    _, batch, _ = BatchSolver(editor).rows(facts, kind)
    rows = batch.rows
    block = get_module(shadow, editor.arch.block_module.format(kind.layers[-1]))
    buckets = width_buckets(batch)
    splits = {"computed": [split_rows(shadow, batch, tok.pad_token_id)],
              "replayed": [split_rows(shadow, batch, tok.pad_token_id, through=block)],
              "replayed_by_width": [split_rows(shadow, batch.only_rows(bucket), tok.pad_token_id, through=block)
                                    for bucket in buckets]}
    seconds = {name: [] for name in splits}
    one_step(shadow, splits["computed"], block)                 # warm-up
    for _ in range(args.repeats):
        for name, split in splits.items():
            seconds[name].append(one_step(shadow, split, block))
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    suffix_lengths = batch.lengths - batch.subject_pos
    suffix_tokens = int(suffix_lengths.sum())
    padded = {"one_pass": len(rows) * int(suffix_lengths.max()),
              "by_width": sum(int(b.sum()) * int(suffix_lengths[b].max()) for b in buckets)}
    ratios = {"replayed/computed": medians["replayed"] / medians["computed"],
              "replayed_by_width/replayed": medians["replayed_by_width"] / medians["replayed"]}
    print(f"{len(facts)} facts, {len(rows)} rows, {suffix_tokens} suffix tokens ({padded['one_pass']} padded in one "
          f"pass, {padded['by_width']} in {len(buckets)} by width), delta after block {kind.layers[-1]}: step "
          + ", ".join(f"{name} {value:.2f} s" for name, value in medians.items())
          + " (" + ", ".join(f"{name} {value:.3f}" for name, value in ratios.items()) + ")")
    write_json(args.out, {"data": args.data, "start": args.start, "count": len(facts), "rows": len(rows),
                          "suffix_tokens": suffix_tokens, "padded_suffix_tokens": padded, "passes_by_width": len(buckets),
                          "delta_block": kind.layers[-1],
                          "repeats": args.repeats, "seconds": seconds, "median_seconds": medians,
                          "ratios": ratios, "environment": started_in,
                          "config": dataclasses.asdict(config.editing)})


if __name__ == "__main__":
    main()
