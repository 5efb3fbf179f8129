"""livedit's assistant: model loading, chat, and the MEMIT/D4S editing engine."""
