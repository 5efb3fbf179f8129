"""Process-wide settings belong to the entry points: the library leaves torch's threads and
matplotlib's backend alone, and `livedit` and the benchmark scripts apply [model] threads."""

import os

import matplotlib
import torch

from assistant.model.loading import load_model
from livedit.cli import main


def test_loading_a_model_leaves_torch_threads_alone(make_config):
    before = torch.get_num_threads()               # 1: the autouse fixture's
    config = make_config("llama").replace("model", threads=before + 2)
    load_model(config)
    assert torch.get_num_threads() == before


def test_the_cli_applies_model_threads(capsys, monkeypatch):
    before = torch.get_num_threads()               # the autouse fixture puts the count back afterwards
    monkeypatch.delenv("MPLBACKEND", raising=False)
    assert main(["status"]) == 0                   # [model] threads = 0: torch's count is kept
    assert torch.get_num_threads() == before
    assert os.environ["MPLBACKEND"] == "Agg"
    assert main(["--set", f"model.threads={before + 2}", "status"]) == 0
    assert "0 active edit(s)" in capsys.readouterr().out
    assert torch.get_num_threads() == before + 2


def test_the_benchmark_scripts_apply_model_threads():
    from benchmarks.common import configured

    before = torch.get_num_threads()
    config = configured([f"model.threads={before + 3}"])
    assert config.model.threads == before + 3 and torch.get_num_threads() == before + 3


def test_plotting_leaves_the_matplotlib_backend_to_the_process(monkeypatch, tmp_path):
    from assistant.evaluation.report import plot_l1

    chosen = []
    monkeypatch.setattr(matplotlib, "use", lambda *args, **kwargs: chosen.append(args))
    run = {"plan": {"dataset": "counterfact", "method": "d4s"},
           "checkpoints": [{"edits": 0, "l1_growth": {"1": 0.0}}, {"edits": 2, "l1_growth": {"1": 0.01}}]}
    plot_l1([run], tmp_path / "l1.png")
    assert chosen == [] and (tmp_path / "l1.png").stat().st_size > 0
