"""`livedit facts ...`: the curated knowledge store."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from updater.cli.context import default_user, open_store, progress_bar


def _describe(fact) -> str:
    aliases = f" (also {', '.join(map(repr, fact.aliases))})" if fact.aliases else ""
    return f"{fact.id} v{fact.version}: {fact.filled_prompt!r} -> {fact.object!r}{aliases}"


def _fact_fields(args) -> dict:
    fields = {name: getattr(args, name) for name in ("subject", "prompt", "object", "question", "source")
              if getattr(args, name) is not None}
    if args.valid_from is not None:
        fields["valid_from"] = args.valid_from
    if args.alias:
        fields["aliases"] = list(args.alias)
    return fields


def cmd_facts_add(args) -> None:
    with open_store(args) as store:
        fields = _fact_fields(args) | ({"id": args.id} if args.id else {})
        fact = store.add(fields, who=args.who, note=args.note or "added")
    print(f"added {_describe(fact)}")


def cmd_facts_update(args) -> None:
    changes = _fact_fields(args)
    if args.clear_aliases:
        changes["aliases"] = []
    if not changes:
        from assistant.errors import InvalidFact
        raise InvalidFact("facts update: give at least one field to change (--object, --prompt, ...)")
    with open_store(args) as store:
        before = store.get(args.id)
        fact = store.update(args.id, changes, who=args.who, note=args.note or "updated")
    if fact.version == before.version:
        print(f"unchanged {_describe(fact)}")
    else:
        print(f"updated {_describe(fact)} (changed: {', '.join(fact.changed_fields(before))})")


def cmd_facts_import(args) -> None:
    existing = "update" if args.update_existing else "skip" if args.skip_existing else "error"
    with open_store(args) as store, progress_bar(args, "embedding facts") as progress:
        report = store.import_file(Path(args.file), who=args.who, fmt=args.format, existing=existing,
                                   progress=progress)
    print(f"imported {args.file}: {len(report.added)} added, {len(report.updated)} updated, "
          f"{len(report.unchanged)} unchanged")


def cmd_facts_export(args) -> None:
    from updater.store.fact_files import detect_format

    fmt = args.format or ("jsonl" if args.file == "-" else detect_format(args.file))
    with open_store(args) as store:
        if args.file == "-":
            _export_to_stdout(store, fmt, args.history)
            return
        target = Path(args.file)
        partial = target.with_name(target.name + ".partial")
        with open(partial, "w", encoding="utf-8", newline="") as stream:
            count = store.export(stream, fmt, with_history=args.history)
        partial.replace(target)
    print(f"exported {count} fact version(s) to {target} ({fmt})")


def _export_to_stdout(store, fmt: str, with_history: bool) -> None:
    try:
        store.export(sys.stdout, fmt, with_history=with_history)
        sys.stdout.flush()
    except BrokenPipeError:                       # `livedit facts export - | head` closed the pipe
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def cmd_facts_search(args) -> None:
    with open_store(args) as store:
        hits = store.search(args.query, k=args.k)
    if not hits:
        print("no facts in the knowledge store")
    for hit in hits:
        print(f"{hit.distance:6.3f}  {_describe(hit.fact)}")


def cmd_facts_history(args) -> None:
    with open_store(args) as store:
        versions = store.history(args.id)
    for fact in versions:
        question = f" | question {fact.question!r}" if fact.question else ""
        print(f"v{fact.version} {fact.recorded_at} by {fact.curator} ({fact.note or '-'}; source {fact.source}; "
              f"valid from {fact.valid_from}): {fact.filled_prompt!r} -> {fact.object!r}{question}")


def _add_fact_options(parser, required: bool) -> None:
    parser.add_argument("--subject", required=required, help="who or what the fact is about")
    parser.add_argument("--prompt", required=required,
                        help="cloze prompt containing the subject, or {} where the subject goes")
    parser.add_argument("--object", required=required, help="the true completion of the prompt")
    parser.add_argument("--question", help="a natural question whose answer is the object ('' clears it)")
    parser.add_argument("--alias", action="append", help="another accepted spelling of the object (repeatable)")
    parser.add_argument("--source", help="where the fact comes from (a URL, a data set, ...)")
    parser.add_argument("--valid-from", help="date from which the fact holds, YYYY-MM-DD")
    parser.add_argument("--note", help="why this version is made")
    parser.add_argument("--who", default=default_user(), help="curator name (default: the OS user)")


def register(commands) -> None:
    facts = commands.add_parser("facts", help="the curated knowledge store").add_subparsers(
        dest="facts_command", required=True)
    add = facts.add_parser("add", help="add a new fact (version 1)")
    add.add_argument("--id", help="fact id (default: derived from the subject and prompt)")
    _add_fact_options(add, required=True)
    add.set_defaults(run=cmd_facts_add)

    update = facts.add_parser("update", help="record a new version of a fact; the old one is kept")
    update.add_argument("id")
    _add_fact_options(update, required=False)
    update.add_argument("--clear-aliases", action="store_true", help="remove every alias")
    update.set_defaults(run=cmd_facts_update)

    imports = facts.add_parser("import", help="import facts from JSONL, JSON or CSV, all or nothing")
    imports.add_argument("file")
    imports.add_argument("--format", choices=("jsonl", "json", "csv"), help="default: from the file name")
    existing = imports.add_mutually_exclusive_group()
    existing.add_argument("--update-existing", action="store_true", help="make new versions of changed facts")
    existing.add_argument("--skip-existing", action="store_true", help="leave facts that exist as they are")
    imports.add_argument("--who", default=default_user(), help="curator name (default: the OS user)")
    imports.set_defaults(run=cmd_facts_import)

    export = facts.add_parser("export", help="export the facts as JSONL or CSV ('-' writes to stdout)")
    export.add_argument("file")
    export.add_argument("--format", choices=("jsonl", "csv"), help="default: from the file name")
    export.add_argument("--history", action="store_true", help="every version, not only the current ones")
    export.set_defaults(run=cmd_facts_export)

    search = facts.add_parser("search", help="the facts nearest in meaning to a text")
    search.add_argument("query")
    search.add_argument("-k", type=int, default=5, help="how many facts to show")
    search.set_defaults(run=cmd_facts_search)

    history = facts.add_parser("history", help="every version of a fact")
    history.add_argument("id")
    history.set_defaults(run=cmd_facts_history)
