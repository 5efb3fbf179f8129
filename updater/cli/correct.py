"""`livedit correct`: a correction from chat, shown as a candidate fact, queued once confirmed."""

from __future__ import annotations

import sys

from updater.cli.context import default_user


def _extraction_llm(config):
    """The served model as a LangChain LLM, or None (with a warning) when it cannot be loaded."""
    from assistant.errors import ModelNotReady
    from assistant.model.loading import load_model
    from updater.intake.model import huggingface_llm

    print("loading the model to help with the extraction (--no-model skips this)", file=sys.stderr)
    try:
        loaded = load_model(config)
    except ModelNotReady as error:
        print(f"livedit: warning: {error}; using the deterministic extraction", file=sys.stderr)
        return None
    return huggingface_llm(loaded.model, loaded.tokenizer)


def _confirmed(prompt: str) -> bool:
    try:
        return input(prompt).strip().casefold() in ("y", "yes")
    except EOFError:
        return False


def cmd_correct(args) -> None:
    from updater.intake.corrections import CorrectionIntake
    from updater.queue import EditQueue
    from updater.store.knowledge import KnowledgeStore

    config = args.config
    with KnowledgeStore.open(config) as store, EditQueue.open(config) as queue:
        llm = None if args.no_model else _extraction_llm(config)
        intake = CorrectionIntake(store, queue, llm=llm)
        candidate = intake.propose_correction(args.question, args.answer, args.correction, use_model=llm is not None)
        candidate = intake.revise(candidate, subject=args.subject, prompt=args.prompt, new_object=args.object)
        print("candidate fact:")
        for line in candidate.describe():
            print(f"  {line}")
        if not (args.yes or _confirmed("queue this correction? [y/N] ")):
            print("not queued")
            return
        item = intake.confirm(candidate, who=args.who)
    print(f"queued item {item.id} ({item.state}): fact {item.fact_id} "
          f"{item.prompt.replace('{}', item.subject)!r} -> {item.new_object!r}")


def register(commands) -> None:
    """Add `correct` to the `livedit` subcommands."""
    correct = commands.add_parser("correct", help="turn a correction from chat into a queued fact, once confirmed")
    correct.add_argument("--question", required=True, help="the question the user asked")
    correct.add_argument("--answer", required=True, help="what the model answered")
    correct.add_argument("--correction", required=True, help="what the user wrote, e.g. \"No, it's English\"")
    correct.add_argument("--yes", action="store_true", help="queue the candidate without asking")
    correct.add_argument("--no-model", action="store_true", help="only the deterministic extraction (no model)")
    correct.add_argument("--subject", help="use this subject instead of the extracted one")
    correct.add_argument("--prompt", help="use this cloze prompt ({} or the subject written out)")
    correct.add_argument("--object", help="use this new answer instead of the extracted one")
    correct.add_argument("--who", default=default_user(), help="who confirms it (default: the OS user)")
    correct.set_defaults(run=cmd_correct)
