"""The updater's commands: facts, queue, detect, apply, correct and jobs."""

from updater.cli import correct, jobs, knowledge, model, queue


def register(commands) -> None:
    """Add the updater's commands to the `livedit` subcommands."""
    for group in (knowledge, queue, correct, model, jobs):
        group.register(commands)
