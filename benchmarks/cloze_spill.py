"""How far do cloze edits reach into the rest of the assistant? On a state of CounterFact
edits only (a `livedit bench` state; the gate acts on chat edits, so it changes nothing here
and the editor runs without it), this measures:

- the guard's cumulative figures against the unedited model: top-1 token agreement and KL on
  its probes (QAEdit locality questions and held-out WikiText; updater/guard.py);
- each edited layer's change ratio ||Delta k|| / ||W0 k||, the largest over a prompt's tokens,
  on the edited facts' own prompts and on unrelated chat questions (the locality questions of
  a QAEdit slice and general questions): could a gate tell them apart?

    LIVEDIT_HOME=.livedit-test-home python -m benchmarks.cloze_spill \
        --state-dir .livedit-test-home/bench/counterfact-d4s-b10-n300 --out benchmarks/results/cloze-spill-300.json
"""

from __future__ import annotations

import argparse
import dataclasses

import torch

from assistant.editing.editor import Editor
from assistant.editing.gate import gated
from assistant.evaluation.drift import measure_drift
from assistant.evaluation.locality import unrelated_questions
from assistant.model.architectures import get_module
from benchmarks.common import common_arguments, configured, environment, load_slice, write_json
from benchmarks.gated_locality import largest_ratios
from updater.guard import Guard


def quantiles(values: list[float]) -> dict:
    ordered = sorted(values)
    at = lambda q: ordered[min(int(q * len(ordered)), len(ordered) - 1)]  # noqa: E731
    return {"min": ordered[0], "q10": at(0.1), "median": at(0.5), "q90": at(0.9), "max": ordered[-1]}


def prompt_ratios(editor: Editor, modules, changes, prompts: list[str]) -> list[dict[int, float]]:
    """Per plain-text prompt, each layer's largest change ratio over its tokens."""
    rows = []
    for prompt in prompts:
        ratios: dict[int, list[float]] = {}
        with gated(modules, changes, threshold=0.0, ratios=ratios), torch.no_grad():
            editor.model(**editor.tokenizer(prompt, return_tensors="pt"))
        rows.append({layer: max(values) for layer, values in ratios.items()})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=50, help="edited facts whose prompts are measured (spread over the state)")
    parser.add_argument("--qaedit-start", type=int, default=100, help="QAEdit slice whose locality questions are used")
    parser.add_argument("--qaedit-count", type=int, default=16)
    parser.add_argument("--general-questions", type=int, default=50)
    common_arguments(parser)
    args = parser.parse_args()
    config = configured(args.set).replace("editing", gate=0.0)   # cloze edits only: the gate would act on nothing
    started_in = environment()
    with Editor.open(config, state_dir=args.state_dir) as editor:
        guard = Guard.for_editor(editor, config)
        drift = measure_drift(editor.model, guard.ref, editor.tokenizer.pad_token_id)
        active = [record.fact for record in editor.edits("active")]
        chosen = active[::max(1, len(active) // args.prompts)][:args.prompts]
        qaedit = load_slice(config, "qaedit", args.qaedit_start, args.qaedit_count)
        questions = unrelated_questions(qaedit, config.paths.shared_data_dir(), args.general_questions)
        current = editor.current_weights()
        layers = [layer for layer in editor.layers if not current[layer].equal(editor.W0[layer])]
        modules = {layer: get_module(editor.model, editor.names[layer]) for layer in layers}
        changes = {layer: current[layer] - editor.W0[layer] for layer in layers}
        edited = prompt_ratios(editor, modules, changes, [f.filled_prompt for f in chosen])
        unrelated = largest_ratios(editor, modules, changes, questions, config.chat.system_prompt)
    ratios = {kind: {layer: quantiles([row[layer] for row in rows]) for layer in layers}
              for kind, rows in (("edited_prompts", edited), ("unrelated_questions", unrelated))}
    print(f"{len(active)} edits: guard probe agreement {drift.agreement:.3f}, KL {drift.kl:.4f}")
    for layer in layers:
        e, u = ratios["edited_prompts"][layer], ratios["unrelated_questions"][layer]
        print(f"layer {layer}: edited prompts {e['min']:.3f}-{e['max']:.3f} (q10 {e['q10']:.3f}, median "
              f"{e['median']:.3f}); unrelated questions {u['min']:.3f}-{u['max']:.3f} (median {u['median']:.3f})")
    write_json(args.out, {
        "state_dir": args.state_dir, "active_edits": len(active), "config": dataclasses.asdict(config.editing),
        "guard": dataclasses.asdict(config.guard), "environment": started_in,
        "edited_prompts": len(chosen), "qaedit_locality": [args.qaedit_start, args.qaedit_count],
        "general_questions": args.general_questions,
        "probe_agreement": drift.agreement, "probe_kl": drift.kl, "change_ratios": ratios,
    })


if __name__ == "__main__":
    main()
