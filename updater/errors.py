"""The updater's domain errors, all subclasses of assistant.errors.LiveditError."""

from assistant.errors import InvalidFact, LiveditError, StateError


class FactNotFound(LiveditError):
    """No curated fact (or no such version of it) has the requested id."""


class DuplicateFact(InvalidFact):
    """A fact id is given twice in one import, or is added although it already exists."""


class ItemNotFound(LiveditError):
    """No edit-queue item has the requested id."""


class IllegalTransition(StateError):
    """An edit-queue item cannot move from its current state to the requested one."""


class StaleProposal(StateError):
    """A proposal is for an older version of a fact than one already pending."""
