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
    dl = osub.add_parser("deliver", help="deliver queued bundles now (ignores backoff)")
    dl.add_argument("--json", action="store_true")
    dl.set_defaults(handler=run_deliver)
    rt = osub.add_parser("retry", help="put parked bundles back in the queue")
    rt.add_argument("name", nargs="?", help="one bundle (default: all parked)")
    rt.set_defaults(handler=run_retry)


def _outbox() -> Any:
    from agent.keys import home
    from uploader.outbox import Outbox

    return Outbox(home() / "outbox")


def run_list(args: argparse.Namespace) -> int:
    from agent.cli.common import emit_json, human_size

    items = _outbox().items()
    rows = [
        {
            "state": i.state,
            "name": i.name,
            "size": i.meta.size,
            "ticket": i.meta.ticket,
            "attempts": i.record.get("attempts", 0),
            "last_error": i.record.get("last_error"),
            "next_attempt": i.record.get("next_attempt"),
            "location": (i.record.get("receipt") or {}).get("location"),
        }
        for i in items
    ]
    if args.json:
        emit_json(rows)
        return 0
    if not rows:
        print("outbox is empty")
    for r in rows:
        extra = r["location"] if r["state"] == "sent" else (r["last_error"] or "")
        if r["state"] == "queued" and r["next_attempt"] and r["next_attempt"] > time.time():
            extra = f"next try in {r['next_attempt'] - time.time():.0f}s; {extra}"
        print(f"{r['state']:<7} {r['name']}  {human_size(r['size'])}  {extra}")
    return 0


def run_deliver(args: argparse.Namespace) -> int:
    from agent.cli.common import emit_json, settings
    from agent.helpdesk import make_backend

    s = settings(args).settings
    box = _outbox()
    attempts = box.deliver(make_backend(s, box.root), force=True)
    rows = [{"name": a.item.name, "outcome": a.outcome, "message": a.message} for a in attempts]
    if args.json:
        emit_json(rows)
    else:
        if not rows:
            print("nothing queued")
        for r in rows:
            print(f"{r['outcome']:<7} {r['name']}  {r['message']}")
    return 1 if any(a.outcome != "sent" for a in attempts) else 0


def run_retry(args: argparse.Namespace) -> int:
    moved = _outbox().retry(args.name)
    print(f"{len(moved)} bundle(s) back in the queue" if moved else "nothing parked")
    return 0
