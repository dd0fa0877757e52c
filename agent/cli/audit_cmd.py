"""``fieldtrace audit``: the hash-chained log of requests and decisions."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser("audit", help="the audit log of requests, decisions and approvals")
    p.add_argument("--json", action="store_true")
    p.add_argument("--verify", action="store_true", help="check the hash chain (exit 1 if broken)")
    p.add_argument("--limit", type=int, default=100)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from agent import audit
    from agent.cli.common import emit_json
    from agent.keys import home
    from agent.state import open_state

    st = open_state(home())
    problems = audit.verify(st) if args.verify else []
    entries = audit.entries(st, args.limit)
    if args.json:
        emit_json({"entries": [e.__dict__ for e in entries], "verified": args.verify,
                   "problems": problems})  # fmt: skip
    else:
        for e in entries:
            detail = " ".join(f"{k}={v}" for k, v in sorted(e.fields.items()))
            print(f"{e.seq:>5} {e.at} {e.event:<16} {detail}")
        if args.verify:
            print("chain: " + ("intact" if not problems else "BROKEN"))
            for p in problems:
                print(f"  {p}")
    return 1 if problems else 0
