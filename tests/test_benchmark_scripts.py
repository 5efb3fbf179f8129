"""The one-batch benchmark scripts run end to end on a tiny model and write what they claim."""

import json
import sys

import pytest
import torch

from benchmarks import gated_locality, l1_split, ridge_replay, target_convergence, target_speed
from benchmarks.target_convergence import passed_at_step
from tests.conftest import write_config_toml


def _run(script, monkeypatch, tmp_path, name: str, data: str, *extra: str) -> dict:
    out = tmp_path / f"{name}.json"
    monkeypatch.setattr(sys, "argv", [name, "--data", data, "--start", "0", "--count", "3",
                                      "--state-dir", str(tmp_path / name), "--out", str(out), *extra])
    script.main()
    return json.loads(out.read_text())


def test_a_fact_passes_at_the_first_step_that_reaches_the_stop_probability():
    trajectory = [[0.1, 0.2, 0.0], [0.5, 0.9, 0.1], [0.95, 0.97, 0.2], [0.97, 0.98, 0.3]]
    assert passed_at_step(trajectory, 0.97) == [4, 3, None]
    assert passed_at_step(trajectory, 0.5) == [2, 2, None]
    assert passed_at_step([], 0.5) == []


def test_target_convergence_records_every_step_of_every_fact(make_config, monkeypatch, tmp_path):
    config = make_config("sharp-llama", steps=12, stop_probability=0.99)
    monkeypatch.setenv("LIVEDIT_CONFIG", write_config_toml(tmp_path / "config.toml", config))
    result = _run(target_convergence, monkeypatch, tmp_path, "convergence", "counterfact")
    assert result["count"] == 3 and result["steps"] == 12 == result["settings"]["steps"]
    trajectory = result["probability_by_step"]
    assert len(trajectory) == 12 and all(len(row) == 3 for row in trajectory)
    assert trajectory[-1] == result["final_probability"]
    assert result["passed_at_step"] == passed_at_step(trajectory, 0.99)
    assert all(later >= earlier for earlier, later in zip(trajectory[0], trajectory[-1]))   # it optimises
    assert result["environment"]["commit"]


def test_target_speed_times_the_three_ways_and_counts_the_padding(make_config, monkeypatch, tmp_path):
    config = make_config("llama")
    monkeypatch.setenv("LIVEDIT_CONFIG", write_config_toml(tmp_path / "config.toml", config))
    result = _run(target_speed, monkeypatch, tmp_path, "speed", "zsre", "--repeats", "1")
    assert set(result["median_seconds"]) == {"computed", "replayed", "replayed_by_width"}
    assert all(seconds > 0 for seconds in result["median_seconds"].values())
    padded = result["padded_suffix_tokens"]
    assert result["suffix_tokens"] <= padded["by_width"] <= padded["one_pass"]     # a pass costs 64 tokens here
    assert padded["one_pass"] % result["rows"] == 0 and padded["one_pass"] > result["suffix_tokens"]
    assert result["passes_by_width"] >= 1


def test_gated_locality_replays_both_gates_on_the_edited_state(make_config, monkeypatch, tmp_path):
    """It edits the facts, then scores no gate, the summed gate and the gate edit by edit; the
    edits' columns give the state's change (else it refuses), and a threshold no term reaches
    scores as the unedited model (agreement 1)."""
    config = make_config("llama", gate=0.4, gate_by="edit")
    monkeypatch.setenv("LIVEDIT_CONFIG", write_config_toml(tmp_path / "config.toml", config))
    result = _run(gated_locality, monkeypatch, tmp_path, "gated", "zsre", "--thresholds", "0.4",
                  "--edit-thresholds", "0.4,1e9", "--general-questions", "2", "--max-new-tokens", "4")
    assert [(row["gate"], row["threshold"]) for row in result["rows"]] == [
        ("none", None), ("sum", 0.4), ("edit", 0.4), ("edit", 1e9)]
    assert result["edited_here"] == 3 and result["config"]["gate"] == 0.0       # the rows apply their own gate
    assert result["rows"][-1]["locality"]["agreement"] == 1.0
    assert set(result["edit_change_ratios"]) == {"edited", "rephrased", "unrelated"}
    for kind, layers in result["edit_change_ratios"].items():       # each kind saw some edit's term
        assert all(found["max"] > 0 for found in layers.values())


def test_l1_split_reads_an_edited_state_and_splits_each_layers_growth(make_config, monkeypatch, tmp_path,
                                                                       open_engine, new_fact):
    config = make_config("llama")
    monkeypatch.setenv("LIVEDIT_CONFIG", write_config_toml(tmp_path / "config.toml", config))
    state = tmp_path / "state"
    editor = open_engine("llama", state_dir=state)
    editor.apply([new_fact(i) for i in range(3)])
    growth = {n.layer: n.growth for n in editor.norms()}
    editor.close()
    out = tmp_path / "split.json"
    monkeypatch.setattr(sys, "argv", ["l1_split", "--state-dir", str(state), "--out", str(out)])
    l1_split.main()
    result = json.loads(out.read_text())
    assert result["active_edits"] == 3 and sorted(map(int, result["layers"])) == sorted(growth)
    for layer, split in result["layers"].items():
        assert split["growth"] == pytest.approx(growth[int(layer)], abs=1e-9)
        assert split["first_order"] + split["sign_flips"] == pytest.approx(split["growth"])


def test_realised_shares_project_each_change_on_its_residual():
    K = torch.eye(3, dtype=torch.float64)[:, :2]                # keys e1, e2
    R = torch.tensor([[2.0, 0.0], [0.0, 4.0]], dtype=torch.float64)
    delta = torch.tensor([[1.0, 0.0, 5.0], [0.0, 4.0, 0.0]], dtype=torch.float64)   # half of r1, all of r2
    assert ridge_replay.realised_shares(delta, K, R).tolist() == [0.5, 1.0]


def test_ridge_replay_gives_the_states_own_growth_at_ridge_zero_and_realises_less_with_more(
        make_config, monkeypatch, tmp_path, open_engine, new_fact):
    config = make_config("llama")
    monkeypatch.setenv("LIVEDIT_CONFIG", write_config_toml(tmp_path / "config.toml", config))
    state = tmp_path / "state"
    editor = open_engine("llama", state_dir=state)
    editor.apply([new_fact(i, question=f"Where is {new_fact(i).subject}?") for i in range(3)])
    growth = {n.layer: n.growth for n in editor.norms()}
    editor.close()
    out = tmp_path / "ridges.json"
    monkeypatch.setattr(sys, "argv", ["ridge_replay", "--state-dir", str(state), "--ridges", "0,50",
                                      "--out", str(out)])
    ridge_replay.main()
    result = json.loads(out.read_text())
    assert result["chat_edits"] == 3 and sorted(map(int, result["layers"])) == sorted(growth)
    for layer, (plain, lifted) in result["layers"].items():
        assert plain["l1_growth"] == pytest.approx(growth[int(layer)], rel=1e-4, abs=1e-7)
        assert lifted["realised_median"] < plain["realised_median"] - 0.01
        assert lifted["l1_growth"] < plain["l1_growth"]
