"""Shared plumbing for the benchmark scripts: data slices, config overrides, results."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from assistant.config import Config, EditingConfig, load_config, with_overrides
from assistant.editing.editor import Editor
from assistant.evaluation.bench import environment as bench_environment
from assistant.evaluation.bench import write_json  # noqa: F401  (the scripts' one writer of results)
from assistant.evaluation.datasets import load_edit_facts
from assistant.facts import Fact

RESULTS = Path(__file__).resolve().parent / "results"


def load_slice(config: Config, name: str, start: int, count: int) -> list[Fact]:
    return load_edit_facts(config.paths.shared_data_dir(), name, start, count)


def configured(overrides: list[str]) -> Config:
    """The config with the overrides, and the process set up by it: every script starts here."""
    config = with_overrides(load_config(), overrides)
    set_up_process(config)
    return config


def set_up_process(config: Config) -> None:
    """What the library leaves to entry points: torch's CPU threads ([model] threads) and
    matplotlib's file-only backend."""
    os.environ.setdefault("MPLBACKEND", "Agg")
    if config.model.threads:
        torch.set_num_threads(config.model.threads)


def common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a config.toml key, e.g. editing.mom2_weight=150")
    parser.add_argument("--state-dir", required=True, help="a fresh state directory for this run")
    parser.add_argument("--out", required=True, help="JSON results file")


def started(parser: argparse.ArgumentParser) -> tuple[argparse.Namespace, Config, dict]:
    """(arguments, config, environment) of a script whose parser has ``common_arguments``: the
    config set up by its --set overrides, and the environment recorded before anything runs."""
    args = parser.parse_args()
    config = configured(args.set)
    return args, config, environment()


def one_batch_arguments(parser: argparse.ArgumentParser) -> None:
    """--data, --start and --count of a benchmark that studies one batch (the chat tuning slice by default)."""
    parser.add_argument("--data", default="qaedit")
    parser.add_argument("--start", type=int, default=100)
    parser.add_argument("--count", type=int, default=16)
    common_arguments(parser)


def open_one_batch(args: argparse.Namespace) -> tuple[Config, dict, Editor, list[Fact], EditingConfig]:
    """(config, environment, editor, facts, the settings of the facts' kind) of a one-batch
    benchmark's arguments; the environment is recorded before anything runs."""
    config = configured(args.set)
    started_in = environment()
    editor = Editor.open(config, state_dir=args.state_dir)
    facts = load_slice(config, args.data, args.start, args.count)
    return config, started_in, editor, facts, editor.editing.for_kind(bool(facts[0].question))


def environment() -> dict:
    """The machine, the library versions and the commit (assistant.evaluation.bench.environment)."""
    return bench_environment()
