"""`livedit queue ...`: review the edit queue."""

from __future__ import annotations

from updater.cli.context import default_user, open_queue, open_store


def cmd_queue_list(args) -> None:
    with open_queue(args) as queue:
        items = queue.list(state=args.state, fact_id=args.fact, limit=args.limit)
    if not items:
        print("the queue is empty" if args.state is None else f"no {args.state} items")
    for item in items:
        print(f"{item.id:>5} {item.state:<10} {item.origin:<8} {item.fact_id:<18} "
              f"{item.prompt.replace('{}', item.subject)!r} -> {item.new_object!r}")


def cmd_queue_show(args) -> None:
    import json

    with open_queue(args) as queue:
        detail = queue.show(args.id)
    item = detail.item
    print(f"item {item.id}: {item.state} ({item.origin}), fact {item.fact_id} v{item.fact_version or '-'}")
    print(f"  prompt    {item.prompt.replace('{}', item.subject)!r}")
    if item.question:
        print(f"  question  {item.question!r}")
    print(f"  new       {item.new_object!r}")
    print(f"  model     {item.old_answer!r}")
    if item.edit_id is not None:
        print(f"  edit id   {item.edit_id}")
    if item.superseded_by is not None:
        print(f"  superseded by item {item.superseded_by}")
    for entry in item.evidence:
        print(f"  evidence  {json.dumps(entry, ensure_ascii=False)}")
    for event in detail.events:
        arrow = f"{event.from_state or '-'} -> {event.to_state}" if event.kind == "transition" else "merged"
        print(f"  {event.at} {arrow} by {event.who}: {event.why}")


def _move_items(args, action: str) -> None:
    with open_queue(args) as queue:
        for item_id in args.ids:
            item = getattr(queue, action)(item_id, who=args.who, why=args.why)
            print(f"item {item.id} {item.state}: {item.fact_id} -> {item.new_object!r}")


def cmd_queue_approve(args) -> None:
    _move_items(args, "approve")


def cmd_queue_reject(args) -> None:
    _move_items(args, "reject")


def cmd_queue_propose(args) -> None:
    with open_store(args) as store:
        fact = store.get(args.fact_id)
    with open_queue(args) as queue:
        proposal = queue.propose_fact(fact, origin="curator", who=args.who, why=args.why or "")
    outcome = "merged into" if proposal.merged else "proposed as"
    replaced = f"; superseded item(s) {', '.join(map(str, proposal.superseded))}" if proposal.superseded else ""
    print(f"{fact.id} v{fact.version} -> {fact.object!r} {outcome} item {proposal.item.id}{replaced}")


def register(commands) -> None:
    from updater.queue import STATES

    queue = commands.add_parser("queue", help="the edit queue").add_subparsers(dest="queue_command", required=True)
    listing = queue.add_parser("list", help="queue items, oldest first")
    listing.add_argument("--state", choices=STATES)
    listing.add_argument("--fact", help="only the items of this fact id")
    listing.add_argument("--limit", type=int, help="only the newest N items")
    listing.set_defaults(run=cmd_queue_list)

    show = queue.add_parser("show", help="one item with its evidence and history")
    show.add_argument("id", type=int)
    show.set_defaults(run=cmd_queue_show)

    for name, why_required, run in (("approve", False, cmd_queue_approve), ("reject", True, cmd_queue_reject)):
        move = queue.add_parser(name, help=f"{name} proposed items")
        move.add_argument("ids", type=int, nargs="+", metavar="id")
        move.add_argument("--why", required=why_required, default=None if why_required else "approved",
                          help="the reason, kept in the item's history")
        move.add_argument("--who", default=default_user(), help="curator name (default: the OS user)")
        move.set_defaults(run=run)

    propose = queue.add_parser("propose", help="queue the current version of a curated fact")
    propose.add_argument("fact_id")
    propose.add_argument("--why", help="the reason, kept in the item's history")
    propose.add_argument("--who", default=default_user(), help="curator name (default: the OS user)")
    propose.set_defaults(run=cmd_queue_propose)
