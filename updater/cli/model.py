"""`livedit detect` and `livedit apply`: the updater commands that load the served model.

Both open the engine on the state directory (--state-dir, LIVEDIT_STATE_DIR or
$LIVEDIT_HOME/state), so they see the model as it is served: W0 plus the committed edits.
"""

from __future__ import annotations

from updater.cli.context import default_user, progress_bar


def _open_editor(args):
    from assistant.editing.editor import Editor

    return args.config, Editor.open(args.config, state_dir=args.state_dir, progress=not args.quiet)


def _short(text: str, limit: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def cmd_detect(args) -> None:
    from updater.detect.detector import run_detection

    config, editor = _open_editor(args)
    try:
        with progress_bar(args, "checking facts") as progress:
            report = run_detection(editor, config, force=args.all, limit=args.limit, batch_size=args.batch_size,
                                   progress=progress)
    finally:
        editor.close()
    for check in report.outdated:
        print(f"outdated {check.fact_id} v{check.fact_version}: {check.probe!r} -> {check.object!r}; the model said "
              f"{_short(check.answer)!r} (item {check.queue_item if check.queue_item is not None else '-'})")
    stopped = " (stopped early)" if report.stopped else ""
    print(f"checked {len(report.checks)} of {report.due} due fact(s){stopped}: {len(report.outdated)} outdated, "
          f"{len(report.current)} current; {len(report.queued)} queued, "
          f"{len(report.already_queued)} already in the queue")


def cmd_apply(args) -> None:
    from updater.apply import run_apply
    from updater.guard import Guard

    config, editor = _open_editor(args)
    try:
        guard = Guard.for_editor(editor, config) if config.guard.enabled else None
        with progress_bar(args, f"applying ({editor.method})") as progress:
            outcome = run_apply(editor, config, limit=args.limit, batch_size=args.batch_size, who=args.who,
                                progress=progress, guard=guard)
        norms = editor.norms()
    finally:
        editor.close()
    for item_id, state in outcome.settled.items():
        print(f"item {item_id} was left applying by an interruption; now {state}")
    for item_id, edit_id in outcome.applied.items():
        print(f"item {item_id} applied as edit {edit_id}")
    for item_id, why in outcome.failed.items():
        print(f"item {item_id} failed: {why}")
    for item_id, why in outcome.rejected.items():
        print(f"item {item_id} {why}")
    print(f"applied {len(outcome.applied)} item(s), {len(outcome.failed)} failed, {len(outcome.rejected)} rejected "
          "by the guard; L1 growth "
          + ", ".join(f"layer {n.layer} {n.growth * 100:+.3f}%" for n in norms))


def register(commands) -> None:
    """Add `detect` and `apply` to the `livedit` subcommands."""
    detect = commands.add_parser("detect", help="ask the model the curated facts that are due; queue the outdated")
    detect.add_argument("--all", action="store_true", help="ask every current fact, due or not")
    detect.add_argument("--limit", type=int, help="ask at most N facts (new and changed ones first)")
    detect.add_argument("--batch-size", type=int, help="questions per generation batch (default 16)")
    detect.set_defaults(run=cmd_detect)

    apply = commands.add_parser("apply", help="write the approved queue items into the model (engine batches)")
    apply.add_argument("--limit", type=int, help="apply at most N items (oldest first)")
    apply.add_argument("--batch-size", type=int, help="items per engine batch (default [editing] batch_size)")
    apply.add_argument("--who", default=default_user(), help="recorded on the items (default: the OS user)")
    apply.set_defaults(run=cmd_apply)
