"""The updater's commands: facts, queue, detect, apply and correct."""

from updater.cli import correct, knowledge, model, queue


def register(commands) -> None:
    """Add the updater's commands to the `livedit` subcommands."""
    for group in (knowledge, queue, correct, model):
        group.register(commands)
