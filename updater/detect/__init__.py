"""The detector: it asks the served model the curated facts that are due and queues the ones it gets wrong."""
