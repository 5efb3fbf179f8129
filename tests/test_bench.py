"""`livedit bench` on a tiny random Llama: checkpoints, resuming, MQD data and the report."""

import json
import math
import statistics

import pytest

from assistant.editing.editor import Editor
from assistant.evaluation.bench import BenchPlan, run_bench
from assistant.evaluation.report import changed_layers, mean_growth, model_perspective, write_report
from livedit.cli import main
from assistant.evaluation.datasets import edit_records, heldout_text, load_edit_facts, mmlu_items, sst2_items
from assistant.evaluation.metrics import choice_accuracy, counterfact_scores, perplexity
from assistant.errors import ConfigError
from assistant.facts import fact_from_record
from assistant.model.loading import load_model

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
    assert partial["edit_seconds"] > 0                                   # the first batch's time was saved

    results = run_bench(config, plan, tmp_path / "out", tmp_path / "state", report=seen.append)
    assert [p["edits"] for p in results["checkpoints"]] == [0, 2, 4]     # the interrupted checkpoint is made up
    assert not any("2/4 edits" in text for text in seen[seen.index(next(t for t in seen if "measuring" in t)) + 2:])
    last = results["checkpoints"][-1]
    for key in ("efficacy", "paraphrase", "neighborhood", "perplexity", "fluency", "mmlu", "sst2"):
        assert isinstance(last[key], float), key
    assert set(last["l1_growth"]) == {"1", "2"} and max(last["l1_growth"].values()) > 0
    assert results["checkpoints"][0]["l1_growth"] == {"1": 0.0, "2": 0.0}
    assert last["seconds_per_edit"] > 0
    assert len(results["target_perplexity"]["per_fact"]) == 4
    assert results["covariance"]["corpora"] == config.covariance.corpora   # which C the run edited with
    facts = load_edit_facts(config.paths.shared_data_dir(), "counterfact", 0, 4)
    assert_measured(results["checkpoints"][0], *unedited(config), config, facts, facts, plan)
    with Editor.open(config, state_dir=tmp_path / "state", progress=False) as editor:   # the model after 4 edits
        assert_measured(last, editor.model, editor.tokenizer, config, facts, facts, plan)

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
    edited = results["checkpoints"][1:]
    growth = [statistics.fmean(p["l1_growth"].values()) for p in edited]    # both layers change with every batch
    efficacy = [p["efficacy"] for p in edited]
    assert view["points"] == 2 and view["efficacy"] == efficacy and view["growth"] == pytest.approx(growth)
    if len(set(efficacy)) > 1:                     # two points: r is +1 or -1, the sign of the joint change
        assert view["pearson"] == pytest.approx(statistics.correlation(growth, efficacy))
    else:                                          # a constant side has no correlation
        assert math.isnan(view["pearson"]) and math.isnan(view["spearman"])


def unedited(config) -> tuple:
    loaded = load_model(config)
    return loaded.model, loaded.tokenizer


def assert_measured(point: dict, model, tokenizer, config, facts, probes, plan: BenchPlan) -> None:
    """A checkpoint's figures are this model's, computed directly: efficacy and paraphrase on
    the run's facts, neighbourhood specificity on ``probes``, and the general tasks."""
    shared = config.paths.shared_data_dir()
    edits, hood = counterfact_scores(model, tokenizer, facts), counterfact_scores(model, tokenizer, probes)
    assert (point["efficacy"], point["paraphrase"], point["efficacy_magnitude"]) == pytest.approx(
        (edits.efficacy, edits.paraphrase, edits.efficacy_magnitude))
    assert (point["neighborhood"], point["neighborhood_magnitude"]) == pytest.approx(
        (hood.neighborhood, hood.neighborhood_magnitude))
    assert point["perplexity"] == pytest.approx(perplexity(model, tokenizer, heldout_text(shared, plan.heldout_lines)))
    for task, items in (("mmlu", mmlu_items(shared, plan.general_items, plan.seed)),
                        ("sst2", sst2_items(shared, plan.general_items, plan.seed))):
        right = choice_accuracy(model, tokenizer, [i.prompt for i in items], [list(i.options) for i in items],
                                [i.answer for i in items])
        assert point[task] == pytest.approx(right), task


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
    config = make_config("llama")
    plan = BenchPlan(method="memit-seq", dataset="mqd-yesno", **{**SMALL, "count": 2})
    results = run_bench(config, plan, tmp_path / "out", tmp_path / "state", report=lambda t: None)
    assert [p["edits"] for p in results["checkpoints"]] == [0, 2]
    assert results["plan"]["dataset"] == "mqd-yesno"
    shared = config.paths.shared_data_dir()
    facts = load_edit_facts(shared, "mqd-yesno", 0, 2)
    twins = [fact_from_record(r) for r in edit_records(shared, "counterfact")[:2]]   # cases 0 and 1 behind them
    assert [f.id for f in facts] == ["mqd-yesno-0", "mqd-yesno-1"] and not any(f.neighborhood for f in facts)
    assert_measured(results["checkpoints"][0], *unedited(config), config, facts, twins, plan)
    with Editor.open(config, state_dir=tmp_path / "state", progress=False) as editor:
        assert_measured(results["checkpoints"][-1], editor.model, editor.tokenizer, config, facts, twins, plan)


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


def test_chat_runs_measure_answers_rephrasings_and_locality(make_config, tmp_path):
    from assistant.evaluation.locality import locality_reference, measure_locality, unrelated_questions
    from assistant.evaluation.metrics import chat_scores

    config = make_config("llama")
    plan = BenchPlan(method="d4s", dataset="counterfact", chat=True, general_questions=3, **{**SMALL, "count": 2})
    results = run_bench(config, plan, tmp_path / "out", tmp_path / "state", report=lambda t: None)
    first, last = results["checkpoints"][0], results["checkpoints"][-1]
    assert first["chat_locality"]["agreement"] == 1.0                         # the unedited model against itself
    assert first["chat_locality"]["kept"] == first["chat_locality"]["questions"]
    shared = config.paths.shared_data_dir()
    facts = load_edit_facts(shared, "counterfact", 0, 2)
    questions = unrelated_questions(facts, shared, 3)
    assert len(questions) == 5                                                # 2 neighbours and 3 general ones
    base, tok = unedited(config)
    ref = locality_reference(base, tok, questions, 32)
    with Editor.open(config, state_dir=tmp_path / "state", progress=False) as editor:
        direct = measure_locality(editor.model, tok, ref).to_json()
        scores = chat_scores(editor.model, tok, facts, 32).to_json()
    local = last["chat_locality"]
    assert (local["kept"], local["questions"]) == (direct["kept"], direct["questions"])
    assert (local["agreement"], local["kl"]) == pytest.approx((direct["agreement"], direct["kl"]))
    assert last["chat"] == scores and last["chat_efficacy"] == scores["efficacy"]
    assert last["chat_locality"]["agreement"] < 1.0                           # two edits move a tiny model
    text = write_report(tmp_path / "out").read_text()
    assert "## Chat: answers, rephrasings and locality" in text
    assert f"| {last['chat_locality']['agreement']:.3f} |" in text


def test_every_result_records_the_commit_it_was_made_from(monkeypatch):
    import subprocess

    from assistant.evaluation.bench import environment

    monkeypatch.setenv("LIVEDIT_COMMIT", "abc1234")
    assert environment()["commit"] == "abc1234"
    monkeypatch.delenv("LIVEDIT_COMMIT")
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    if not head:
        pytest.skip("this copy has no git checkout")
    assert environment()["commit"].startswith(head)
