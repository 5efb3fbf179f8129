"""The chat page: streaming answers, like and dislike, and "Correct this".

The callbacks are plain functions over ``services`` (see livedit.services.Services) so tests
call them directly. Every text shown in the chat is HTML-escaped first: a message holding
``<script>`` is shown as those characters, never run or dropped.
"""

from __future__ import annotations

import html

import gradio as gr

from assistant.errors import LiveditError

MAX_QUESTION_CHARS = 2000
NOTHING = ""


# -- text in the chatbot --------------------------------------------------------------------
def shown(text: str) -> str:
    """Text as the chatbot shows it: HTML escaped (the markdown then shows it literally)."""
    return html.escape(text, quote=False)


def message_text(content) -> str:
    """The plain text of a chatbot message's content (a string, or Gradio's list of parts)."""
    if isinstance(content, str):
        return html.unescape(content)
    if isinstance(content, dict):
        return message_text(content.get("text") or content.get("content") or "")
    if isinstance(content, (list, tuple)):
        return "".join(message_text(part) for part in content)
    return ""


def model_history(history: list[dict]) -> list[dict]:
    """The conversation as the model reads it: finished user and assistant turns, plain text,
    without the notes the app added (the ⚠️ messages)."""
    turns = [{"role": m["role"], "content": message_text(m.get("content"))} for m in history or []
             if m.get("role") in ("user", "assistant")]
    return [t for t in turns if not t["content"].startswith("⚠️")]


def who_of(request: gr.Request | None) -> str:
    """A logged-in user's name, or an anonymous chat session's short id."""
    if request is None:
        return "chat"
    name = getattr(request, "username", None)
    return name or f"chat:{(getattr(request, 'session_hash', None) or 'anonymous')[:8]}"


# -- chat -----------------------------------------------------------------------------------
def respond(services, question: str, history: list[dict], limit: int = MAX_QUESTION_CHARS):
    """Stream one answer into the chat history (a list of role/content messages)."""
    question = (question or "").strip()
    history = list(history or [])
    if not question:
        yield history, ""
        return
    if len(question) > limit:
        note = f"Please keep a question under {limit} characters (this one has {len(question)})."
        yield history + [{"role": "assistant", "content": note}], question
        return
    earlier = model_history(history)
    history = history + [{"role": "user", "content": shown(question)}, {"role": "assistant", "content": ""}]
    try:
        # A conversation that has just begun is one question; later ones carry their history.
        pieces = services.chat(question, history=earlier) if earlier else services.chat(question)
        for text in pieces:
            history[-1] = {"role": "assistant", "content": shown(text)}
            yield history, ""
    except LiveditError as error:
        history[-1] = {"role": "assistant", "content": f"⚠️ {shown(str(error))}"}
        yield history, ""


def question_before(history: list[dict], index: int) -> str:
    """The user's question that the answer at ``index`` replies to."""
    for message in reversed(history[:index]):
        if message.get("role") == "user":
            return message_text(message.get("content"))
    return ""


def is_like(liked) -> bool | None:
    """True for a like, False for a dislike, None for anything else (a vote taken back)."""
    if liked in (True, "Like", "like"):
        return True
    if liked in (False, "Dislike", "dislike"):
        return False
    return None


def on_like(services, history: list[dict], data: gr.LikeData, who: str = "chat") -> tuple:
    """Record a like or dislike; a dislike opens "Correct this" filled in with the question, the
    answer and the subject the intake guesses. Returns (panel, question, answer, subject,
    correction, note)."""
    closed = (gr.update(visible=False), gr.skip(), gr.skip(), gr.skip(), gr.skip())
    index = data.index[0] if isinstance(data.index, (list, tuple)) else data.index
    liked = is_like(data.liked)
    if liked is None or not 0 <= index < len(history or []):
        return *closed, NOTHING
    answer, question = message_text(history[index].get("content")), question_before(history, index)
    try:
        services.record_feedback(liked, question, answer, who)
        subject = services.guess_subject(question) if not liked and question else ""
    except LiveditError as error:
        return *closed, f"⚠️ {shown(str(error))}"
    if liked:
        return *closed, "Thanks, noted."
    note = "Sorry about that. Fix the answer below and submit it: a curator or the trust policy takes it from there."
    return gr.update(visible=True), question, answer, subject, answer, note


# -- corrections ------------------------------------------------------------------------------
def status_markdown(status) -> str:
    """One line about a correction's state (escaped)."""
    if status is None:
        return NOTHING
    text = f"**Correction #{status.item_id}** ({shown(status.new_object)}): {shown(status.label)}"
    return text + (f" ({shown(status.reason)})" if status.reason else "")


def submit_correction(services, question: str, answer: str, correction: str, subject: str,
                      who: str = "chat", limit: int = MAX_QUESTION_CHARS) -> tuple:
    """Send the correction through the intake. Returns (status text, item id or None, panel)."""
    texts = {"question": question, "answer": answer, "correction": correction, "subject": subject}
    too_long = [name for name, text in texts.items() if len(text or "") > limit]
    if too_long:
        return f"⚠️ Please keep the {too_long[0]} under {limit} characters.", None, gr.update(visible=True)
    if not (correction or "").strip():
        return "⚠️ Write the right answer first.", None, gr.update(visible=True)
    try:
        status = services.submit_correction(question or "", answer or "", correction, subject or "", who=who)
    except LiveditError as error:
        return f"⚠️ {shown(str(error))}", None, gr.update(visible=True)
    return status_markdown(status), status.item_id, gr.update(visible=False)


def poll_status(services, item_id) -> str:
    """The current state of the user's last correction ("" when there is none)."""
    if item_id is None:
        return gr.skip()
    try:
        return status_markdown(services.correction_status(int(item_id)))
    except LiveditError as error:
        return f"⚠️ {shown(str(error))}"


def start_text(services) -> str:
    progress = services.progress
    if progress.ready:
        return f"Ready: {shown(progress.message)}"
    share = "" if progress.fraction is None else f" ({progress.fraction:.0%})"
    return f"Starting, **{shown(progress.stage)}**: {shown(progress.message)}{share}"


# -- the API for programmatic clients ----------------------------------------------------------
def status_json(status) -> dict:
    return {"item_id": status.item_id, "state": status.state, "label": status.label, "reason": status.reason,
            "new_object": status.new_object, "question": status.question, "final": status.final}


def api_functions(services, limit: int):
    """The typed functions behind /submit_correction and /correction_status."""

    def submit_correction(question: str, answer: str, correction: str, subject: str = "",
                          request: gr.Request = None) -> dict:
        """Send a correction of the model's answer to a question; returns its status."""
        if max(len(question), len(answer), len(correction), len(subject)) > limit:
            raise gr.Error(f"each text must be under {limit} characters")
        try:
            return status_json(services.submit_correction(question, answer, correction, subject,
                                                          who=who_of(request)))
        except LiveditError as error:
            raise gr.Error(str(error)) from None

    def correction_status(item_id: int) -> dict:
        """The state of a correction: pending review, approved, applying, applied or rejected (with why)."""
        try:
            return status_json(services.correction_status(int(item_id)))
        except LiveditError as error:
            raise gr.Error(str(error)) from None

    return submit_correction, correction_status


# -- the page --------------------------------------------------------------------------------
def build_chat(services, limit: int = MAX_QUESTION_CHARS) -> gr.Blocks:
    with gr.Blocks(title="livedit") as page:
        with gr.Row():
            gr.Markdown("# livedit\nA chat assistant that keeps learning corrections while it serves. "
                        "Dislike an answer to correct it.")
            gr.Markdown("[Operations console →](/admin/)", elem_id="console-link")
        status = gr.Markdown(start_text(services), elem_id="start-status")
        chatbot = gr.Chatbot(label="Chat", height=420, feedback_options=("Like", "Dislike"), elem_id="chat")
        with gr.Row():
            question = gr.Textbox(label="Your question", placeholder="Ask something, then press Enter",
                                  max_length=limit, scale=5, elem_id="question")
            send = gr.Button("Send", variant="primary", scale=1)
        note = gr.Markdown(elem_id="feedback-note")
        with gr.Group(visible=False, elem_id="correct-panel") as panel:
            gr.Markdown("### Correct this")
            asked = gr.Textbox(label="Question", interactive=False, max_length=limit)
            said = gr.Textbox(label="The model's answer", interactive=False, max_length=limit)
            subject = gr.Textbox(label="What it is about (the subject the intake guessed; change it if wrong)",
                                 max_length=limit, elem_id="correct-subject")
            correction = gr.Textbox(label="The right answer", lines=2, max_length=limit, elem_id="correct-answer")
            with gr.Row():
                submit = gr.Button("Submit correction", variant="primary", elem_id="correct-submit")
                cancel = gr.Button("Cancel")
        correction_state = gr.Markdown(elem_id="correction-status")
        item_id = gr.State(None)

        def chat(q, h):
            yield from respond(services, q, h, limit)

        def like(h, data: gr.LikeData, request: gr.Request):
            return on_like(services, h, data, who_of(request))

        def send_correction(q, a, c, s, request: gr.Request):
            return submit_correction(services, q, a, c, s, who_of(request), limit)

        question.submit(chat, [question, chatbot], [chatbot, question], api_name="chat")
        send.click(chat, [question, chatbot], [chatbot, question], api_visibility="private")
        chatbot.like(like, chatbot, [panel, asked, said, subject, correction, note], api_visibility="private")
        submit.click(send_correction, [asked, said, correction, subject], [correction_state, item_id, panel],
                     api_visibility="private")
        cancel.click(lambda: gr.update(visible=False), None, panel, api_visibility="private")
        timer = gr.Timer(2.0)
        timer.tick(lambda i: poll_status(services, i), item_id, correction_state, api_visibility="private")
        timer.tick(lambda: start_text(services), None, status, api_visibility="private")
        for function in api_functions(services, limit):
            gr.api(function, api_name=function.__name__)
    return page
