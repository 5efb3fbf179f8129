"""The model itself: loading a Hugging Face causal LM, the architecture table, hooks, chat, the chat/weight-swap lock."""
