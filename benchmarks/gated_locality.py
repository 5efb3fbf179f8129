"""Locality candidate: a gate on the edited layers' change (assistant/editing/gate.py).
Edits QAEdit questions in one model (or reuses a state that already holds them), records the
change ratio ||Delta k|| / ||W0 k|| on the edited questions, their rephrasings and unrelated
questions, then scores answers, rephrasings and locality with the gate at each threshold
(no gate first), and with the gate edit by edit at each of ``--edit-thresholds``
(``gate.EditColumns``: each edit's term kept only where it alone is large). The editor
itself runs without its gate ([editing] gate = 0 whatever the config says), so each row
applies one gate only; a state made elsewhere (with its gate on) can be replayed this way.

    LIVEDIT_HOME=.livedit-test-home python -m benchmarks.gated_locality --start 100 --count 16 \
        --set editing.refine_rounds=0 --thresholds 0.25,0.4,0.55 --state-dir /tmp/gated \
        --out benchmarks/results/gated-locality-cpu-tune-100-115.json
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import statistics

import torch

from assistant.editing.editor import Editor
from assistant.editing.gate import EditColumns, gated
from assistant.evaluation.locality import locality_reference, measure_locality, unrelated_questions
from assistant.evaluation.metrics import chat_scores
from assistant.model.architectures import get_module
from assistant.model.chat import answers
from benchmarks.common import configured, environment, load_slice, one_batch_arguments, write_json


def largest_ratios(editor: Editor, modules, changes, questions: list[str], system: str) -> list[dict[int, float]]:
    """Per question, each layer's largest change ratio over the prompt's tokens (of one edit's term for EditColumns)."""
    rows = []
    for question in questions:
        ratios: dict[int, list[float]] = {}
        with gated(modules, changes, threshold=0.0, ratios=ratios):
            answers(editor.model, editor.tokenizer, [question], 1, system)
        rows.append({layer: max(values) for layer, values in ratios.items()})
    return rows


def edit_columns(editor: Editor, layers: list[int], changes: dict[int, torch.Tensor]) -> dict[int, EditColumns]:
    """Per layer the chat edits' columns (``EditSums.gated_columns``: the change = R M^T);
    refused unless that is the whole change (a d4s state of chat edits alone)."""
    columns = {}
    for layer in layers:
        found = editor.sums.gated_columns(layer, editor.prior(layer), editor.editing.layer_lambda(layer))
        if found is None:
            raise SystemExit(f"the gate edit by edit needs a d4s or d4s-null state, not {editor.method}")
        error = ((found.R @ found.M.T).float() - changes[layer]).norm() / changes[layer].norm()
        if error > 1e-3:
            raise SystemExit(f"layer {layer}: the chat edits' columns give the change only to {error:.1e}; the "
                             "gate edit by edit is replayed on states of chat edits alone")
        columns[layer] = found.to("cpu", torch.float32)
    return columns


def summary(rows: list[dict[int, float]], layer: int) -> dict:
    values = sorted(row[layer] for row in rows)
    return {"min": values[0], "median": statistics.median(values), "max": values[-1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--thresholds", default="0.25,0.4,0.55")
    parser.add_argument("--edit-thresholds", default="", help="thresholds of the gate edit by edit (none: not run)")
    parser.add_argument("--general-questions", type=int, default=50)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    one_batch_arguments(parser)
    args = parser.parse_args()
    config = configured(args.set).replace("editing", gate=0.0)     # the rows install their own gate
    started_in = environment()
    facts = load_slice(config, args.data, args.start, args.count)
    thresholds = [float(t) for t in args.thresholds.split(",") if t]
    edit_thresholds = [float(t) for t in args.edit_thresholds.split(",") if t]
    with Editor.open(config, state_dir=args.state_dir) as editor:
        tok, system, length = editor.tokenizer, config.chat.system_prompt, args.max_new_tokens
        questions = unrelated_questions(facts, config.paths.shared_data_dir(), args.general_questions)
        with editor.unedited() as unedited:
            reference = locality_reference(unedited, tok, questions, length, system)
        edited = {record.fact.id for record in editor.edits("active")}
        missing = [f for f in facts if f.id not in edited]
        if missing:
            editor.apply(missing)
        current = editor.current_weights()
        layers = [layer for layer in editor.layers if not current[layer].equal(editor.W0[layer])]
        modules = {layer: get_module(editor.model, editor.names[layer]) for layer in layers}
        changes = {layer: current[layer] - editor.W0[layer] for layer in layers}
        ratio_rows = {"edited": largest_ratios(editor, modules, changes, [f.question for f in facts], system),
                      "rephrased": largest_ratios(editor, modules, changes, [f.paraphrases[0] for f in facts], system),
                      "unrelated": largest_ratios(editor, modules, changes, questions, system)}
        edit_ratio_rows = {}
        if edit_thresholds:
            columns = edit_columns(editor, layers, changes)
            edit_ratio_rows = {
                "edited": largest_ratios(editor, modules, columns, [f.question for f in facts], system),
                "rephrased": largest_ratios(editor, modules, columns, [f.paraphrases[0] for f in facts], system),
                "unrelated": largest_ratios(editor, modules, columns, questions, system)}
        gates = ([("none", None, contextlib.nullcontext)]
                 + [("sum", t, lambda t=t: gated(modules, changes, t)) for t in thresholds]
                 + [("edit", t, lambda t=t: gated(modules, columns, t)) for t in edit_thresholds])
        rows = []
        for kind, threshold, gate in gates:
            with gate():
                after = chat_scores(editor.model, tok, facts, length, system)
                locality = measure_locality(editor.model, tok, reference)
            rows.append({"gate": kind, "threshold": threshold, "after": after.to_json(),
                         "locality": locality.to_json()})
            print(f"gate {kind} {threshold}: answers {after.answered}/{after.questions}, rephrasings "
                  f"{after.rephrased}/{after.rephrasings}, agreement {locality.agreement:.3f}, kept "
                  f"{locality.kept}/{locality.questions}", flush=True)
    write_json(args.out, {
        "data": args.data, "start": args.start, "count": len(facts), "config": dataclasses.asdict(config.editing),
        "covariance": dataclasses.asdict(config.covariance), "environment": started_in,
        "general_questions": args.general_questions, "max_new_tokens": length,
        "edited_here": len(missing), "state_dir": args.state_dir,
        "change_ratios": {kind: {layer: summary(found, layer) for layer in layers} for kind, found in ratio_rows.items()},
        "edit_change_ratios": {kind: {layer: summary(found, layer) for layer in layers}
                               for kind, found in edit_ratio_rows.items()},
        "rows": rows,
    })


if __name__ == "__main__":
    main()
