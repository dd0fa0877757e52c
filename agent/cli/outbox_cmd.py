"""``fieldtrace outbox list|deliver|retry``: the spool of bundles waiting for delivery."""

from __future__ import annotations

import argparse
import time
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser("outbox", help="bundles waiting for delivery")
    osub = p.add_subparsers(dest="outbox_command", metavar="ACTION", required=True)
    ls = osub.add_parser("list", help="queued, parked and sent bundles")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(handler=run_list)
    dl = osub.add_parser(
        "deliver",
        help="deliver queued bundles now",
        description="Deliver queued bundles to the configured HelpDesk. Without --wait: one "
        "attempt for each queued bundle now, ignoring backoff. With --wait: keep going, "
        "retrying with backoff, until nothing is queued (parked bundles wait for a human).",
    )
    dl.add_argument("name", nargs="?", help="one bundle (default: every queued bundle)")
    dl.add_argument("--wait", action="store_true", help="retry with backoff until done")
    dl.add_argument("--json", action="store_true")
    dl.set_defaults(handler=run_deliver)
    rt = osub.add_parser(
        "retry", help="put parked bundles back in the queue, due now (and waiting ones)"
    )
    rt.add_argument("name", nargs="?", help="one bundle (default: all parked and waiting)")
    rt.set_defaults(handler=run_retry)


def _outbox(args: argparse.Namespace) -> Any:
    from agent.cli.common import settings
    from agent.delivery import make_outbox
    from agent.keys import home

    return make_outbox(settings(args).settings, home())


def run_list(args: argparse.Namespace) -> int:
    from agent.cli.common import emit_json, human_size

    box = _outbox(args)
    rows = []
    for i in box.items():
        receipt = i.record.get("receipt") or {}
        checkpoint = i.record.get("checkpoint") or {}
        busy = i.state == "queued" and box.busy(i.name)
        rows.append(
            {
                "state": "delivering" if busy else i.state,
                "name": i.name,
                "size": i.meta.size,
                "ticket": receipt.get("ticket") or i.meta.ticket or checkpoint.get("ticket"),
                "attempts": i.record.get("attempts", 0),
                "last_error": i.record.get("last_error"),
                "next_attempt": i.record.get("next_attempt"),
                "location": receipt.get("location"),
            }
        )
    if args.json:
        emit_json(rows)
        return 0
    if not rows:
        print("outbox is empty")
    for r in rows:
        extra = r["location"] if r["state"] == "sent" else (r["last_error"] or "")
        if r["state"] == "queued" and r["next_attempt"] and r["next_attempt"] > time.time():
            extra = f"next try in {r['next_attempt'] - time.time():.0f}s; {extra}"
        ticket = f"  ticket #{r['ticket']}" if r["ticket"] else ""
        print(f"{r['state']:<7} {r['name']}  {human_size(r['size'])}{ticket}  {extra}")
    used, count = _outbox(args).used_bytes()
    if count:
        print(f"{count} bundle(s) waiting, {human_size(used)}")
    return 0


def run_deliver(args: argparse.Namespace) -> int:
    import signal
    import threading

    from agent.cli.common import emit_json, settings
    from agent.delivery import make_backend, make_outbox
    from agent.keys import home

    s = settings(args).settings
    box = make_outbox(s, home())
    backend = make_backend(s, home())
    if args.wait:
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        try:
            attempts = box.run(backend, stop)
        except KeyboardInterrupt:
            stop.set()
            attempts = []
    else:
        attempts = box.deliver(backend, force=True, only=args.name)
    rows = [
        {
            "name": a.item.name,
            "outcome": a.outcome,
            "message": a.message,
            "ticket": a.receipt.ticket if a.receipt else a.item.meta.ticket,
        }
        for a in attempts
    ]
    if args.json:
        emit_json(rows)
    else:
        if not rows:
            print("nothing queued")
        for r in rows:
            ticket = f"  ticket #{r['ticket']}" if r["ticket"] else ""
            print(f"{r['outcome']:<7} {r['name']}{ticket}  {r['message']}")
    return 1 if any(a.outcome != "sent" for a in attempts) else 0


def run_retry(args: argparse.Namespace) -> int:
    moved = _outbox(args).retry(args.name)
    if args.name and not moved:
        print(f"{args.name}: not parked or waiting in the outbox ('fieldtrace outbox list')")
        return 1
    print(f"{len(moved)} bundle(s) back in the queue" if moved else "nothing parked")
    return 0
