"""The web UI that `livedit serve` shows: for now a minimal Gradio chat page (app.py, build_app(services))."""
