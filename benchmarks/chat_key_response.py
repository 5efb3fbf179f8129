"""Why do rephrased questions miss? For each edited QAEdit fact of a chat_edits run: does
the rephrasing hold the subject (exactly, or in another case); how strongly the edited
layers respond at the rephrasing's own subject key, relative to the trained key; and
P(new answer's first token) right at the start of the answer to the rephrasing.

    python -m benchmarks.chat_key_response --start 0 --count 50 --state-dir STATE_OF_THE_RUN \
        --out benchmarks/results/chat-key-response.json

The response ratio of fact i at layer l and key x is (k_i^T A^-1 x) / (k_i^T A^-1 k_i) with
A = lambda C + T: how much of fact i's own change the layer makes at x (D4S's solve).
"""

from __future__ import annotations

import argparse
import statistics

import torch

from assistant.model.architectures import get_module
from assistant.model.chat import chat_prompt, encode_chat_prompt
from assistant.editing.editor import Editor
from assistant.model.hooks import capture_inputs
from assistant.evaluation.metrics import answer_contains, answers
from assistant.editing.prompts import encode_with_subject, target_ids
from benchmarks.common import common_arguments, configured, load_slice, write_json


def response_ratio(A: torch.Tensor, trained: torch.Tensor, other: torch.Tensor) -> float:
    """How much of the change made at the key ``trained`` the layer makes at ``other``."""
    solved = torch.linalg.solve(A, trained)
    return float(solved @ other) / float(solved @ trained)


def subject_key(editor, layer: int, question: str, subject: str) -> torch.Tensor:
    """The edited module's input at the last token of the subject's last (case-blind) match."""
    text = chat_prompt(editor.tokenizer, question, editor.system_prompt)
    start = text.lower().rindex(subject.lower())
    ids, position = encode_with_subject(editor.tokenizer, text, start, start + len(subject), chat=True)
    with capture_inputs({"key": get_module(editor.model, editor.names[layer])}) as got, torch.no_grad():
        editor.model(input_ids=torch.tensor([ids]))
    return got["key"][0, position].double()


@torch.no_grad()
def first_token_probability(editor, question: str, fact) -> float:
    tok = editor.tokenizer
    ids = encode_chat_prompt(tok, chat_prompt(tok, question, editor.system_prompt))
    logits = editor.model(input_ids=torch.tensor([ids])).logits[0, -1].float()
    return float(torch.softmax(logits, -1)[target_ids(tok, fact, chat=True)[0]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--count", type=int, default=50)
    common_arguments(parser)
    args = parser.parse_args()
    config = configured(args.set)
    facts = load_slice(config, "qaedit", args.start, args.count)
    editor = Editor.open(config, state_dir=args.state_dir)
    edits = {record.fact.id: record.id for record in editor.edits("active")}
    rephrased = [f.paraphrases[0] for f in facts]
    replies = answers(editor.model, editor.tokenizer, rephrased, 32, config.chat.system_prompt)
    rows = []
    for fact, question, reply in zip(facts, rephrased, replies):
        holds = "exact" if fact.subject in question else "case" if fact.subject.lower() in question.lower() else "no"
        ratios = {}
        if holds != "no" and fact.id in edits:
            vectors = editor.vectors(edits[fact.id])
            for layer, (K, _) in vectors.items():             # the layers this edit wrote
                lam = config.editing.layer_lambda(layer)
                A = lam * editor.C[layer].double() + editor.sums.T(layer).double()
                trained = K[:, 0].double()
                ratios[layer] = response_ratio(A, trained, subject_key(editor, layer, question, fact.subject))
        rows.append({"id": fact.id, "rephrasing": question, "target": fact.target_new, "answer": reply,
                     "answered": answer_contains(reply, fact.target_new), "subject_in_rephrasing": holds,
                     "response_ratio": ratios, "first_token_probability": first_token_probability(editor, question, fact)})
    summary = {}
    for holds in ("exact", "case"):
        for answered in (True, False):
            chosen = [min(r["response_ratio"].values()) for r in rows
                      if r["subject_in_rephrasing"] == holds and r["answered"] == answered]
            summary[f"{holds}, {'answered' if answered else 'missed'}"] = {
                "facts": len(chosen), "median_min_response_ratio": statistics.median(chosen) if chosen else None}
    write_json(args.out, {"start": args.start, "count": len(facts), "state": args.state_dir, "summary": summary,
                          "facts": rows})
    for name, values in summary.items():
        print(name, values)


if __name__ == "__main__":
    main()
