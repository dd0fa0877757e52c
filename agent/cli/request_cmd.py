"""``fieldtrace request create`` (the engineer) and ``requests list|approve|deny`` (the site)."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser("request", help="write a signed collection request (vendor engineers)")
    rsub = p.add_subparsers(dest="request_command", metavar="ACTION", required=True)
    c = rsub.add_parser(
        "create", help="print a signed request block to paste into a note on the ticket",
        description="Signs with 'ssh-keygen -Y sign -n fieldtrace-request' (a private key, "
        "a certificate whose key is beside it, or a public key held in ssh-agent).",
    )  # fmt: skip
    c.add_argument("--key", required=True, metavar="FILE", help="your SSH key (or -cert.pub)")
    c.add_argument("--ticket", required=True, metavar="T")
    c.add_argument("--device", required=True, action="append", metavar="NAME",
                   help="a device of the site (repeat for several)")  # fmt: skip
    c.add_argument("--profile", required=True, metavar="P", help="the KB profile to run")
    c.add_argument(
        "--site",
        required=True,
        metavar="S",
        help="the site's name as its bundles give it (manifest site.slug)",
    )
    c.add_argument("--valid", default="24h", metavar="DURATION", help="validity (24h)")
    c.add_argument(
        "--requested-by",
        metavar="ID",
        help="who asks (default: the key's comment); must match the key's principal",
    )
    c.set_defaults(handler=run_create)

    q = sub.add_parser("requests", help="requests from tickets: list, approve, deny (the site)")
    qsub = q.add_subparsers(dest="requests_command", metavar="ACTION", required=True)
    ls = qsub.add_parser("list", help="requests received, newest first")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(handler=run_list)
    for name in ("approve", "deny"):
        a = qsub.add_parser(name, help=f"{name} a request waiting for the site")
        a.add_argument("id", metavar="ID", help="the request id (a prefix is enough)")
        a.add_argument("--reason", default="", help="recorded in the audit log")
        a.set_defaults(handler=run_decide, decision=name)


def run_create(args: argparse.Namespace) -> int:
    from agent import remote_request as rr
    from agent.errors import ConfigError
    from collectors.base import parse_duration

    try:
        valid = parse_duration(args.valid)
    except ValueError as exc:
        raise ConfigError(f"--valid: {exc}") from None
    key = Path(args.key)
    if not key.is_file():
        raise ConfigError(f"--key {key}: " + ("is a directory" if key.is_dir() else "not found"))
    who = args.requested_by
    if not who:
        pub = key if key.name.endswith(".pub") else key.with_name(key.name + ".pub")
        parts = pub.read_text().split() if pub.is_file() else []
        who = parts[2] if len(parts) >= 3 else ""
        if not who:
            raise ConfigError("--requested-by: the key has no comment to take it from; give it")
    from datetime import timedelta

    try:
        body = rr.body_text(args.site, args.ticket, args.device, args.profile,
                            timedelta(seconds=valid), who)  # fmt: skip
        print(rr.sign(body, key), end="")
    except rr.RequestRefused as exc:
        raise ConfigError(exc.reason) from None
    except (RuntimeError, OSError) as exc:
        from agent.errors import RuntimeFailure

        raise RuntimeFailure(str(exc)) from None
    return 0


def _state() -> Any:
    from agent.keys import home
    from agent.state import open_state

    return open_state(home())


def run_list(args: argparse.Namespace) -> int:
    from agent.cli.common import show_rows

    rows = [dict(r) for r in _state().query("SELECT * FROM requests ORDER BY received DESC")]
    for r in rows:
        r["body"] = json.loads(r["body"])

    def line(r: dict[str, Any]) -> str:
        b = r["body"]
        when = datetime.fromtimestamp(r["received"], UTC).strftime("%Y-%m-%d %H:%M")
        return (f"{r['id'][:12]}  {r['state']:<9} ticket {r['ticket']:<6} {when}  "
                f"{b['profile']} on {' '.join(b['devices'])}  by {b['requested_by']}")  # fmt: skip

    return show_rows(args, rows, "no requests received", line)


def run_decide(args: argparse.Namespace) -> int:
    from agent import audit
    from agent.errors import ConfigError
    from agent.job import requester

    st = _state()
    rows = st.query("SELECT * FROM requests WHERE id LIKE ? AND state = 'pending'",
                    (args.id + "%",))  # fmt: skip
    if len(rows) != 1:
        what = "no pending request" if not rows else "several pending requests"
        raise ConfigError(f"{what} with id {args.id!r}; see 'fieldtrace requests list'")
    row = rows[0]
    state = "accepted" if args.decision == "approve" else "denied"
    with st.tx() as db:
        db.execute("UPDATE requests SET state = ?, decided = ?, decided_by = ?, reason = ? "
                   "WHERE id = ?", (state, datetime.now(UTC).timestamp(), requester(),
                                    args.reason, row["id"]))  # fmt: skip
    audit.append(st, "approval", request=row["id"], ticket=row["ticket"],
                 decision=args.decision, by=requester(), reason=args.reason)  # fmt: skip
    print(
        f"request {row['id'][:12]} {state}"
        + ("; the service runs it at its next pass" if state == "accepted" else "")
    )
    return 0
