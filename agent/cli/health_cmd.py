"""``fieldtrace health list|run|status|history|explain``: the site's health checks."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser("health", help="health checks: list, run now, status, history")
    hsub = p.add_subparsers(dest="health_command", metavar="ACTION", required=True)
    ls = hsub.add_parser("list", help="every check of every device, with its settings")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(handler=run_list)
    r = hsub.add_parser("run", help="run checks now (no tickets unless --act)")
    r.add_argument("checks", nargs="*", metavar="CHECK", help="DEVICE/CHECK or CHECK (all "
                   "devices); default: every check")  # fmt: skip
    r.add_argument(
        "--act",
        action="store_true",
        help="record results and open tickets / add notes as the service would",
    )
    r.add_argument("--json", action="store_true")
    r.set_defaults(handler=run_run)
    st = hsub.add_parser("status", help="each check's last result, since when, ticket")
    st.add_argument("--json", action="store_true")
    st.set_defaults(handler=run_status)
    for name, helptext in (("history", "a check's results, newest last"),
                           ("explain", "a check's timeline: results, transitions, tickets, "
                                       "notes, suppressed repeats")):  # fmt: skip
        h = hsub.add_parser(name, help=helptext)
        h.add_argument("check", metavar="DEVICE/CHECK")
        h.add_argument("--limit", type=int, default=50)
        h.add_argument("--json", action="store_true")
        h.set_defaults(handler=run_history, only_results=name == "history")


def _when(ts: float | None) -> str:
    if not ts:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _load(args: argparse.Namespace) -> Any:
    from agent.cli.common import settings
    from agent.health import resolve_checks
    from agent.job import load_context

    loaded = settings(args)
    kb = load_context(loaded)
    return loaded, kb, resolve_checks(loaded.settings, kb, loaded.source)


def _select(checks: list[Any], names: list[str]) -> list[Any]:
    from agent.errors import ConfigError

    if not names:
        return checks
    out = [c for c in checks if c.key in names or c.id in names]
    missing = [n for n in names if not any(n in (c.key, c.id) for c in checks)]
    if missing:
        known = ", ".join(sorted(c.key for c in checks)) or "none"
        raise ConfigError(f"unknown check {', '.join(missing)} (known: {known}); see "
                          "'fieldtrace health list'")  # fmt: skip
    return out


def run_list(args: argparse.Namespace) -> int:
    from agent.cli.common import show_rows

    _, _, checks = _load(args)
    rows = [
        {"check": c.key, "title": c.title, "kind": c.kind, "profile": c.spec.profile,
         "severity": c.spec.severity, "interval_s": c.spec.interval,
         "fail_after": c.spec.fail_after, "cooldown_s": c.spec.cooldown}
        for c in checks
    ]  # fmt: skip
    return show_rows(
        args, rows, "no health checks (add health: to a KB type or [[health]] to the site config)",
        lambda r: f"{r['check']:<32} {r['kind']:<9} {r['severity']:<8} every "
        f"{r['interval_s']:g}s  profile {r['profile']}  {r['title']}",
    )  # fmt: skip


def run_run(args: argparse.Namespace) -> int:
    from agent.cli.common import emit_json
    from agent.health_run import run_check
    from agent.job import _secret_literals
    from agent.keys import home
    from agent.scrub import Scrubber

    loaded, kb, checks = _load(args)
    checks = _select(checks, args.checks)
    base = home()
    scrubber = Scrubber(loaded.settings.scrub.keywords, _secret_literals(loaded.settings))
    if args.act:
        from agent.serve import Service, load_all, service_lock
        from agent.state import open_state

        with service_lock(base):
            svc = Service(None if loaded.path is None else loaded.path, base, open_state(base),
                          load_all(loaded.path, base))  # fmt: skip
            for c in checks:
                svc.run_check_job(c.key)
            svc.outbox_pass()
        return run_status(args)
    out = []
    failed = False
    for c in checks:
        res = run_check(c, loaded.settings, kb, base, scrubber)
        failed |= res.ok is not True
        out.append({"check": c.key, "ok": res.ok, "message": res.message, "value": res.value})
        if not args.json:
            word = {True: "ok", False: "FAIL", None: "undecided"}[res.ok]
            print(f"{c.key:<32} {word:<9} {res.message}")
    if args.json:
        emit_json(out)
    return 1 if failed else 0


def run_status(args: argparse.Namespace) -> int:
    from agent.cli.common import show_rows
    from agent.keys import home
    from agent.state import open_state

    st = open_state(home())
    rows = [dict(r) for r in st.query("SELECT * FROM checks ORDER BY id")]
    return show_rows(
        args, rows, "no results yet (the service records them; 'fieldtrace health run --act' too)",
        lambda r: f"{r['id']:<32} {r['state']:<7} since {_when(r['since'])}  failures "
        f"{r['failures']}  ticket {r['ticket'] or '-'}  {r['last_message']}",
    )  # fmt: skip


def run_history(args: argparse.Namespace) -> int:
    from agent.cli.common import emit_json
    from agent.health_engine import Engine
    from agent.keys import home
    from agent.state import open_state

    st = open_state(home())
    eng = Engine(st, "", lambda: 0.0)
    rows = eng.timeline(args.check, args.limit * (1 if args.only_results else 4))
    if args.only_results:
        rows = [r for r in rows if r["kind"] == "result"][-args.limit :]
    if not rows:
        from agent.errors import ConfigError

        known = ", ".join(r["id"] for r in st.query("SELECT id FROM checks ORDER BY id"))
        raise ConfigError(f"no history for {args.check!r} (checks with history: "
                          f"{known or 'none'})")  # fmt: skip
    if args.json:
        emit_json(rows)
        return 0
    for r in rows:
        print(f"{_when(float(str(r['at'])))}  {r['kind']!s:<10} {r['detail']}")
    return 0
