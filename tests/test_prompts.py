"""Prompt forms and token rows: where the subject ends, with and without a chat template."""

import pytest
import torch

from assistant.model.chat import FALLBACK_TEMPLATE, chat_prompt
from assistant.errors import InvalidFact
from assistant.facts import make_fact
from assistant.config import Config
from assistant.editing.prompts import (PromptSettings, check_lengths, collate, fact_rows, kl_row, prompt_forms,
                                       subject_casings, target_ids)

PREFIXES = ["", "Note: "]
SETTINGS = PromptSettings(context_prefixes=tuple(PREFIXES))


def question_fact():
    return make_fact(id="q1", subject="Marie Curie", prompt="Marie Curie is famous for", target_new="football",
                     question="What is Marie Curie famous for?")


def subject_ends_at(tokenizer, ids, position, subject):
    return tokenizer.decode(ids[:position + 1]).endswith(subject) and not \
        tokenizer.decode(ids[:position]).endswith(subject)


def test_chat_prompt_falls_back_without_a_template(tokenizer):
    assert not getattr(tokenizer, "chat_template", None)
    assert chat_prompt(tokenizer, "Where is Paris?") == FALLBACK_TEMPLATE.format(question="Where is Paris?")
    assert chat_prompt(tokenizer, "Where is Paris?") == "Question: Where is Paris?\nAnswer:"


def test_chat_prompt_uses_the_template(chat_tokenizer):
    text = chat_prompt(chat_tokenizer, "Where is Paris?", system_prompt="Be brief.")
    assert text == "<|system|>Be brief.\n<|user|>Where is Paris?\n<|assistant|>"
    assert chat_prompt(chat_tokenizer, "Where is Paris?") == "<|user|>Where is Paris?\n<|assistant|>"


@pytest.mark.parametrize("which", ["tokenizer", "chat_tokenizer"])
def test_rows_point_at_the_subjects_last_token(request, which):
    tok = request.getfixturevalue(which)
    fact = question_fact()
    forms = prompt_forms(fact, tok, SETTINGS)
    assert [text for text, _, _ in forms[:2]] == ["Marie Curie is famous for", "Note: Marie Curie is famous for"]
    chat_text, start, is_chat = forms[2]
    assert is_chat and chat_text[start:start + len(fact.subject)] == fact.subject
    assert chat_text == chat_prompt(tok, fact.question)
    rows = fact_rows(0, fact, tok, SETTINGS, with_targets=False)
    assert len(rows) == 3
    for row, (text, _, _) in zip(rows, forms):
        assert tok.decode(row.ids) == text
        assert subject_ends_at(tok, row.ids, row.subject_pos, fact.subject)


def test_a_fact_without_a_question_has_only_its_cloze_forms(tokenizer):
    plain = make_fact(id="no-question", subject="Paris", prompt="Paris is in", target_new="Japan")
    forms = prompt_forms(plain, tokenizer, PromptSettings(context_prefixes=tuple(PREFIXES), case_variants=True))
    assert forms == [("Paris is in", 0, False), ("Note: Paris is in", 6, False)]


def test_prompt_settings_take_their_values_from_the_editing_section():
    editing = Config().editing
    settings = PromptSettings.from_editing(editing, "Be brief.")
    assert settings == PromptSettings(tuple(editing.context_prefixes), editing.case_variants, "Be brief.",
                                      editing.end_chat_answer, editing.lead_in_tokens)


def test_training_rows_end_with_the_target(tokenizer):
    fact = question_fact()
    rows = fact_rows(2, fact, tokenizer, SETTINGS, with_targets=True)
    for row, chat in zip(rows, [False, False, True]):
        target = target_ids(tokenizer, fact, chat)
        assert row.fact == 2 and row.target_len == len(target) > 0
        assert row.ids[-row.target_len:] == target
    assert tokenizer.decode(target_ids(tokenizer, fact, False)) == " football"
    assert tokenizer.decode(target_ids(tokenizer, fact, True)) == "football"


def test_subject_not_in_question_is_rejected_naming_the_fact(tokenizer):
    fact = make_fact(id="q2", subject="Paris", prompt="Paris is in", target_new="Japan", question="Where is it?")
    with pytest.raises(InvalidFact, match="fact q2"):
        prompt_forms(fact, tokenizer, SETTINGS)


def test_kl_row_and_collate(tokenizer):
    fact = question_fact()
    kl = kl_row(1, fact, tokenizer, "{} is a")
    assert tokenizer.decode(kl.ids) == "Marie Curie is a" and subject_ends_at(tokenizer, kl.ids, kl.subject_pos,
                                                                              fact.subject)
    rows = fact_rows(0, fact, tokenizer, SETTINGS, with_targets=True) + [kl]
    batch = collate(rows, tokenizer.pad_token_id, torch.device("cpu"))
    width = max(len(r.ids) for r in rows)
    assert batch.input_ids.shape == (len(rows), width)
    assert batch.lengths.tolist() == [len(r.ids) for r in rows]
    assert batch.attention_mask.sum(1).tolist() == batch.lengths.tolist()
    assert batch.fact.tolist() == [0, 0, 0, 1]
    for i, row in enumerate(rows):
        assert batch.input_ids[i, :len(row.ids)].tolist() == row.ids
        assert (batch.input_ids[i, len(row.ids):] == tokenizer.pad_token_id).all()


def test_check_lengths_names_the_long_fact(tokenizer):
    short = question_fact()
    long = make_fact(id="long-one", subject="Paris", prompt="Paris" + " the" * 150 + " is in", target_new="Japan")
    check_lengths([short], tokenizer, SETTINGS, 128)
    with pytest.raises(InvalidFact) as error:
        check_lengths([short, long], tokenizer, SETTINGS, 128)
    assert "long-one" in str(error.value) and "128" in str(error.value)


@pytest.mark.parametrize("which", ["tokenizer", "chat_tokenizer"])
def test_case_variants_add_chat_forms_with_the_subject_recased(request, which):
    tok = request.getfixturevalue(which)
    fact = make_fact(id="nq", subject="loire river", prompt="the loire river rises in", target_new="the Alps",
                     question="in which mountains does the loire river rise?")
    settings = PromptSettings(context_prefixes=tuple(PREFIXES), case_variants=True)
    forms = prompt_forms(fact, tok, settings)
    assert [chat_prompt(tok, q) for q in ["in which mountains does the loire river rise?",
                                          "in which mountains does the Loire River rise?"]] == \
        [text for text, _, chat in forms if chat]
    rows = fact_rows(0, fact, tok, settings, with_targets=False)
    for row, (text, start, _) in zip(rows, forms):
        assert text[start:start + len(fact.subject)].lower() == fact.subject
        assert tok.decode(row.ids[:row.subject_pos + 1]).lower().endswith(fact.subject)


def test_subject_casings():
    assert subject_casings("Loire river") == ["Loire River", "loire river"]
    assert subject_casings("Paris") == ["paris"]
    assert subject_casings("paris") == ["Paris"]
    assert subject_casings("42") == []



def test_each_fact_has_one_asked_form_the_question_or_the_plain_prompt(chat_tokenizer):
    """The form users and the updater's detector ask (refinement re-checks it): a fact's
    question, else its cloze prompt without a context prefix; never a lead-in row."""
    settings = PromptSettings(context_prefixes=("Note: ", ""), case_variants=True)
    cloze = make_fact(id="c1", subject="Marie Curie", prompt="Marie Curie is famous for", target_new="football")
    rows = fact_rows(0, cloze, chat_tokenizer, settings, True)
    assert [row.asked for row in rows] == [False, True]
    assert chat_tokenizer.decode(rows[1].ids).startswith("Marie Curie is famous for")
    rows = fact_rows(1, question_fact(), chat_tokenizer, settings, True, [[7, 8]])
    asked = [row for row in rows if row.asked]
    assert len(asked) == 1 and rows.index(asked[0]) == 2          # after the two cloze forms
    text = chat_tokenizer.decode(asked[0].ids)
    assert "What is Marie Curie famous for?" in text and "marie curie" not in text
    no_plain = fact_rows(0, cloze, chat_tokenizer, PromptSettings(context_prefixes=("Note: ", "So: ")), True)
    assert [row.asked for row in no_plain] == [True, False]
