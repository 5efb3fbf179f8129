"""The domain errors of livedit. They become user messages only at the edge (CLI, UI)."""


class LiveditError(Exception):
    """Base class: every error a user can act on."""


class ConfigError(LiveditError):
    """config.toml has an unknown key, a bad value, or a bad combination."""


class InvalidFact(LiveditError):
    """A fact record cannot be edited as given; the message names the record."""


class EditRejected(LiveditError):
    """An edit was computed but refused (non-finite weights, guard bounds, ...)."""


class ModelNotReady(LiveditError):
    """The model or its data (weights, corpus, state) is missing or does not match."""


class StateError(LiveditError):
    """The durable state directory is inconsistent with the request."""


class GenerationStalled(LiveditError):
    """The model produced no new token for too long while streaming an answer."""
