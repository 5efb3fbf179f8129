"""Fixtures for the unit tests: a tiny tokenizer, a tiny random Llama and GPT-2, a fake
shared-data folder, and livedit's directories pointed at temporary ones.

Nothing here touches the network: the tokenizer is trained on sentences made in code,
and the models are random, built from their configs and saved to a temporary folder.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"            # never reach a model hub
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

from assistant.config import load_config  # noqa: E402
from assistant.facts import make_fact  # noqa: E402

EOS, PAD = "<|endoftext|>", "<pad>"
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

SUBJECTS = ["Paris", "Berlin", "Tokyo", "Madrid", "Danielle Darrieux", "Toko Yasuda", "the Eiffel Tower",
            "Apple", "Marie Curie", "the Nile", "Lake Victoria", "Mount Fuji", "Johann Bach", "Ada Lovelace"]
OBJECTS = ["France", "Germany", "Japan", "Spain", "Italy", "Egypt", "music", "physics", "chemistry",
           "football", "English", "French", "the piano", "the violin", "London", "Rome"]
RELATIONS = ["is located in", "was born in", "speaks", "plays", "is known for", "works in",
             "is the capital of", "was founded in", "is famous for", "lives near"]
FILLERS = ["Many people say that", "In the old books,", "According to the records,", "It is often said that",
           "Everyone knows that", "Historians agree that", "The guide told us that", "On a quiet morning,"]
TAILS = ["and the river runs north.", "and the weather was mild.", "so the crowd went home.",
         "while the band kept playing.", "after a long winter.", "during the summer festival.",
         "before the war began.", "as the report explains."]


def english_sentences(count: int = 400, seed: int = 0) -> list[str]:
    """Plain English sentences built from word lists (deterministic)."""
    rng = random.Random(seed)
    return [f"{rng.choice(FILLERS)} {rng.choice(SUBJECTS)} {rng.choice(RELATIONS)} {rng.choice(OBJECTS)} "
            f"{rng.choice(TAILS)}" for _ in range(count)]


def build_tokenizer(sentences: list[str], chat_template: str | None = None, vocab_size: int = 600):
    """A byte-level BPE trained on ``sentences``, as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS, PAD],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    core.train_from_iterator(sentences + SUBJECTS + OBJECTS + RELATIONS, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token=EOS, pad_token=PAD)
    if chat_template:
        tokenizer.chat_template = chat_template
    return tokenizer


@pytest.fixture(scope="session")
def sentences() -> list[str]:
    return english_sentences()


@pytest.fixture(scope="session")
def tokenizer(sentences):
    return build_tokenizer(sentences)


@pytest.fixture(scope="session")
def chat_tokenizer(sentences):
    return build_tokenizer(sentences, chat_template=CHAT_TEMPLATE)


@pytest.fixture(scope="session")
def shared_data_dir(tmp_path_factory, sentences) -> Path:
    root = tmp_path_factory.mktemp("shared-data")
    wiki = root / "text" / "wikitext2_raw"
    wiki.mkdir(parents=True)
    lines = [" = Valkyria Chronicles = ", ""]
    for i, sentence in enumerate(sentences):
        lines.append(" " + sentence)
        if i % 50 == 49:
            lines += ["", f" = = Section {i // 50} = = ", ""]
    (wiki / "wiki.test.raw").write_text("\n".join(lines) + "\n", encoding="utf-8")
    me_ppl = root / "text" / "me_ppl"
    me_ppl.mkdir(parents=True)
    records = [{"Corpus": "generated", "Text": " ".join(sentences[i:i + 3])} for i in range(0, len(sentences), 3)]
    (me_ppl / "ME-PPL.json").write_text(json.dumps(records), encoding="utf-8")
    write_evaluation_data(root, sentences)
    return root


def counterfact_record(case_id: int) -> dict:
    """An EasyEdit CounterFact record over the tiny vocabulary."""
    subject, relation = SUBJECTS[case_id % len(SUBJECTS)], RELATIONS[case_id % len(RELATIONS)]
    neighbour = SUBJECTS[(case_id + 5) % len(SUBJECTS)]
    return {"case_id": case_id, "prompt": f"{subject} {relation}", "subject": subject,
            "target_new": OBJECTS[(3 * case_id + 1) % len(OBJECTS)], "ground_truth": OBJECTS[case_id % len(OBJECTS)],
            "rephrase_prompt": f"{FILLERS[case_id % len(FILLERS)]} {subject} {relation}",
            "locality_prompt": f"{neighbour} {relation}", "locality_ground_truth": OBJECTS[(case_id + 7) % len(OBJECTS)]}


def write_evaluation_data(root: Path, sentences: list[str]) -> None:
    """CounterFact, zsRE, MMLU, SST-2 and held-out text in the layout of ../shared/data."""
    (root / "counterfact").mkdir()
    (root / "counterfact" / "counterfact-edit-dev.json").write_text(
        json.dumps([counterfact_record(i) for i in range(40)]), encoding="utf-8")
    (root / "zsre").mkdir()
    zsre = [{"subject": s, "src": f"Where is {s}?", "answers": [OBJECTS[i % 16]], "alt": OBJECTS[(i + 3) % 16],
             "rephrase": f"Where can one find {s}?", "loc": f"nq question: what is {OBJECTS[(i + 5) % 16].lower()}",
             "loc_ans": OBJECTS[(i + 6) % 16]}
            for i, s in enumerate(SUBJECTS)]
    (root / "zsre" / "zsre_mend_eval_portability_gpt4.json").write_text(json.dumps(zsre), encoding="utf-8")
    tokenized = root / "text" / "wikitext2_tokenized"
    tokenized.mkdir(parents=True)
    (tokenized / "valid.txt").write_text("\n".join(f" {s} " for s in sentences[200:260]), encoding="utf-8")
    mmlu = root / "general" / "mmlu" / "test"
    mmlu.mkdir(parents=True)
    rows = ["question,choice0,choice1,choice2,choice3,answer"]
    rows += [f"Where is {s}?,{OBJECTS[i % 16]},{OBJECTS[(i + 1) % 16]},{OBJECTS[(i + 2) % 16]},{OBJECTS[(i + 3) % 16]},"
             f"{i % 4}" for i, s in enumerate(SUBJECTS)]
    (mmlu / "geography_test.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    sst2 = root / "general" / "sst2"
    sst2.mkdir(parents=True)
    reviews = [f"{s.lower()} {'good' if i % 2 else 'bad'}\t{i % 2}" for i, s in enumerate(sentences[:30])]
    (sst2 / "dev.tsv").write_text("sentence\tlabel\n" + "\n".join(reviews) + "\n", encoding="utf-8")


def _save_model(model, tokenizer, folder: Path) -> Path:
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory, tokenizer) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(1234)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    return _save_model(LlamaForCausalLM(config).eval(), tokenizer, tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def gpt2_dir(tmp_path_factory, tokenizer) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(4321)
    config = GPT2Config(n_embd=64, n_layer=4, n_head=4, n_positions=128, vocab_size=len(tokenizer),
                        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
    return _save_model(GPT2LMHeadModel(config).eval(), tokenizer, tmp_path_factory.mktemp("tiny-gpt2"))


@pytest.fixture(scope="session")
def sharp_llama_dir(tmp_path_factory, tokenizer, llama_dir) -> Path:
    """The tiny Llama with a 40x output head. The random head keeps every token near 1/V
    whatever the hidden state; this one lets an edit make its target likely."""
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(llama_dir)
    with torch.no_grad():
        model.lm_head.weight.mul_(40.0)
    return _save_model(model.eval(), tokenizer, tmp_path_factory.mktemp("sharp-llama"))


@pytest.fixture(scope="session")
def model_dirs(llama_dir, gpt2_dir, sharp_llama_dir) -> dict[str, Path]:
    return {"llama": llama_dir, "gpt2": gpt2_dir, "sharp-llama": sharp_llama_dir}


@pytest.fixture(autouse=True)
def livedit_dirs(request, tmp_path, monkeypatch):
    """LIVEDIT_HOME, LIVEDIT_STATE_DIR and LIVEDIT_SHARED_DATA in temporary folders, and one
    torch thread (the machine is small and shared). Integration tests keep their own setup."""
    if request.node.get_closest_marker("integration"):
        yield {}
        return
    shared = request.getfixturevalue("shared_data_dir")
    dirs = {"home": tmp_path / "home", "state": tmp_path / "state", "shared": shared}
    monkeypatch.setenv("LIVEDIT_HOME", str(dirs["home"]))
    monkeypatch.setenv("LIVEDIT_STATE_DIR", str(dirs["state"]))
    monkeypatch.setenv("LIVEDIT_SHARED_DATA", str(shared))
    monkeypatch.delenv("LIVEDIT_CONFIG", raising=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield dirs
    torch.set_num_threads(threads)


PER_KIND = ("mom2_weight", "steps", "learning_rate", "stop_probability", "refine_rounds", "refine_check")  # keys with a chat_ twin
EDITING = dict(layers=[1, 2], chat_layers=[], mom2_weight=10.0, steps=6, stop_probability=0.97, batch_size=4,
               context_prefixes=["", "Note: "], refine_rounds=0, refine_check="probability", lead_in_tokens=0,
               case_variants=False)


@pytest.fixture
def make_config(model_dirs):
    """make_config("llama", steps=3) -> the project's config on a tiny model, small settings."""
    def make(model: str = "llama", **editing):
        config = load_config()
        config = config.replace("model", path=str(model_dirs[model]), device="cpu", dtype="float32")
        editing = {**EDITING, **editing}
        for key in PER_KIND:                 # chat facts get the test's settings too, unless it gives their own
            if key in editing:
                editing.setdefault(f"chat_{key}", editing[key])
        config = config.replace("editing", **editing)
        # The text corpora alone: the fake zsRE file holds less than a third of 2000 tokens of chat turns.
        return config.replace("covariance", corpora=["wikitext2_raw", "me_ppl"], tokens=2000, sequence_length=32,
                              batch_size=8)
    return make


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)                  # a TOML basic string takes JSON's escapes
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key} = {toml_value(item)}" for key, item in value.items()) + "}"
    return repr(value)


def write_config_toml(path: Path, config, sections=("model", "covariance", "editing")) -> str:
    """A config.toml holding every key of ``config``'s given sections (for `livedit` runs of a test)."""
    lines = []
    for section in sections:
        lines.append(f"[{section}]")
        lines += [f"{key} = {toml_value(value)}" for key, value in dataclasses.asdict(getattr(config, section)).items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


@pytest.fixture
def open_engine(make_config, livedit_dirs):
    """open_engine("gpt2", method="d4s") -> an Editor on a freshly loaded tiny model."""
    from assistant.editing.editor import Editor

    opened = []

    def open_(model: str = "llama", method: str | None = None, state_dir: Path | None = None,
              loaded=None, config=None, **editing):
        config = config or make_config(model, **editing)
        editor = Editor.open(config, state_dir=state_dir or livedit_dirs["state"], method=method,
                             loaded=loaded, progress=False)
        opened.append(editor)
        return editor

    yield open_
    for editor in opened:
        editor.close()


def fact(index: int, subject: str | None = None, target: str | None = None, **extra):
    """A fact whose prompt holds its subject: "<subject> <relation>" -> target."""
    subject = subject or SUBJECTS[index % len(SUBJECTS)]
    relation = RELATIONS[index % len(RELATIONS)]
    return make_fact(id=extra.pop("id", f"fact-{index}"), subject=subject, prompt=f"{subject} {relation}",
                     target_new=target or OBJECTS[(3 * index + 1) % len(OBJECTS)], **extra)


@pytest.fixture
def new_fact():
    """new_fact(3, target="Rome") -> a valid Fact (see ``fact``)."""
    return fact


@pytest.fixture
def facts():
    return [fact(i) for i in range(4)]


# -- looking into an editor -----------------------------------------------------------------

def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    scale = b.norm().item() or 1.0
    return (a - b).norm().item() / scale


def snapshot(editor) -> dict:
    """Everything a rejected edit must leave as it was."""
    return {
        "served": editor.current_weights(),
        "shadow": {layer: editor.shadow_weights()[layer] for layer in editor.layers},
        "edits": [(e.id, e.fact, e.status) for e in editor.edits()],
        "generation": editor.generation,
        "sums": {name: t.clone() for name, t in editor.sums.tensors.items()},
        "files": sorted(p.name for p in editor.sums_dir.iterdir()) if editor.sums_dir.exists() else [],
        "l1_rows": len(editor.l1_history()),
    }


def assert_unchanged(editor, before: dict) -> None:
    after = snapshot(editor)
    for layer in editor.layers:
        assert torch.equal(after["served"][layer], before["served"][layer]), f"served layer {layer} changed"
        assert torch.equal(after["shadow"][layer], before["served"][layer]), f"shadow layer {layer} not restored"
    assert after["edits"] == before["edits"]
    assert after["generation"] == before["generation"]
    assert after["files"] == before["files"]
    assert after["l1_rows"] == before["l1_rows"]
    assert after["sums"].keys() == before["sums"].keys()
    for name, tensor in before["sums"].items():
        assert torch.equal(after["sums"][name], tensor), f"sums {name} changed"


def sums_of_active_edits(editor) -> dict[str, torch.Tensor]:
    """D4S sums rebuilt from the ledger: S_l = sum r k^T, T_l = sum k k^T over active edits,
    G_l = sum r k^T over the active chat edits (the gated share), and GK_l, GR_l their columns
    in the order the edits were made."""
    is_column = lambda name: name.startswith(("GK.", "GR."))  # noqa: E731
    expected = {name: torch.zeros_like(t) for name, t in editor.sums.tensors.items() if not is_column(name)}
    columns = {name: [t[:, :0]] for name, t in editor.sums.tensors.items() if is_column(name)}
    for record in editor.edits("active"):
        for layer, (k, r) in editor.vectors(record.id).items():
            expected[f"S.{layer}"] += r @ k.T
            expected[f"T.{layer}"] += k @ k.T
            if record.fact.question:
                expected[f"G.{layer}"] += r @ k.T
                columns[f"GK.{layer}"].append(k)
                columns[f"GR.{layer}"].append(r)
    return {**expected, **{name: torch.cat(parts, dim=1) for name, parts in columns.items()}}


@pytest.fixture
def inspect():
    """Helpers that look into an editor: snapshot, assert_unchanged, sums_of_active_edits, relative_error."""
    import types
    return types.SimpleNamespace(snapshot=snapshot, assert_unchanged=assert_unchanged,
                                 sums_of_active_edits=sums_of_active_edits, relative_error=relative_error)
