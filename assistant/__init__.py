"""The assistant: the model, the editing engine, its durable state and evaluation; config, errors, facts, the engine's CLI."""
