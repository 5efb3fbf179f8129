"""The web page `livedit serve` shows: a chat with the live edited model.

``build_app(services)`` returns the Blocks; importing this module launches nothing. The
callbacks are plain generator functions over ``services`` so tests can call them.
"""

from __future__ import annotations

import gradio as gr

from assistant.errors import LiveditError

MAX_QUESTION_CHARS = 2000


def respond(services, question: str, history: list[dict]):
    """Stream one answer into the chat history (a list of role/content messages)."""
    question = (question or "").strip()
    if not question:
        yield history, ""
        return
    if len(question) > MAX_QUESTION_CHARS:
        note = f"Please keep a question under {MAX_QUESTION_CHARS} characters (this one has {len(question)})."
        yield history + [{"role": "assistant", "content": note}], question
        return
    history = history + [{"role": "user", "content": question}, {"role": "assistant", "content": ""}]
    try:
        for text in services.chat(question):
            history[-1] = {"role": "assistant", "content": text}
            yield history, ""
    except LiveditError as error:
        history[-1] = {"role": "assistant", "content": f"⚠️ {error}"}
        yield history, ""


def status_text(services) -> str:
    progress = services.progress
    share = "" if progress.fraction is None else f" ({progress.fraction:.0%})"
    return f"**{progress.stage}**: {progress.message}{share}"


def build_app(services) -> gr.Blocks:
    with gr.Blocks(title="livedit") as app:
        gr.Markdown("# livedit\nA chat assistant that keeps learning corrections while it serves.")
        status = gr.Markdown(status_text(services))
        chatbot = gr.Chatbot(label="Chat", height=480, feedback_options=None)
        question = gr.Textbox(label="Your question", placeholder="Ask something, then press Enter",
                              max_length=MAX_QUESTION_CHARS)
        question.submit(lambda q, h: (yield from respond(services, q, h)), [question, chatbot],
                        [chatbot, question], api_name="chat")
        gr.Timer(2.0).tick(lambda: status_text(services), None, status, api_name=False)
    return app
