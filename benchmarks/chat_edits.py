"""Do edits show in chat, and do they leave the rest alone? Edit QAEdit questions in one
model, then ask them and their first rephrasings through the chat template (greedy) and count
answers that contain the new answer; measure locality on unrelated questions (the facts'
locality questions and general questions) against the unedited model's own answers: top-1
token agreement teacher-forced on them, and answers that keep their first eight words.

    python benchmarks/chat_edits.py --start 0 --count 50 --state-dir /tmp/chat-state \
        --out benchmarks/results/chat_edits.json
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time

from assistant.editing.editor import Editor
from assistant.evaluation.locality import locality_reference, measure_locality, unrelated_questions
from assistant.evaluation.metrics import chat_scores
from benchmarks.common import common_arguments, configured, environment, load_slice, write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default="qaedit", choices=["qaedit", "zsre"])
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--count", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--evaluate-only", action="store_true",
                        help="score the facts as edited in --state-dir (e.g. a run stopped after its first batches)")
    parser.add_argument("--general-questions", type=int, default=50,
                        help="general questions (zsRE's Natural Questions) in the locality set, beside the facts' own")
    parser.add_argument("--max-new-tokens", type=int, default=32,
                        help="length of each greedy answer (32 in every recorded run; the chat itself uses [chat] max_new_tokens)")
    common_arguments(parser)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    config = configured(args.set)
    started_in = environment()                  # the commit the run starts from, not the one at its end
    facts = load_slice(config, args.data, args.start, args.count)
    editor = Editor.open(config, state_dir=args.state_dir)
    tok, system, length = editor.tokenizer, config.chat.system_prompt, args.max_new_tokens
    if args.evaluate_only:
        edited = {record.fact.id for record in editor.edits("active")}
        facts = [f for f in facts if f.id in edited]
    questions = unrelated_questions(facts, config.paths.shared_data_dir(), args.general_questions)
    report, seconds = None, float("nan")
    if args.evaluate_only:
        with editor.unedited() as unedited:
            before = chat_scores(unedited, tok, facts, length, system)
            reference = locality_reference(unedited, tok, questions, length, system)
    else:
        before = chat_scores(editor.model, tok, facts, length, system)
        reference = locality_reference(editor.model, tok, questions, length, system)
        started = time.perf_counter()
        report = editor.apply(facts, batch_size=args.batch_size)
        seconds = time.perf_counter() - started
    after = chat_scores(editor.model, tok, facts, length, system)
    locality = measure_locality(editor.model, tok, reference)
    write_json(args.out, {
        "data": args.data, "start": args.start, "count": len(facts), "method": editor.method,
        "config": dataclasses.asdict(config.editing),
        "covariance": dataclasses.asdict(config.covariance), "environment": started_in,
        "seconds_per_edit": seconds / len(facts),
        "target_probability_mean": sum(report.probabilities) / len(report.probabilities) if report else None,
        "evaluated_only": args.evaluate_only, "max_new_tokens": length,
        "before": before.to_json(), "after": after.to_json(),
        "locality": {**locality.to_json(), "general_questions": args.general_questions,
                     "examples": [{"question": q, "before": b, "after": a}
                                  for q, b, a in zip(reference.questions, reference.answers, locality.answers)]},
        "l1_growth": {n.layer: n.growth for n in editor.norms()},
        "examples": [{"question": f.question, "target": f.target_new, "answer": a, "paraphrase": f.paraphrases[0],
                      "paraphrase_answer": p} for f, a, p in zip(facts, after.answers, after.paraphrase_answers)],
    })
    print(f"chat efficacy {before.efficacy:.2f} -> {after.efficacy:.2f}, paraphrase {before.paraphrase:.2f} -> "
          f"{after.paraphrase:.2f}, locality agreement {locality.agreement:.3f}, kept {locality.kept}/"
          f"{locality.questions}, {seconds / len(facts):.1f} s/edit")


if __name__ == "__main__":
    main()
