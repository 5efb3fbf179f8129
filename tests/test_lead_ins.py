"""Lead-ins: the model's own restating start of an answer, cut where the object would go."""

import dataclasses

import pytest
import torch

from assistant.model.architectures import architecture_of, get_module
from assistant.errors import InvalidFact
from assistant.model.hooks import edit_output
from assistant.model.chat import answers, chat_prompt, encode_chat_prompt, greedy_token_continuations
from assistant.facts import make_fact
from assistant.editing.lead_ins import answer_lead_ins, best_cut, first_sentence_length
from assistant.editing.prompts import PromptSettings, check_lengths, collate, fact_rows, kl_row, target_ids
from assistant.editing.targets import TargetSettings, add_delta_at, delta_sites, optimise_targets
from tests.test_prompts import SETTINGS, question_fact


def test_first_sentence_ends_at_the_first_sentence_mark():
    assert first_sentence_length([" The", " Loire", " rises", " in", " the", " Massif", ".", " It"]) == 6
    assert first_sentence_length([" Paris", ",", " France", "\n", "More"]) == 3
    assert first_sentence_length([" no", " end", " at", " all"]) == 4
    assert first_sentence_length(["?"]) == 0


def test_best_cut_is_the_likeliest_slot_unless_the_answer_starts_there():
    assert best_cut(torch.tensor([-9.0, -8.0, -7.0, -1.0, -6.0]), min_tokens=2) == 3
    assert best_cut(torch.tensor([-0.5, -8.0, -7.0, -1.0]), min_tokens=2) == 0      # answers straight away
    assert best_cut(torch.tensor([-9.0, -0.5, -7.0]), min_tokens=2) == 0            # too short to be a lead-in


def test_lead_in_row_is_the_chat_form_then_the_lead_in_then_the_object(chat_tokenizer):
    fact = question_fact()
    lead_in = chat_tokenizer(" Marie Curie is famous for", add_special_tokens=False).input_ids
    settings = PromptSettings(context_prefixes=SETTINGS.context_prefixes, case_variants=True)   # two chat forms
    plain = fact_rows(0, fact, chat_tokenizer, settings, with_targets=True)
    rows = fact_rows(0, fact, chat_tokenizer, settings, with_targets=True, lead_ins=[lead_in])
    assert len(rows) == len(plain) + 1                       # one lead-in row, after the first chat form only
    chat_row, lead_row = rows[2], rows[3]
    running = target_ids(chat_tokenizer, fact, chat=False)
    prompt_len = len(chat_row.ids) - chat_row.target_len
    assert lead_row.ids == chat_row.ids[:prompt_len] + lead_in + running
    assert lead_row.target_len == len(running) and lead_row.subject_pos == chat_row.subject_pos
    assert rows[:3] + rows[4:] == plain
    other = chat_tokenizer(" The answer is", add_special_tokens=False).input_ids
    two = fact_rows(0, fact, chat_tokenizer, settings, with_targets=True, lead_ins=[lead_in, other])
    assert two[:4] == rows[:4] and two[5:] == rows[4:]       # one row per lead-in, both after the first chat form
    assert two[4].ids == chat_row.ids[:prompt_len] + other + running
    keys_only = fact_rows(0, fact, chat_tokenizer, SETTINGS, with_targets=False, lead_ins=[lead_in])
    assert len(keys_only) == 3                               # keys never see the lead-in


def test_check_lengths_keeps_room_for_the_lead_in(chat_tokenizer):
    fact = question_fact()
    longest = max(len(r.ids) for r in fact_rows(0, fact, chat_tokenizer, SETTINGS, True))
    check_lengths([fact], chat_tokenizer, SETTINGS, longest)
    with pytest.raises(InvalidFact, match="fact q1"):
        check_lengths([fact], chat_tokenizer, dataclasses.replace(SETTINGS, lead_in_tokens=8), longest)


def test_lead_ins_are_cuts_of_the_models_own_answer(open_engine):
    editor = open_engine("sharp-llama")
    model, tok = editor.model, editor.tokenizer
    asked = [make_fact(id=f"q{i}", subject=s, prompt=f"{s} lives in", target_new=t, question=f"Where does {s} live?")
             for i, (s, t) in enumerate([("Marie Curie", "Rome"), ("Paris", "Japan"), ("Danielle", "London")])]
    unasked = make_fact(id="plain", subject="Paris", prompt="Paris is in", target_new="Japan")
    facts = asked + [unasked]
    lead_ins = answer_lead_ins(model, tok, facts, "", max_tokens=12, min_tokens=1)
    prompts = [encode_chat_prompt(tok, chat_prompt(tok, f.question)) for f in asked]
    continued = greedy_token_continuations(model, tok, prompts, 12)
    assert lead_ins[-1] == []
    for fact_lead_ins, answer in zip(lead_ins, continued):
        assert len(fact_lead_ins) <= 1
        for lead_in in fact_lead_ins:
            assert lead_in == answer[:len(lead_in)]
    assert [tok.decode(ids).strip() for ids in continued] == answers(model, tok, [f.question for f in asked], 12)
    assert any(lead_ins[:-1]), "the sharp tiny model should restate something before some object"


def _running_nll(model, tok, fact, lead_in, chat_answer: bool = False) -> float:
    """Mean NLL of the object after the chat question and ``lead_in``: as running text, or
    as the chat answer itself (no leading space) with ``chat_answer``."""
    prompt = encode_chat_prompt(tok, chat_prompt(tok, fact.question))
    running = target_ids(tok, fact, chat=chat_answer)
    ids = torch.tensor([prompt + lead_in + running])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
    start = len(prompt) + len(lead_in)
    return -float(sum(logprobs[start - 1 + i, token] for i, token in enumerate(running))) / len(running)


def test_an_edit_with_lead_ins_makes_the_object_follow_them(open_engine, new_fact, inspect):
    editor = open_engine("sharp-llama", lead_in_tokens=8, steps=40, stop_probability=0.99)
    facts = [new_fact(i, question=f"Tell me what {s} does?", subject=s) for i, s in enumerate(["Marie Curie", "Paris"])]
    lead_ins = answer_lead_ins(editor.model, editor.tokenizer, facts, "", 8, min_tokens=1)
    pairs = [(fact, lead_in) for fact, fact_lead_ins in zip(facts, lead_ins) for lead_in in fact_lead_ins or [[]]]
    assert len(pairs) == len(facts)
    before = [_running_nll(editor.model, editor.tokenizer, f, li) for f, li in pairs]
    editor.apply(facts)
    after = [_running_nll(editor.model, editor.tokenizer, f, li) for f, li in pairs]
    assert all(a < b - 1.0 for a, b in zip(after, before)), (before, after)
    for name, tensor in inspect.sums_of_active_edits(editor).items():
        assert inspect.relative_error(editor.sums.tensors[name], tensor) < 1e-9


def test_case_variants_make_the_recased_question_answer_too(open_engine, new_fact, inspect):
    editor = open_engine("sharp-llama", case_variants=True, steps=40, stop_probability=0.99)
    facts = [new_fact(i, question=f"tell me what {s} does?", subject=s) for i, s in enumerate(["marie curie", "paris"])]
    recased = [dataclasses.replace(f, question=f.question.replace(f.subject, f.subject.title())) for f in facts]
    before = [_running_nll(editor.model, editor.tokenizer, f, []) for f in recased]
    editor.apply(facts)
    after = [_running_nll(editor.model, editor.tokenizer, f, []) for f in recased]
    assert all(a < b - 1.0 for a, b in zip(after, before)), (before, after)
    for name, tensor in inspect.sums_of_active_edits(editor).items():
        assert inspect.relative_error(editor.sums.tensors[name], tensor) < 1e-9


def _row_probabilities(model, block, batch, delta, sites) -> torch.Tensor:
    """exp(-mean target-token NLL) of each row, in one full forward with the delta at ``sites``."""
    with torch.no_grad(), edit_output(block, add_delta_at(sites, delta)):
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.float()
    logprobs = torch.log_softmax(logits, dim=-1)
    means = []
    for i, row in enumerate(batch.rows):
        first = len(row.ids) - row.target_len
        means.append(sum(logprobs[i, t - 1, row.ids[t]] for t in range(first, len(row.ids))) / row.target_len)
    return torch.exp(torch.stack(means))


def _optimised_rows(editor, facts, rows):
    """Optimise the facts' targets on these training rows; check that each fact's reported
    probability is its worst row's in a plain forward pass with the delta at its sites.
    Returns (batch, edited block, targets, each row's probability)."""
    model, tok, cfg = editor.shadow, editor.tokenizer, editor.editing
    train = collate(rows, tok.pad_token_id, torch.device("cpu"))
    kl = collate([kl_row(i, f, tok, cfg.kl_prompt) for i, f in enumerate(facts)], tok.pad_token_id, torch.device("cpu"))
    block = get_module(model, architecture_of(model).block_module.format(cfg.layers[-1]))
    with torch.no_grad():
        hidden = model(input_ids=kl.input_ids, attention_mask=kl.attention_mask,
                       output_hidden_states=True).hidden_states[cfg.layers[-1] + 1]
    h_norm = hidden[torch.arange(len(facts)), kl.subject_pos].norm(dim=1)
    targets = optimise_targets(model, train, kl, block, h_norm, TargetSettings.from_editing(cfg), tok.pad_token_id)
    reached = _row_probabilities(model, block, train, targets.delta, delta_sites(train))
    worst = torch.stack([reached[train.fact == i].min() for i in range(len(facts))])
    assert torch.allclose(worst, targets.probability, atol=1e-4), (worst, targets.probability)
    return train, block, targets, reached


def test_targets_report_the_worst_rows_probability_with_lead_ins(open_engine, new_fact):
    # The tiny model moves slowly: a low stop probability makes the optimisation stop part-way,
    # on a delta whose probability can be checked in a plain forward pass.
    editor = open_engine("sharp-llama", steps=100, stop_probability=1e-9)
    tok, cfg = editor.tokenizer, editor.editing
    facts = [new_fact(i, question=f"Tell me what {s} does?", subject=s) for i, s in enumerate(["Marie Curie", "Paris"])]
    settings = PromptSettings(context_prefixes=("",))
    rows = [row for i, f in enumerate(facts) for row in
            fact_rows(i, f, tok, settings, True, [tok(f" Well, {f.subject} does", add_special_tokens=False).input_ids])]
    assert len(rows) == 6                      # per fact: the cloze form, the chat form, its lead-in
    train, block, targets, reached = _optimised_rows(editor, facts, rows)
    assert targets.steps < cfg.steps and (targets.probability >= cfg.stop_probability).all(), targets.steps
