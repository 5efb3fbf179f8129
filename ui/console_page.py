"""The operations console's layout and its admin API (mounted at /admin, behind the login).

The callbacks are the plain functions of ui.console; this module only places the
components, hands each callback the logged-in user's name, and names the admin endpoints
(/queue, /approve, /reject, /apply_now, /retract, /health) that programmatic clients call
with ``Client(".../admin/", auth=(name, password))``.
"""

from __future__ import annotations

import gradio as gr

from assistant.errors import LiveditError
from ui import console as c
from ui.chat import who_of


def admin_api(services):
    """The typed admin functions; Gradio's login guards every one of them."""

    def queue(view: str = "pending") -> list[dict]:
        """The queue items in a view (pending, proposed, approved, applied, rejected, ... or all)."""
        if view not in c.QUEUE_VIEWS:
            raise gr.Error(f"view must be one of {', '.join(c.QUEUE_VIEWS)}")
        try:
            return [{"id": i.id, "state": i.state, "origin": i.origin, "subject": i.subject, "prompt": i.prompt,
                     "question": i.question, "new_object": i.new_object, "old_answer": i.old_answer,
                     "evidence": i.evidence, "edit_id": i.edit_id} for i in c.queue_items(services, view)]
        except LiveditError as error:
            raise gr.Error(str(error)) from None

    def approve(item_ids: str, why: str = "", request: gr.Request = None) -> str:
        """Approve queue items ("3, 5")."""
        return c.decide(services, who_of(request), item_ids, True, why)

    def reject(item_ids: str, why: str, request: gr.Request = None) -> str:
        """Reject queue items ("3, 5") with the reason the user sees."""
        return c.decide(services, who_of(request), item_ids, False, why)

    def apply_now(request: gr.Request = None) -> str:
        """Write the approved items into the model now."""
        return c.apply_now(services, who_of(request))

    def retract(edit_id: int, request: gr.Request = None) -> str:
        """Retract an applied edit (exact with d4s)."""
        return c.retract(services, who_of(request), edit_id)[0]

    def health() -> str:
        """The model, the guard, probe drift, the jobs and the work in flight (markdown)."""
        return c.health_markdown(services)

    return queue, approve, reject, apply_now, retract, health


def build_console(services) -> gr.Blocks:
    with gr.Blocks(title="livedit console") as page:
        gr.Markdown("# livedit operations console\n[← back to the chat](/)")
        with gr.Tab("Queue"):
            _queue_tab(page, services)
        with gr.Tab("History"):
            _history_tab(page, services)
        with gr.Tab("Knowledge"):
            _knowledge_tab(services)
        with gr.Tab("Health"):
            health = gr.Markdown(elem_id="health")
            refresh = gr.Button("Refresh", size="sm")
            refresh.click(lambda: c.health_markdown(services), None, health, api_visibility="private")
            gr.Timer(3.0).tick(lambda: c.health_markdown(services), None, health, api_visibility="private")
            page.load(lambda: c.health_markdown(services), None, health, api_visibility="private")
        for function in admin_api(services):
            gr.api(function, api_name=function.__name__)
    return page


def _queue_tab(page: gr.Blocks, services) -> None:
    with gr.Row():
        view = gr.Dropdown(list(c.QUEUE_VIEWS), value="pending", label="Show", scale=1)
        reload = gr.Button("Reload", size="sm", scale=0)
    summary = gr.Markdown()
    items = gr.Dataframe(headers=c.QUEUE_HEADERS, datatype="str", interactive=False, wrap=True, elem_id="queue")
    with gr.Row():
        ids = gr.Textbox(label="Item ids", placeholder="3, 5, 7", scale=2, elem_id="queue-ids")
        why = gr.Textbox(label="Why (shown to the user when rejecting)", scale=3)
        every = gr.Checkbox(label="every proposed item", scale=1)
    with gr.Row():
        approve = gr.Button("Approve", variant="primary", elem_id="approve")
        reject = gr.Button("Reject", variant="stop")
        apply = gr.Button("Apply now", elem_id="apply-now")
    outcome = gr.Markdown(elem_id="queue-outcome")

    def show(v):
        return c.queue_table(services, v)

    def decide_with(approving):
        def run(i, w, e, request: gr.Request):
            return c.decide(services, who_of(request), i, approving, w, e)
        return run

    def apply_with_progress(request: gr.Request, progress=gr.Progress()):  # noqa: B008  (Gradio's idiom)
        return c.apply_now(services, who_of(request), lambda done, total, text: progress((done, total), desc=text))

    for event in (view.change, reload.click):
        event(show, view, [items, summary], api_visibility="private")
    for button, approving in ((approve, True), (reject, False)):
        button.click(decide_with(approving), [ids, why, every], outcome, api_visibility="private").then(
            show, view, [items, summary], api_visibility="private")
    apply.click(apply_with_progress, None, outcome, api_visibility="private").then(
        show, view, [items, summary], api_visibility="private")
    page.load(show, view, [items, summary], api_visibility="private")


def _history_tab(page: gr.Blocks, services) -> None:
    reload = gr.Button("Reload", size="sm")
    note = gr.Markdown()
    gr.Markdown("### L1 growth of each edited layer over the generations, against the guard's bound")
    plot = gr.Plot(label="L1 growth", elem_id="l1-plot")
    gr.Markdown("### Edits")
    edits = gr.Dataframe(headers=c.EDIT_HEADERS, datatype="str", interactive=False, wrap=True, elem_id="edits")
    gr.Markdown("### The guard's decisions")
    decisions = gr.Dataframe(headers=c.DECISION_HEADERS, datatype="str", interactive=False, wrap=True,
                             elem_id="decisions")
    gr.Markdown("### Retract an edit")
    with gr.Row():
        edit_id = gr.Number(label="Edit id", value=None, precision=0, elem_id="retract-id")
        ask = gr.Button("Retract…", variant="stop")
    question = gr.Markdown(elem_id="retract-question")
    with gr.Group(visible=False) as confirm, gr.Row():
        yes = gr.Button("Yes, retract it", variant="stop", elem_id="retract-yes")
        no = gr.Button("Cancel")

    def show():
        return c.history_view(services)

    def retract_confirmed(i, request: gr.Request):
        return c.retract(services, who_of(request), i)

    outputs = [edits, plot, decisions, note]
    reload.click(show, None, outputs, api_visibility="private")
    page.load(show, None, outputs, api_visibility="private")
    ask.click(lambda i: c.ask_retract(services, i), edit_id, [question, confirm], api_visibility="private")
    yes.click(retract_confirmed, edit_id, [question, confirm], api_visibility="private").then(
        show, None, outputs, api_visibility="private")
    no.click(lambda: ("", gr.update(visible=False)), None, [question, confirm], api_visibility="private")


def _knowledge_tab(services) -> None:
    with gr.Row():
        query = gr.Textbox(label="Search the curated facts", placeholder="a subject, a question...", scale=4)
        search = gr.Button("Search", scale=1)
    found_note = gr.Markdown()
    found = gr.Dataframe(headers=c.FACT_HEADERS, datatype="str", interactive=False, wrap=True)
    with gr.Accordion("Add or edit a fact", open=False):
        with gr.Row():
            fact_id = gr.Textbox(label="Fact id (empty: a new fact; an existing id: a new version)")
            subject = gr.Textbox(label="Subject")
        with gr.Row():
            prompt = gr.Textbox(label="Prompt ({} for the subject, or the subject written out)")
            obj = gr.Textbox(label="Object (the answer)")
        fact_question = gr.Textbox(label="Question (optional: a chat question whose answer is the object)")
        save = gr.Button("Save", variant="primary")
        saved = gr.Markdown()
    with gr.Accordion("A fact's version history", open=False):
        with gr.Row():
            history_id = gr.Textbox(label="Fact id", scale=4)
            show_history = gr.Button("Show", scale=1)
        history_note = gr.Markdown()
        versions = gr.Dataframe(headers=c.VERSION_HEADERS, datatype="str", interactive=False, wrap=True)
    with gr.Accordion("Import a file (JSONL, JSON or CSV; all or nothing)", open=False):
        upload = gr.File(label="Facts file", file_types=[".jsonl", ".json", ".csv"], type="filepath")
        update_existing = gr.Checkbox(label="make new versions of facts that exist already")
        do_import = gr.Button("Import")
        imported = gr.Markdown()

    def save_fact(i, s, p, o, q, request: gr.Request):
        return c.save_fact(services, who_of(request), i, s, p, o, q)

    def import_facts(path, update, request: gr.Request):
        return c.import_file(services, who_of(request), path, update)

    for event in (query.submit, search.click):
        event(lambda q: c.search_facts(services, q), query, [found, found_note], api_visibility="private")
    save.click(save_fact, [fact_id, subject, prompt, obj, fact_question], saved, api_visibility="private")
    show_history.click(lambda i: c.fact_history(services, i), history_id, [versions, history_note],
                       api_visibility="private")
    do_import.click(import_facts, [upload, update_existing], imported, api_visibility="private")
