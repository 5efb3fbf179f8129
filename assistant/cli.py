"""The engine's commands: edit, retract, status, ask, chat, export, patch and bench."""

from __future__ import annotations

import sys
from pathlib import Path

from assistant.config import METHODS
from assistant.errors import ConfigError


def _editor(args, method: str | None = None):
    from assistant.editing.editor import Editor
    return Editor.open(args.config, state_dir=args.state_dir, method=method, progress=not args.quiet)


def _state_status(args):
    """The state's ledger alone: commands that only read or check it load no model."""
    from assistant.state.identity import state_dir_for
    from assistant.state.ledger import read_status

    return read_status(state_dir_for(args.config, args.state_dir))


def cmd_edit(args) -> None:
    from tqdm.auto import tqdm

    from assistant.facts import load_facts

    facts = load_facts(args.facts)          # a bad record fails before anything is loaded
    editor = _editor(args, args.method)
    with tqdm(total=len(facts), desc=f"editing ({editor.method})", unit="fact", disable=args.quiet) as bar:
        report = editor.apply(facts, batch_size=args.batch_size, progress=bar.update)
    print(f"applied {len(report.edit_ids)} edit(s) with {editor.method}: ids {_ranges(report.edit_ids)}")
    if report.unchanged:
        print(f"already in the model, unchanged: {', '.join(report.unchanged)}")
    if report.superseded:
        print(f"superseded earlier edit(s): {_ranges(report.superseded)}")
    _print_norms(editor.norms())


def _ranges(ids: list[int]) -> str:
    if not ids:
        return "-"
    return f"{ids[0]}" if len(ids) == 1 else f"{ids[0]}..{ids[-1]}" if ids == list(range(ids[0], ids[-1] + 1)) \
        else ", ".join(map(str, ids))


def _print_norms(norms) -> None:
    print("layer  L1 (mean |w|)  growth vs W0  mean |W - W0|")
    for n in norms:
        print(f"{n.layer:>5}  {n.mean_abs:13.6f}  {n.growth * 100:+11.3f}%  {n.mean_abs_delta:13.3e}")


def cmd_retract(args) -> None:
    from assistant.editing.editor import check_retractable

    status = _state_status(args)               # a wrong id is refused before the model loads
    record = next((e for e in status.edits if e.id == args.edit_id), None)
    check_retractable(record, args.edit_id, status.method or args.config.editing.method)
    with _editor(args) as editor:
        editor.retract(args.edit_id)
        norms = editor.norms()
    print(f"retracted edit {args.edit_id}")
    _print_norms(norms)


def cmd_status(args) -> None:
    status = _state_status(args)
    active = status.active
    print(f"state {status.folder} | method {status.method or args.config.editing.method} | "
          f"generation {status.generation}")
    print(f"{len(active)} active edit(s), {len(status.edits) - len(active)} retracted or superseded")
    for e in status.edits[-args.limit:]:
        fact = e.fact
        print(f"  {e.id:>5} {e.status:<10} {fact.id:<14} {fact.filled_prompt!r} -> {fact.target_new!r}"
              f"  P={e.target_probability or 0:.2f}")
    if status.norms:
        _print_norms(status.norms)
    print(_room_left(status, args.config.guard.max_l1_growth))


def _room_left(status, bound: float) -> str:
    """How close the largest L1 growth is to the guard's bound, in edits at the recent rate."""
    from assistant.state.l1 import edits_left

    growth = max((n.growth for n in status.norms), default=0.0)
    left = edits_left(status.growth_history, bound)
    rate = "" if left is None else f"; about {left:.0f} more edit(s) at the recent rate"
    return f"L1 room: largest growth {growth:.2%} of the guard's bound {bound:.2%}{rate}"


def _stream_to_stdout(editor, question: str, chat) -> None:
    from assistant.model.chat import stream_answer

    shown = ""
    for text in stream_answer(editor.model, editor.tokenizer, question, chat.max_new_tokens, editor.system_prompt,
                              reading=editor.weights.reading, stall_seconds=chat.stall_seconds):
        sys.stdout.write(text[len(shown):])
        sys.stdout.flush()
        shown = text
    print()


def cmd_ask(args) -> None:
    with _editor(args) as editor:
        _stream_to_stdout(editor, args.question, args.config.chat)


def cmd_chat(args) -> None:
    editor = _editor(args)
    active = len(editor.edits("active"))
    print(f"livedit chat on {editor.loaded.path.name} with {active} edit(s) ({editor.method}). "
          "Empty line or Ctrl-D quits.")
    while True:
        try:
            question = input("you> ").strip()
        except EOFError:
            break
        if not question:
            break
        sys.stdout.write("model> ")
        _stream_to_stdout(editor, question, args.config.chat)


def cmd_export(args) -> None:
    if args.since is not None and not args.patch:
        raise ConfigError("--since GEN goes with --patch: `livedit export --patch --since GEN --out DIR`")
    editor = _editor(args)
    if args.patch:
        from assistant.state.patch import patch_from_editor, write_patch

        patch = patch_from_editor(editor, since=args.since or 0)
        out = write_patch(patch, Path(args.out))
        print(f"wrote the weight patch of generation {patch.generation} (since generation {patch.since_generation}: "
              f"layers {list(patch.layers)}) to {out}")
        return
    out = editor.export(Path(args.out))
    print(f"exported the edited model to {out} (load it with transformers' from_pretrained)")


def cmd_patch_apply(args) -> None:
    from assistant.state.patch import apply_patch

    out = apply_patch(Path(args.patch_dir), Path(args.checkpoint), Path(args.out) if args.out else None,
                      in_place=args.in_place)
    print(f"patched checkpoint written to {out}")


def cmd_bench(args) -> None:
    from assistant.evaluation.bench import BenchPlan, run_bench
    from assistant.evaluation.report import write_report

    out = Path(args.out)
    if not args.report_only:
        lengths = tuple(int(x) for x in args.target_tokens.split("-")) if args.target_tokens else None
        if lengths is not None and len(lengths) != 2:
            raise ConfigError(f"--target-tokens {args.target_tokens!r}: write LOW-HIGH, e.g. 2-3")
        config = args.config
        for method in args.method or [config.editing.method]:
            plan = BenchPlan(method=method, dataset=args.dataset, start=args.start, count=args.count,
                             batch_size=args.batch_size, every=args.every, seed=args.seed, token_lengths=lengths,
                             general_items=args.general_items, chat=args.chat)
            state = Path(args.state_dir) / plan.name if args.state_dir else None
            run_bench(config, plan, out, state, report=lambda text: print(text, flush=True))
    print(f"report: {write_report(out)}")


def register(commands) -> None:
    """Add the engine's commands to the `livedit` subcommands."""

    edit = commands.add_parser("edit", help="write facts from a file into the model's weights")
    edit.add_argument("--facts", required=True, help="JSONL of our fact format, or EasyEdit CounterFact JSON")
    edit.add_argument("--method", choices=METHODS, help="editing method (fixed per state directory)")
    edit.add_argument("--batch-size", type=int, help="facts per batch (default from config.toml)")
    edit.set_defaults(run=cmd_edit)

    retract = commands.add_parser("retract", help="remove one edit exactly (d4s)")
    retract.add_argument("edit_id", type=int)
    retract.set_defaults(run=cmd_retract)

    status = commands.add_parser("status", help="the edits, and the L1 growth per layer")
    status.add_argument("--limit", type=int, default=20, help="show the last N edits")
    status.set_defaults(run=cmd_status)

    ask = commands.add_parser("ask", help="one chat turn with the current model")
    ask.add_argument("question")
    ask.set_defaults(run=cmd_ask)

    chat = commands.add_parser("chat", help="chat with the current model in the terminal")
    chat.set_defaults(run=cmd_chat)

    export = commands.add_parser("export", help="save the edited model as a Hugging Face checkpoint")
    export.add_argument("--out", required=True)
    export.add_argument("--patch", action="store_true", help="write a versioned weight patch (the edited layers) "
                        "instead of a whole checkpoint")
    export.add_argument("--since", type=int, metavar="GEN", help="with --patch: only the layers changed after "
                        "generation GEN (default 0: every edited layer)")
    export.set_defaults(run=cmd_export)

    patch = commands.add_parser("patch", help="weight patches for serving replicas")
    patch_commands = patch.add_subparsers(dest="patch_command", required=True)
    apply = patch_commands.add_parser("apply", help="apply a weight patch to a Hugging Face checkpoint")
    apply.add_argument("patch_dir", metavar="DIR", help="the patch folder (`livedit export --patch`)")
    apply.add_argument("--model", dest="checkpoint", required=True, metavar="HF_DIR",
                       help="the checkpoint to patch: the base model, or a replica patched before")
    target = apply.add_mutually_exclusive_group(required=True)
    target.add_argument("--out", help="write the patched checkpoint to this new folder")
    target.add_argument("--in-place", action="store_true", help="overwrite the checkpoint's weights")
    apply.set_defaults(run=cmd_patch_apply)

    bench = commands.add_parser("bench", help="sequential-editing benchmark with plots and a table")
    bench.add_argument("--method", action="append", choices=METHODS, help="method(s) to run, one after another")
    bench.add_argument("--dataset", default="counterfact", help="counterfact, zsre, qaedit, mqd-yesno, "
                       "mqd-choice or mqd-direct")
    bench.add_argument("--start", type=int, default=0, help="first record of the data set")
    bench.add_argument("--count", type=int, default=1000, help="facts to edit")
    bench.add_argument("--batch-size", type=int, default=10)
    bench.add_argument("--every", type=int, default=100, help="evaluate every K edits")
    bench.add_argument("--seed", type=int, default=0, help="seed of the MMLU/SST-2 samples and MQD options")
    bench.add_argument("--target-tokens", help="only facts whose new object has LOW-HIGH tokens, e.g. 2-3")
    bench.add_argument("--general-items", type=int, default=100, help="MMLU and SST-2 questions, each")
    bench.add_argument("--chat", action="store_true", help="also chat answers, rephrasings and locality (greedy answers)")
    bench.add_argument("--out", required=True, help="folder for results JSON, plots and report.md")
    bench.add_argument("--report-only", action="store_true", help="only redraw plots and report.md")
    bench.set_defaults(run=cmd_bench)
