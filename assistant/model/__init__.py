"""The model itself: loading a Hugging Face causal LM, the architecture table, hooks, and chat generation."""
