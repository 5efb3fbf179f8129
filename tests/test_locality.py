"""Locality of chat edits: both measures against hand-made and independently computed cases."""

import copy
import json

import pytest
import torch

from assistant.evaluation.locality import (general_questions, locality_reference, measure_locality,
                                           unrelated_questions)
from assistant.evaluation.metrics import same_start
from assistant.facts import make_fact
from assistant.model.chat import answers, chat_prompt, encode_chat_prompt

QUESTIONS = ["Where is Paris?", "Who plays the violin?", "What is Tokyo known for?", "Where was Marie Curie born?"]


@pytest.fixture(scope="module")
def tiny(llama_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(llama_dir).eval()


def scrambled(model, layer: int = 1, scale: float = 3.0, seed: int = 0):
    """A copy of ``model`` with one MLP's output weights replaced by noise (a crude edit)."""
    other = copy.deepcopy(model)
    weight = other.model.layers[layer].mlp.down_proj.weight
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        weight.copy_(scale * torch.randn(weight.shape, generator=generator) * weight.std())
    return other


def test_general_questions_read_zsres_natural_questions_as_typed(tmp_path):
    records = [{"loc": "nq question: who sang the song hello"}, {"src": "no locality question here"},
               {"loc": "nq question: where is the nile?"}, {"loc": "what is a lake"}, {"loc": "nq question:"}]
    (tmp_path / "zsre").mkdir()
    (tmp_path / "zsre" / "zsre_mend_eval_portability_gpt4.json").write_text(json.dumps(records))
    assert general_questions(tmp_path, 10) == ["Who sang the song hello?", "Where is the nile?", "What is a lake?"]
    assert general_questions(tmp_path, 2) == ["Who sang the song hello?", "Where is the nile?"]
    facts = [make_fact(id="a", subject="Rome", prompt="Rome is in", target_new="Peru",
                       neighborhood=[("Where is Oslo?", "Norway")])]
    assert unrelated_questions(facts, tmp_path, 1) == ["Where is Oslo?", "Who sang the song hello?"]


def test_the_unedited_model_keeps_everything(tiny, chat_tokenizer):
    ref = locality_reference(tiny, chat_tokenizer, QUESTIONS, 8)
    assert ref.answers == answers(tiny, chat_tokenizer, ref.questions, 8)         # its own greedy answers
    same = measure_locality(tiny, chat_tokenizer, ref)
    assert same.agreement == 1.0 and same.kl == pytest.approx(0.0, abs=1e-9)
    assert same.kept == same.questions == len(ref.questions) > 0


def test_agreement_is_the_share_of_unedited_answer_tokens_still_ranked_first(tiny, chat_tokenizer):
    """Computed again here without padding or batching: one forward pass per question along
    the unedited model's answer, counting the positions where the edited model's argmax is
    the unedited model's own next token."""
    ref = locality_reference(tiny, chat_tokenizer, QUESTIONS, 8)
    edited = scrambled(tiny)
    measured = measure_locality(edited, chat_tokenizer, ref)
    hits = positions = 0
    for question, answer_probe in zip(ref.questions, ref.drift.probes):
        prompt = encode_chat_prompt(chat_tokenizer, chat_prompt(chat_tokenizer, question, ""))
        assert answer_probe.ids[:len(prompt)] == prompt
        ids = torch.tensor([answer_probe.ids])
        with torch.no_grad():
            logits = edited(input_ids=ids).logits[0]
        wanted = ids[0, len(prompt):]
        hits += int((logits[len(prompt) - 1:-1].argmax(-1) == wanted).sum())
        positions += len(wanted)
    assert measured.agreement == pytest.approx(hits / positions)
    assert measured.agreement < 1.0 and measured.kl > 0.0
    now = answers(edited, chat_tokenizer, ref.questions, 8)
    assert measured.answers == now
    assert measured.kept == sum(same_start(a, b) for a, b in zip(now, ref.answers)) < measured.questions


def test_a_larger_change_keeps_less(tiny, chat_tokenizer):
    ref = locality_reference(tiny, chat_tokenizer, QUESTIONS, 8)
    mild = measure_locality(scrambled(tiny, scale=0.05), chat_tokenizer, ref)
    strong = measure_locality(scrambled(tiny, scale=5.0), chat_tokenizer, ref)
    assert mild.agreement > strong.agreement and mild.kl < strong.kl
    figures = strong.to_json()
    assert figures["kept"] == strong.kept and figures["questions"] == len(ref.questions)
    low, high = figures["kept_interval95"]
    assert 0.0 <= low <= figures["kept_share"] <= high <= 1.0
