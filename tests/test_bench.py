"""`livedit bench` on a tiny random Llama: checkpoints, resuming, MQD data and the report."""

import json

import pytest

from assistant.evaluation.bench import BenchPlan, run_bench
from assistant.evaluation.report import changed_layers, mean_growth, model_perspective, write_report
from livedit.cli import main
from assistant.evaluation.datasets import load_edit_facts, mmlu_items, sst2_items
from assistant.errors import ConfigError

SMALL = dict(count=4, batch_size=2, every=2, general_items=6, heldout_lines=10, fluency_prompts=2, fluency_tokens=8)


class Interrupt(Exception):
    pass


def test_bench_checkpoints_every_k_edits_and_resumes(make_config, tmp_path):
    config = make_config("llama")
    plan = BenchPlan(method="d4s", dataset="counterfact", **SMALL)
    seen = []

    def stop_after_first_batch(text):
        seen.append(text)
        if "2/4 edits" in text:
            raise Interrupt

    with pytest.raises(Interrupt):
        run_bench(config, plan, tmp_path / "out", tmp_path / "state", report=stop_after_first_batch)
    partial = json.loads((tmp_path / "out" / f"{plan.name}.json").read_text())
    assert [p["edits"] for p in partial["checkpoints"]] == [0]
    assert partial["edit_seconds"] > 0 or partial["checkpoints"]

    results = run_bench(config, plan, tmp_path / "out", tmp_path / "state", report=seen.append)
    assert [p["edits"] for p in results["checkpoints"]] == [0, 2, 4]     # the interrupted checkpoint is made up
    assert not any("2/4 edits" in text for text in seen[seen.index(next(t for t in seen if "measuring" in t)) + 2:])
    last = results["checkpoints"][-1]
    for key in ("efficacy", "paraphrase", "neighborhood", "perplexity", "fluency", "mmlu", "sst2"):
        assert isinstance(last[key], float), key
    assert last["perplexity"] > 1 and 0 <= last["mmlu"] <= 1
    assert set(last["l1_growth"]) == {"1", "2"} and max(last["l1_growth"].values()) > 0
    assert results["checkpoints"][0]["l1_growth"] == {"1": 0.0, "2": 0.0}
    assert last["seconds_per_edit"] > 0
    assert len(results["target_perplexity"]["per_fact"]) == 4
    assert results["covariance"]["corpora"] == config.covariance.corpora   # which C the run edited with

    again = run_bench(config, plan, tmp_path / "out", tmp_path / "state", report=lambda text: None)
    assert again["checkpoints"] == results["checkpoints"]                 # finished: nothing more to do

    with pytest.raises(ConfigError, match="different plan"):
        run_bench(config, BenchPlan(method="d4s", dataset="counterfact", **{**SMALL, "general_items": 5}),
                  tmp_path / "out", tmp_path / "state")

    report = write_report(tmp_path / "out")
    text = report.read_text()
    assert "| counterfact d4s | 4 |" in text and "counterfact unedited" in text
    for png in ("metrics.png", "l1.png", "model-perspective.png"):
        assert (tmp_path / "out" / png).stat().st_size > 1000
    view = model_perspective(results)
    assert view["points"] == 2 and -1 <= view["pearson"] <= 1 or view["pearson"] != view["pearson"]


def test_growth_summaries_leave_out_tracked_layers_no_edit_changed():
    # a cloze run tracks the chat layers 8 and 9 too, but its edits only change 3 and 4
    run = {"checkpoints": [{"l1_growth": {"3": 0.0, "4": 0.0, "8": 0.0, "9": 0.0}},
                           {"l1_growth": {"3": 0.01, "4": 0.03, "8": 0.0, "9": 0.0}}]}
    assert mean_growth(run["checkpoints"][1]) == pytest.approx(0.02)
    assert mean_growth(run["checkpoints"][0]) == 0.0
    assert changed_layers([run]) == ["3", "4"]
    untouched = {"checkpoints": [{"l1_growth": {"3": 0.0, "4": 0.0}}]}
    assert changed_layers([untouched]) == ["3", "4"]


def test_mqd_runs_score_neighbourhood_on_the_counterfact_twins(make_config, tmp_path):
    plan = BenchPlan(method="memit-seq", dataset="mqd-yesno", **{**SMALL, "count": 2})
    results = run_bench(make_config("llama"), plan, tmp_path / "out", tmp_path / "state", report=lambda t: None)
    assert [p["edits"] for p in results["checkpoints"]] == [0, 2]
    assert results["plan"]["dataset"] == "mqd-yesno"
    assert 0 <= results["checkpoints"][-1]["neighborhood"] <= 1


def test_data_slices_and_general_samples(livedit_dirs, tokenizer):
    shared = livedit_dirs["shared"]
    facts = load_edit_facts(shared, "counterfact", 3, 5)
    assert [f.id for f in facts] == [f"cf-{i}" for i in range(3, 8)]
    one_token = load_edit_facts(shared, "mqd-direct", 0, 3, token_lengths=(1, 1), tokenizer=tokenizer)
    assert all(len(tokenizer(" " + f.target_new, add_special_tokens=False).input_ids) == 1 for f in one_token)
    with pytest.raises(ConfigError, match="only"):
        load_edit_facts(shared, "counterfact", 30, 50)
    with pytest.raises(ConfigError, match="unknown data set"):
        load_edit_facts(shared, "trivia", 0, 1)
    mmlu = mmlu_items(shared, 5, seed=1)
    assert len(mmlu) == 5 and mmlu == mmlu_items(shared, 5, seed=1) and all(i.options == ("A", "B", "C", "D")
                                                                             for i in mmlu)
    assert mmlu[0].prompt.endswith("\nAnswer:") and "about geography" in mmlu[0].prompt
    sst2 = sst2_items(shared, 6)
    assert len(sst2) == 6 and sst2[0].prompt.count("Sentiment:") == 5 and sst2[0].options == ("negative", "positive")


def test_bench_cli_rejects_bad_arguments(capsys, tmp_path):
    assert main(["bench", "--method", "d4s", "--target-tokens", "1-2-3", "--out", str(tmp_path)]) == 2
    assert "--target-tokens" in capsys.readouterr().err
    assert main(["bench", "--method", "d4s", "--dataset", "trivia", "--out", str(tmp_path)]) == 2
    assert "trivia" in capsys.readouterr().err
    assert main(["bench", "--report-only", "--out", str(tmp_path)]) == 2
    assert "no benchmark results" in capsys.readouterr().err
