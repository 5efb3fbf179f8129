"""Could an edit be keyed where the answer starts, instead of at the subject? A probe
without editing: for QAEdit questions, the edited layers' keys at the end of the chat
prompt (the last token of the question, or the last token of the template); how strongly
a layer would respond there to each question's rephrasing, and to unrelated questions.

    python -m benchmarks.answer_site_keys --start 0 --count 50 --state-dir /tmp/probe-state \
        --set 'editing.layers=[3,4,5,6,7,8,9,10]' --out benchmarks/results/answer-site-keys.json

The response ratio at key x of an edit trained at key k is (k^T A^-1 x) / (k^T A^-1 k)
(see chat_key_response.py), with A = lambda C from the text corpora, or lambda (C + C_chat)
where C_chat is the second moment of the same site's keys over zsRE's questions, which
a product could hold back to keep such an edit from firing on every question.
"""

from __future__ import annotations

import argparse

import torch

from assistant.model.architectures import get_module
from assistant.model.chat import chat_prompt, encode_chat_prompt
from assistant.evaluation.datasets import edit_records
from assistant.editing.editor import Editor
from assistant.model.hooks import capture_inputs
from benchmarks.common import common_arguments, configured, load_slice, write_json

SITES = ("question_end", "template_end")


def sites_from_end(tokenizer, text: str, question: str) -> dict[str, int]:
    """How far from the end of the chat prompt ``text`` each site is (1: the last token):
    the question's last token, and the template's last token before the answer."""
    through_question = text.rindex(question) + len(question)
    before = len(encode_chat_prompt(tokenizer, text[:through_question]))
    return {"question_end": len(encode_chat_prompt(tokenizer, text)) - before + 1, "template_end": 1}


@torch.no_grad()
def site_keys(editor, questions: list[str], batch_size: int = 32) -> dict[int, dict[str, torch.Tensor]]:
    """{layer: {site: (n, d_in) float64}}: each edited module's input at each site."""
    tok, system = editor.tokenizer, editor.system_prompt
    modules = {str(layer): get_module(editor.model, editor.names[layer]) for layer in editor.layers}
    found = {layer: {site: [] for site in SITES} for layer in editor.layers}
    for start in range(0, len(questions), batch_size):
        texts = [(chat_prompt(tok, q, system), q) for q in questions[start:start + batch_size]]
        encoded = [encode_chat_prompt(tok, text) for text, _ in texts]
        ends = [sites_from_end(tok, text, q) for text, q in texts]
        back = {site: torch.tensor([end[site] for end in ends]) for site in SITES}
        width = max(map(len, encoded))
        ids = torch.full((len(encoded), width), tok.pad_token_id or 0)
        mask = torch.zeros_like(ids)
        for i, row in enumerate(encoded):                        # left-padded: every row ends at width
            ids[i, width - len(row):] = torch.tensor(row)
            mask[i, width - len(row):] = 1
        with capture_inputs(modules) as got:
            editor.model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(1) - 1).clamp(min=0))
        for layer in editor.layers:
            for site in SITES:
                found[layer][site].append(got[str(layer)][torch.arange(len(texts)), width - back[site]].double())
    return {layer: {site: torch.cat(parts) for site, parts in sites.items()} for layer, sites in found.items()}


def responses(A: torch.Tensor, trained: torch.Tensor, rephrased: torch.Tensor, unrelated: torch.Tensor) -> dict:
    """Medians and tails of the response ratios: each trained key's rephrasing, and every
    unrelated question for every trained key (and their sum over all trained keys, as
    when all the edits are in the model at once)."""
    solved = torch.linalg.solve(A, trained.T)                  # (d, n)
    own = (trained * solved.T).sum(1)
    rephrasing = (rephrased * solved.T).sum(1) / own
    others = (unrelated @ solved) / own                         # (m, n)
    return {"rephrasing_median": float(rephrasing.median()), "rephrasing_q25": float(rephrasing.quantile(0.25)),
            "unrelated_abs_median": float(others.abs().median()),
            "unrelated_abs_p99": float(others.abs().flatten().quantile(0.99)),
            "unrelated_sum_abs_median": float(others.sum(1).abs().median())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--count", type=int, default=50)
    parser.add_argument("--unrelated-start", type=int, default=200, help="QAEdit records asked as unrelated questions")
    parser.add_argument("--unrelated-count", type=int, default=400)
    parser.add_argument("--chat-questions", type=int, default=1000, help="zsRE questions for C_chat")
    common_arguments(parser)
    args = parser.parse_args()
    config = configured(args.set)
    shared = config.paths.shared_data_dir()
    facts = load_slice(config, "qaedit", args.start, args.count)
    unrelated = [f.question for f in load_slice(config, "qaedit", args.unrelated_start, args.unrelated_count)]
    held_back = [record["src"] for record in edit_records(shared, "zsre")[:args.chat_questions]]
    editor = Editor.open(config, state_dir=args.state_dir)
    trained, rephrased = site_keys(editor, [f.question for f in facts]), site_keys(editor, [f.paraphrases[0] for f in facts])
    others, chat = site_keys(editor, unrelated), site_keys(editor, held_back)
    rows = []
    for layer in editor.layers:
        C = editor.C[layer].double()
        for site in SITES:
            C_chat = chat[layer][site].T @ chat[layer][site] / chat[layer][site].shape[0]
            lam = config.editing.layer_lambda(layer)
            for covariance, A in (("text", lam * C), ("text+chat", lam * (C + C_chat))):
                row = {"layer": layer, "site": site, "covariance": covariance,
                       **responses(A, trained[layer][site], rephrased[layer][site], others[layer][site])}
                rows.append(row)
                print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
    write_json(args.out, {"start": args.start, "count": len(facts), "unrelated": len(unrelated),
                          "chat_questions": len(held_back), "mom2_weight": config.editing.mom2_weight,
                          "layer_mom2_factors": config.editing.layer_mom2_factors, "rows": rows})


if __name__ == "__main__":
    main()
