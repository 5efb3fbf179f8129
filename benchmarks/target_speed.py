"""What one step of the target optimisation costs, with the suffix's blocks up to the
delta's computed at every step or run once and replayed (`prefix_cache.split_rows`'s
``through``). A step is what `optimise_targets` does for a batch: the forward pass of every
training row with the delta at its subject, the target NLL, and the backward pass.

    python -m benchmarks.target_speed --start 100 --count 16 --state-dir DIR \
        --out benchmarks/results/target-speed-chat-100-115.json

The facts are QAEdit chat facts with their rows as the engine builds them (cloze forms,
question forms, lead-ins). The two ways alternate, ``--repeats`` steps each, and the medians
are reported with their ratio.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch

from assistant.editing.editor import Editor
from assistant.editing.lead_ins import answer_lead_ins
from assistant.editing.prefix_cache import split_rows, suffix_hidden
from assistant.editing.prompts import collate, fact_rows
from assistant.editing.targets import add_delta_at, delta_sites
from assistant.model.architectures import get_module
from assistant.model.hooks import edit_output
from benchmarks.common import common_arguments, configured, environment, load_slice, write_json


def one_step(model, split, block) -> float:
    """Seconds of one forward and backward pass of the split's rows with a delta at each subject."""
    rows = split.source
    delta = torch.zeros(int(rows.fact.max()) + 1, model.config.hidden_size, requires_grad=True)
    started = time.perf_counter()
    with edit_output(block, add_delta_at(delta_sites(rows, from_subject=True), delta)):
        hidden = suffix_hidden(model, split)
    picks = [(i, t - 1 - row.subject_pos, row.ids[t]) for i, row in enumerate(rows.rows)
             for t in range(len(row.ids) - row.target_len, len(row.ids))]
    index, position, token = (torch.tensor(column) for column in zip(*picks))
    logprobs = torch.log_softmax(model.get_output_embeddings()(hidden[index, position]).float(), dim=-1)
    (-logprobs.gather(1, token[:, None]).sum()).backward()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default="qaedit")
    parser.add_argument("--start", type=int, default=100)
    parser.add_argument("--count", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    common_arguments(parser)
    args = parser.parse_args()
    config = configured(args.set)
    started_in = environment()
    editor = Editor.open(config, state_dir=args.state_dir)
    facts = load_slice(config, args.data, args.start, args.count)
    kind = editor.editing.for_kind(bool(facts[0].question))
    tok, shadow = editor.tokenizer, editor.shadow
    lead_ins = (answer_lead_ins(shadow, tok, facts, editor.system_prompt, kind.lead_in_tokens)
                if kind.lead_in_tokens else [[] for _ in facts])
    rows = [row for i, fact in enumerate(facts) for row in fact_rows(i, fact, tok, editor.prompts, True, lead_ins[i])]
    batch = collate(rows, tok.pad_token_id, torch.device("cpu"))
    block = get_module(shadow, editor.arch.block_module.format(kind.layers[-1]))
    splits = {"computed": split_rows(shadow, batch, tok.pad_token_id),
              "replayed": split_rows(shadow, batch, tok.pad_token_id, through=block)}
    seconds = {name: [] for name in splits}
    one_step(shadow, splits["computed"], block)                 # warm-up
    for _ in range(args.repeats):
        for name, split in splits.items():
            seconds[name].append(one_step(shadow, split, block))
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    suffix_tokens = int((batch.lengths - batch.subject_pos).sum())
    print(f"{len(facts)} facts, {len(rows)} rows, {suffix_tokens} suffix tokens, delta after block "
          f"{kind.layers[-1]}: step {medians['computed']:.2f} s computed, {medians['replayed']:.2f} s replayed "
          f"(ratio {medians['replayed'] / medians['computed']:.3f})")
    write_json(args.out, {"data": args.data, "start": args.start, "count": len(facts), "rows": len(rows),
                          "suffix_tokens": suffix_tokens, "delta_block": kind.layers[-1],
                          "repeats": args.repeats, "seconds": seconds, "median_seconds": medians,
                          "ratio": medians["replayed"] / medians["computed"], "environment": started_in,
                          "config": dataclasses.asdict(config.editing)})


if __name__ == "__main__":
    main()
