"""C = E[k k^T] over the (fake) shared corpora, computed once and cached."""

import ast
import json
from pathlib import Path

import pytest
import torch

import assistant.editing.covariance
from assistant.model.architectures import architecture_of, get_module
from assistant.model.chat import chat_prompt, chat_transcript
from assistant.config import CovarianceConfig
from assistant.corpora import corpus_texts, edit_file_records
from assistant.editing.covariance import chat_corpus_texts, load_or_compute, token_sequences
from assistant.errors import ModelNotReady
from assistant.model.loading import load_model


def test_corpus_texts_skip_headings_and_blank_lines(shared_data_dir, sentences):
    wiki = corpus_texts(shared_data_dir, "wikitext2_raw")
    assert wiki == sentences
    me_ppl = corpus_texts(shared_data_dir, "me_ppl")
    assert me_ppl[0] == " ".join(sentences[:3]) and len(me_ppl) == (len(sentences) + 2) // 3


def test_missing_corpus_names_the_file_and_the_setting(tmp_path):
    with pytest.raises(ModelNotReady) as error:
        corpus_texts(tmp_path, "wikitext2_raw")
    assert "wiki.test.raw" in str(error.value) and "LIVEDIT_SHARED_DATA" in str(error.value)


def test_token_sequences_take_an_equal_share_of_each_corpus(tokenizer, shared_data_dir):
    cfg = CovarianceConfig(corpora=["wikitext2_raw", "me_ppl"], tokens=2000, sequence_length=32, batch_size=8)
    sequences = token_sequences(tokenizer, shared_data_dir, cfg)
    assert sequences.shape == (2000 // 32, 32)
    wiki = tokenizer(corpus_texts(shared_data_dir, "wikitext2_raw")[0] + "\n", add_special_tokens=False).input_ids
    assert sequences.flatten()[:len(wiki)].tolist() == wiki
    me_ppl = tokenizer(corpus_texts(shared_data_dir, "me_ppl")[0] + "\n", add_special_tokens=False).input_ids
    assert sequences.flatten()[1000:1000 + len(me_ppl)].tolist() == me_ppl


def test_chat_corpus_is_zsre_as_finished_chat_turns_from_the_last_record(chat_tokenizer, tokenizer, shared_data_dir,
                                                                         caplog):
    records = edit_file_records(shared_data_dir, "zsre")
    last = records[-1]
    texts = chat_corpus_texts(chat_tokenizer, shared_data_dir)
    assert len(texts) == len(records)
    assert texts[0] == f"<|user|>{last['src']}\n<|assistant|>{last['answers'][0]}\n"
    assert texts[0].startswith(chat_prompt(chat_tokenizer, last["src"]))
    assert chat_corpus_texts(tokenizer, shared_data_dir)[0] == f"Question: {last['src']}\nAnswer: {last['answers'][0]}\n"
    assert chat_transcript(chat_tokenizer, "Q?", "A.", system_prompt="Be brief.") == "<|system|>Be brief.\n<|user|>Q?\n<|assistant|>A.\n"

    for chosen in (chat_tokenizer, tokenizer):
        cfg = CovarianceConfig(corpora=["wikitext2_raw", "zsre_chat"], tokens=2000, sequence_length=32)
        stream = token_sequences(chosen, shared_data_dir, cfg).flatten()
        turns = [chosen(text, add_special_tokens=False).input_ids for text in chat_corpus_texts(chosen, shared_data_dir)]
        chat_part = [i for turn in turns for i in turn]
        assert len(chat_part) < 1000 and stream[1000:].tolist() == chat_part[:len(stream) - 1000]
    assert "corpus zsre_chat holds" in caplog.text and "lower [covariance] tokens" in caplog.text


def test_own_chat_corpus_holds_the_models_own_greedy_answers(llama_dir, chat_tokenizer, shared_data_dir):
    from transformers import AutoModelForCausalLM

    from assistant.editing.covariance import OWN_ANSWER_TOKENS, own_chat_texts
    from assistant.model.chat import answers

    model = AutoModelForCausalLM.from_pretrained(llama_dir).eval()
    questions = [r["src"] for r in reversed(edit_file_records(shared_data_dir, "zsre"))]
    replies = answers(model, chat_tokenizer, questions, OWN_ANSWER_TOKENS)       # computed here in one batch
    texts = list(own_chat_texts(model, chat_tokenizer, shared_data_dir, batch_size=3))
    assert texts == [chat_transcript(chat_tokenizer, q, r) for q, r in zip(questions, replies)]
    assert any(r for r in replies)                                               # the model did say something
    cfg = CovarianceConfig(corpora=["wikitext2_raw", "zsre_own_chat"], tokens=1000, sequence_length=20)
    stream = token_sequences(chat_tokenizer, shared_data_dir, cfg, model).flatten()
    own = [i for text in texts for i in chat_tokenizer(text, add_special_tokens=False).input_ids]
    assert stream[500:].tolist() == own[:len(stream) - 500]


def test_chat_corpus_skips_records_without_a_question_or_an_answer(chat_tokenizer, tmp_path):
    (tmp_path / "zsre").mkdir()
    records = [{"src": "Where is Paris?", "answers": ["France"]}, {"src": "", "answers": ["Spain"]},
               {"src": "Where is Rome?", "answers": []}, {"answers": ["Japan"]}, {"src": "Where is Tokyo?"}]
    (tmp_path / "zsre" / "zsre_mend_eval_portability_gpt4.json").write_text(json.dumps(records), encoding="utf-8")
    assert chat_corpus_texts(chat_tokenizer, tmp_path) == ["<|user|>Where is Paris?\n<|assistant|>France\n"]


def test_edit_files_are_read_with_clear_errors(shared_data_dir, tmp_path):
    from assistant.errors import ConfigError
    from assistant.evaluation.datasets import edit_records

    assert edit_file_records(shared_data_dir, "zsre") == edit_records(shared_data_dir, "zsre")
    assert edit_records(shared_data_dir, "mqd-yesno") == edit_file_records(shared_data_dir, "counterfact")
    with pytest.raises(ConfigError, match="unknown edit data file 'mqd-yesno'; choose one of counterfact"):
        edit_file_records(shared_data_dir, "mqd-yesno")
    with pytest.raises(ConfigError, match="zsre_mend_eval_portability_gpt4.json is missing; set .paths. shared_data"):
        edit_file_records(tmp_path, "zsre")


LOWER_LAYERS = ("assistant/model", "assistant/editing", "assistant/state")
UPPER_PACKAGES = ("assistant.evaluation", "updater", "ui", "livedit")


def test_the_lower_layers_import_nothing_from_the_upper_ones():
    """model, editing and state import neither the evaluation nor the updater, the UI or the
    entry point, not even inside a function."""
    root = Path(__file__).resolve().parent.parent
    found = []
    for folder in LOWER_LAYERS:
        for path in sorted((root / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom):
                    names = [node.module or ""]
                else:
                    continue
                found += [f"{path.relative_to(root)}:{node.lineno} imports {name}" for name in names
                          if any(name == upper or name.startswith(upper + ".") for upper in UPPER_PACKAGES)]
    assert found == []


@pytest.mark.parametrize("model", ["llama", "gpt2"])
def test_second_moment_matches_a_direct_computation_and_is_cached(model, make_config, livedit_dirs, monkeypatch):
    config = make_config(model)
    loaded = load_model(config)
    arch = architecture_of(loaded.model)
    names = {layer: arch.edited_module.format(layer) for layer in config.editing.layers}
    last_block = get_module(loaded.model, arch.block_module.format(config.editing.layers[-1]))
    args = (loaded.model, loaded.tokenizer, names, last_block, livedit_dirs["home"], livedit_dirs["shared"],
            loaded.fingerprint, config.covariance)
    C = load_or_compute(*args, progress=False)

    sequences = token_sequences(loaded.tokenizer, livedit_dirs["shared"], config.covariance)
    for layer, name in names.items():
        keys = []
        handle = get_module(loaded.model, name).register_forward_pre_hook(lambda m, a: keys.append(a[0]))
        try:
            with torch.no_grad():
                loaded.model(input_ids=sequences)
        finally:
            handle.remove()
        k = keys[0].reshape(-1, keys[0].shape[-1]).double()
        expected = k.T @ k / k.shape[0]
        assert C[layer].dtype == torch.float64 and C[layer].shape == (k.shape[1], k.shape[1])
        assert ((C[layer] - expected).norm() / expected.norm()).item() < 1e-5
        assert torch.equal(C[layer], C[layer].T)

    def must_not_run(*_args, **_kwargs):
        raise AssertionError("the cached covariance was computed again")
    monkeypatch.setattr(assistant.editing.covariance, "collect_second_moments", must_not_run)
    again = load_or_compute(*args, progress=False)
    assert all(torch.equal(again[layer], C[layer]) for layer in names)
    folder = livedit_dirs["home"] / "cache" / "covariance" / loaded.fingerprint
    assert sorted(p.name for p in folder.rglob("*.safetensors")) == [f"layer-{l}.safetensors" for l in names]
