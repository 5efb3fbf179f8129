"""How much margin do chat edits have? Take the state of a chat_edits run, scale every
stored residual by g (S_l -> g S_l, T_l unchanged, so each layer's change is g times its
own), and score the edited questions and their rephrasings again, without re-optimising.

    python -m benchmarks.residual_scale --start 16 --count 16 --state-dir STATE_OF_THE_RUN \
        --scales 0.8,1,1.1,1.2,1.5 --out benchmarks/results/residual-scale.json

If the rephrasings only missed for want of a larger change, some g > 1 would raise them.
"""

from __future__ import annotations

import argparse

from assistant.editing.editor import Editor
from assistant.evaluation.locality import locality_questions, locality_reference, measure_locality
from assistant.evaluation.metrics import chat_scores
from benchmarks.common import common_arguments, configured, environment, load_slice, write_json


def scaled(sums, scale: float):
    """A copy of d4s sums whose residual sums S (and their chat share G) are ``scale`` times larger."""
    out = sums.copy()
    for name, tensor in out.tensors.items():
        if name.startswith(("S.", "G.")):
            tensor.mul_(scale)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--count", type=int, default=16)
    parser.add_argument("--scales", default="0.8,1,1.1,1.2,1.5")
    common_arguments(parser)
    args = parser.parse_args()
    config = configured(args.set)
    started_in = environment()
    editor = Editor.open(config, state_dir=args.state_dir)
    if editor.method != "d4s":
        parser.error(f"{args.state_dir} holds {editor.method} edits; this probe scales d4s sums")
    edited = {record.fact.id for record in editor.edits("active")}
    facts = [f for f in load_slice(config, "qaedit", args.start, args.count) if f.id in edited]
    tok, system = editor.tokenizer, config.chat.system_prompt
    with editor.unedited() as unedited:
        reference = locality_reference(unedited, tok, locality_questions(facts), 32, system)
    rows, committed = [], editor.sums
    for scale in (float(s) for s in args.scales.split(",")):
        editor.sums = scaled(committed, scale)      # in memory only: nothing is committed
        editor.rebuild()
        scores = chat_scores(editor.model, tok, facts, 32, system)
        locality = measure_locality(editor.model, tok, reference)
        growth = {n.layer: n.growth for n in editor.norms()}
        rows.append({"scale": scale, "efficacy": scores.efficacy, "paraphrase": scores.paraphrase,
                     "locality": locality.to_json(), "l1_growth": growth,
                     "answers": scores.answers, "paraphrase_answers": scores.paraphrase_answers})
        print(f"scale {scale:.2f}: efficacy {scores.efficacy:.2f}, paraphrase {scores.paraphrase:.2f}, "
              f"locality {locality.agreement:.3f} / kept {locality.kept}/{locality.questions}, largest L1 growth {max(growth.values()):.1%}")
    write_json(args.out, {"data": "qaedit", "start": args.start, "count": len(facts), "state_dir": str(args.state_dir),
                          "environment": started_in, "scales": rows})


if __name__ == "__main__":
    main()
