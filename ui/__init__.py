"""The web app `livedit serve` shows: the chat with feedback and corrections, and the operations console."""
