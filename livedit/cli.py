"""`livedit`: one parser for every command. The config is built here once, for every command,
and domain errors become one-line messages here, and only here."""

from __future__ import annotations

import argparse
import logging
import os
import sys

import assistant.cli
import livedit.serve
import updater.cli
from assistant.config import build_config
from assistant.errors import LiveditError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="livedit", description="A chat model that keeps learning corrections.")
    parser.add_argument("--config", dest="config_file", metavar="FILE",
                        help="config.toml to use (default: LIVEDIT_CONFIG or the project's own)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a config key, e.g. --set editing.mom2_weight=1500 (repeatable)")
    parser.add_argument("--state-dir", help="edit state directory (default: LIVEDIT_STATE_DIR or $LIVEDIT_HOME/state)")
    parser.add_argument("--model", help="a local Hugging Face model directory instead of the default model")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what the engine does")
    commands = parser.add_subparsers(dest="command", required=True)
    assistant.cli.register(commands)
    updater.cli.register(commands)
    livedit.serve.register(commands)
    return parser


def _set_up_process(args) -> None:
    """The process-wide settings that libraries must not change: logging, offline hubs,
    matplotlib's file-only backend, and torch's CPU threads ([model] threads of args.config)."""
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("MPLBACKEND", "Agg")         # plots are only written to files
    if args.quiet:
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if args.config.model.threads:
        import torch                                    # only then: most commands never load torch
        torch.set_num_threads(args.config.model.threads)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.config = build_config(args.config_file, args.set, args.model)
        _set_up_process(args)
        args.run(args)
    except LiveditError as error:
        print(f"livedit: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("livedit: interrupted; committed edits are kept", file=sys.stderr)
        return 130
    return 0
