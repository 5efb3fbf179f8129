"""The operations console (mounted at /admin behind a login): Knowledge, Queue, History, Health.

Every callback is a plain function over ``services`` and the acting user's name; the
``build_console`` closures only hand them the inputs. Markdown gets every value HTML escaped;
tables hold plain strings, which the Dataframe shows as characters: a fact or correction
holding ``<script>`` shows as text here too.
"""

from __future__ import annotations

import html
from datetime import datetime

import gradio as gr
import pandas as pd

from assistant.errors import LiveditError

PENDING = ("proposed", "approved", "applying", "failed")
QUEUE_VIEWS = ("pending", "proposed", "approved", "applied", "rejected", "failed", "superseded", "retracted", "all")
FACT_HEADERS = ["id", "subject", "prompt", "object", "question", "version", "distance"]
QUEUE_HEADERS = ["id", "state", "origin", "statement", "new object", "model said", "evidence"]
EDIT_HEADERS = ["edit", "fact", "statement", "object", "generation", "status", "P(target)"]
DECISION_HEADERS = ["at", "items", "outcome", "generation", "max L1 growth", "efficacy", "agreement", "KL", "reason"]
VERSION_HEADERS = ["version", "subject", "prompt", "object", "question", "curator", "recorded", "note"]


def esc(value) -> str:
    return html.escape("" if value is None else str(value), quote=False)


def table(rows: list[list], headers: list[str]) -> pd.DataFrame:
    """A table of plain strings; the Dataframe shows a cell's characters as they are (never as HTML)."""
    return pd.DataFrame([["" if v is None else str(v) for v in row] for row in rows], columns=headers)


def failure(error: LiveditError) -> str:
    return f"⚠️ {esc(error)}"


def parse_ids(text: str) -> list[int]:
    """Item ids from "3, 5 7"; a ValueError names a bad one."""
    ids = []
    for part in (text or "").replace(",", " ").split():
        if not part.isdigit():
            raise ValueError(f"{part!r} is not an item id; write ids like 3, 5, 7")
        ids.append(int(part))
    return ids


# -- Knowledge --------------------------------------------------------------------------------
def search_facts(services, query: str) -> tuple[pd.DataFrame, str]:
    try:
        services.require_ready()
        if (query or "").strip():
            hits = [(h.fact, f"{h.distance:.3f}") for h in services.store.search(query, k=20)]
        else:
            hits = [(fact, "") for fact in services.store.facts()[-50:]]
    except LiveditError as error:
        return table([], FACT_HEADERS), failure(error)
    rows = [[f.id, f.subject, f.filled_prompt, f.object, f.question or "", f.version, d] for f, d in hits]
    return table(rows, FACT_HEADERS), "" if rows else "No curated facts yet: add one below or import a file."


def save_fact(services, who: str, fact_id: str, subject: str, prompt: str, obj: str, question: str) -> str:
    """Add a fact (no id, or a new one) or make a new version of an existing one."""
    fields = {"subject": subject, "prompt": prompt, "object": obj, "question": question or None}
    try:
        services.require_ready()
        existing = services.store.find(fact_id.strip()) if (fact_id or "").strip() else None
        if existing is not None:
            changes = {k: v for k, v in fields.items() if v not in (None, "")}
            fact = services.store.update(existing.id, changes, who, note=f"edited in the console by {who}")
            return f"Saved fact **{esc(fact.id)}** as version {fact.version}."
        if (fact_id or "").strip():
            fields["id"] = fact_id.strip()
        fact = services.store.add(fields, who, note=f"added in the console by {who}")
        return f"Added fact **{esc(fact.id)}** (version 1)."
    except LiveditError as error:
        return failure(error)


def fact_history(services, fact_id: str) -> tuple[pd.DataFrame, str]:
    try:
        services.require_ready()
        versions = services.store.history((fact_id or "").strip())
    except LiveditError as error:
        return table([], VERSION_HEADERS), failure(error)
    rows = [[v.version, v.subject, v.prompt, v.object, v.question or "", v.curator, v.recorded_at, v.note or ""]
            for v in versions]
    return table(rows, VERSION_HEADERS), "" if rows else f"No fact {esc(fact_id)}."


def import_file(services, who: str, path: str | None, update_existing: bool) -> str:
    if not path:
        return "Choose a JSONL, JSON or CSV file first."
    try:
        report, rejected = services.import_facts(path, who, "update" if update_existing else "error")
    except LiveditError as error:
        return failure(error)
    if report is None:
        lines = "\n".join(f"- {esc(why)}" for why in rejected)
        return f"**Nothing was imported**: {len(rejected)} record(s) were rejected.\n\n{lines}"
    return (f"Imported: {len(report.added)} added, {len(report.updated)} updated, "
            f"{len(report.unchanged)} unchanged.")


# -- Queue ------------------------------------------------------------------------------------
def evidence_text(item) -> str:
    latest = item.evidence[-1] if item.evidence else {}
    parts = [f"{len(item.evidence)} proposal(s)", f"by {latest.get('who', '?')}"]
    for key in ("policy_reason", "why", "correction"):
        if latest.get(key):
            parts.append(f"{key.split('_')[0]}: {latest[key]}")
    return "; ".join(parts)


def queue_items(services, view: str = "pending") -> list:
    services.require_ready()
    if view == "pending":
        return [i for i in services.queue.list() if i.state in PENDING]
    return services.queue.list(state=None if view == "all" else view)


def queue_table(services, view: str = "pending") -> tuple[pd.DataFrame, str]:
    try:
        items = queue_items(services, view)
    except LiveditError as error:
        return table([], QUEUE_HEADERS), failure(error)
    rows = [[i.id, i.state, i.origin, i.prompt.replace("{}", i.subject), i.new_object, i.old_answer or "",
             evidence_text(i)] for i in items]
    counts = services.queue.counts()
    summary = ", ".join(f"{n} {state}" for state, n in counts.items() if n) or "the queue is empty"
    return table(rows, QUEUE_HEADERS), f"{summary}." if rows else f"Nothing {view} here ({summary})."


def decide(services, who: str, ids_text: str, approve: bool, why: str, all_proposed: bool = False) -> str:
    """Approve or reject items one at a time or in bulk; each result on its own line."""
    try:
        ids = [i.id for i in services.queue.list(state="proposed")] if all_proposed else parse_ids(ids_text)
    except (ValueError, LiveditError) as error:
        return f"⚠️ {esc(error)}"
    if not ids:
        return "Give item ids (e.g. 3, 5) or tick \"every proposed item\"."
    if not approve and not (why or "").strip():
        return "Say why they are rejected (the user sees it)."
    lines = []
    for item_id in ids:
        try:
            if approve:
                services.queue.approve(item_id, who, why or f"approved in the console by {who}")
            else:
                services.queue.reject(item_id, who, why)
            lines.append(f"- item {item_id}: {'approved' if approve else 'rejected'}")
        except LiveditError as error:
            lines.append(f"- item {item_id}: {esc(error)}")
    return "\n".join(lines)


def apply_now(services, who: str, report=None) -> str:
    """Write the approved items into the model now; ``report(done, total, text)`` shows progress."""
    try:
        approved = len(services.queue.list(state="approved"))
        if report is not None:
            report(0, max(approved, 1), f"applying {approved} approved item(s)")
        run = services.apply_now(who, on_progress=(lambda job, done, total: report(done, total,
                                                   f"{job}: {done} of {total} item(s)")) if report else None)
    except LiveditError as error:
        return failure(error)
    if run.outcome == "skipped":
        return "Another job is running; try again in a moment."
    if run.outcome == "error":
        return f"⚠️ The apply failed: {esc(run.message)}"
    f = run.figures
    return (f"Apply finished in {f.get('seconds', 0):.0f} s: {f.get('applied', 0)} applied, {f.get('rejected', 0)} "
            f"rejected by the guard, {f.get('failed', 0)} failed; generation {f.get('generation')}, "
            f"largest L1 growth {f.get('max_l1_growth', 0):.2%}.")


# -- History ----------------------------------------------------------------------------------
def edits_table(services) -> pd.DataFrame:
    services.require_ready()
    rows = [[e.id, e.fact.id, e.fact.prompt.replace("{}", e.fact.subject), e.fact.target_new, e.generation, e.status,
             "" if e.target_probability is None else f"{e.target_probability:.2f}"]
            for e in reversed(services.editor.edits())]
    return table(rows, EDIT_HEADERS)


def decisions_table(services) -> pd.DataFrame:
    services.require_ready()
    rows = []
    for d in services.queue.decisions(limit=100):
        f = d.figures
        rows.append([d.at, ", ".join(map(str, d.item_ids)), d.outcome, "" if d.generation is None else d.generation,
                     f"{f.get('max_l1_growth', 0):.2%}", f"{f.get('hits', '?')}/{f.get('facts', '?')}",
                     f"{f.get('agreement', 0):.3f}", f"{f.get('kl', 0):.3f}", d.reason])
    return table(rows, DECISION_HEADERS)


def l1_frame(services) -> pd.DataFrame:
    """Per edited layer, L1 growth (%) after each generation, and the guard's bound as its own line."""
    services.require_ready()
    history = services.editor.l1_history()
    bound = services.config.guard.max_l1_growth * 100
    rows = [{"generation": int(h["generation"]), "growth_pct": float(h["growth"]) * 100, "line": f"layer {h['layer']}"}
            for h in history]
    generations = sorted({r["generation"] for r in rows})
    rows += [{"generation": g, "growth_pct": bound, "line": "guard bound"} for g in generations]
    return pd.DataFrame(rows, columns=["generation", "growth_pct", "line"])


def l1_figure(frame: pd.DataFrame):
    """The L1 plot: one line with markers per edited layer, the guard's bound dashed."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(9, 3.2), layout="constrained")
    axes = figure.add_subplot()
    for line, points in frame.groupby("line", sort=True):
        if line == "guard bound":
            axes.axhline(points["growth_pct"].iloc[0], color="crimson", linestyle="--", label="guard bound")
        else:
            axes.plot(points["generation"], points["growth_pct"], marker="o", label=line)
    axes.set_xlabel("generation")
    axes.set_ylabel("L1 growth over W0 (%)")
    axes.grid(alpha=0.3)
    if len(frame):
        axes.legend(loc="upper left", fontsize="small", ncols=4)
        axes.xaxis.get_major_locator().set_params(integer=True)
    else:
        axes.text(0.5, 0.5, "no edits yet", ha="center", va="center", transform=axes.transAxes)
    return figure


def history_view(services) -> tuple:
    """(edits, the L1 plot, decisions, note)."""
    try:
        edits, frame, decisions = edits_table(services), l1_frame(services), decisions_table(services)
    except LiveditError as error:
        return table([], EDIT_HEADERS), None, table([], DECISION_HEADERS), failure(error)
    note = "" if len(edits) else "No edits yet: approve a correction in the Queue and apply it."
    return edits, l1_figure(frame), decisions, note


def ask_retract(services, edit_id) -> tuple[str, dict]:
    """The confirmation question for retracting an edit, and the confirmation group shown."""
    try:
        services.require_ready()
        edit = services.editor.edit(int(edit_id or 0))
    except (LiveditError, ValueError) as error:
        return f"⚠️ {esc(error)}", gr.update(visible=False)
    if edit is None or edit.status != "active":
        return f"Edit {esc(edit_id)} is not an active edit.", gr.update(visible=False)
    question = (f"Retract edit **{edit.id}** ({esc(edit.fact.prompt.replace('{}', edit.fact.subject))} → "
                f"{esc(edit.fact.target_new)})? The weights are rebuilt without it.")
    return question, gr.update(visible=True)


def retract(services, who: str, edit_id) -> tuple[str, dict]:
    try:
        items = services.retract(int(edit_id), who)
    except (LiveditError, ValueError) as error:
        return f"⚠️ {esc(error)}", gr.update(visible=False)
    also = f"; queue item(s) {', '.join(map(str, items))} marked retracted" if items else ""
    return f"Edit {int(edit_id)} retracted{also}.", gr.update(visible=False)


# -- Health -----------------------------------------------------------------------------------
def when(moment) -> str:
    if moment is None:
        return "-"
    return moment.strftime("%Y-%m-%d %H:%M:%S") if isinstance(moment, datetime) else str(moment)[:19]


def health_markdown(services) -> str:
    progress, lines = services.progress, []
    lines.append(f"**Start**: {esc(progress.stage)}: {esc(progress.message)}")
    work = services.work
    if work is not None:
        share = f" ({work.done} of {work.total})" if work.total else ""
        lines.append(f"**In flight**: {esc(work.job)}{share}")
    if not progress.ready:
        return "\n\n".join(lines)
    editor, config = services.editor, services.config
    status = editor.status()
    largest = max((n.growth for n in status.norms), default=0.0)
    lines.append(f"**Model**: {esc(editor.loaded.path.name)}, method {esc(editor.method)}, generation "
                 f"{editor.generation}, {len(status.active)} active edit(s), largest L1 growth {largest:.2%}")
    guard = config.guard
    decisions = services.queue.decisions(limit=1)
    last = f"; last decision: {esc(decisions[0].outcome)}: {esc(decisions[0].reason)}" if decisions else ""
    lines.append(f"**Guard**: {'on' if guard.enabled else 'off'} (L1 growth ≤ {guard.max_l1_growth:.1%}, "
                 f"efficacy ≥ {guard.min_efficacy:.0%}, agreement ≥ {guard.min_agreement}, KL ≤ {guard.max_kl}){last}")
    verify = services.runner.runs.history("verify", limit=1)
    drift = verify[0].figures if verify else {}
    lines.append("**Probe drift**: " + (f"agreement {drift['probe_agreement']:.3f}, KL {drift['probe_kl']:.3f} "
                                        f"(verify run at {when(verify[0].ended_at)})"
                                        if "probe_agreement" in drift else "not measured yet (the verify job does)"))
    votes = services.feedback.counts()
    lines.append(f"**Feedback**: {votes['likes']} like(s), {votes['dislikes']} dislike(s)")
    lines.append(jobs_markdown(services))
    return "\n\n".join(lines)


def jobs_markdown(services) -> str:
    rows = ["| job | every | last run | outcome | next run |", "|---|---|---|---|---|"]
    for job in services.jobs():
        last = job["last_run"]
        outcome = esc(f"{last.outcome or 'running'} {last.message}".strip()) if last else "-"
        every = f"{job['minutes']:g} min" if job["minutes"] else "off"
        rows.append(f"| {job['name']} | {every} | {when(last.started_at) if last else '-'} | {outcome} | "
                    f"{when(job['next_run']) if job['scheduled'] else 'scheduler off'} |")
    return "\n".join(rows)
