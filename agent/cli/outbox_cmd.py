"""``fieldtrace outbox list|deliver|retry``: the spool of bundles waiting for delivery."""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from uploader.outbox import Attempt, Item, Outbox


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
        "retrying with backoff, until nothing is queued (parked bundles wait for a human); "
        "Ctrl-C stops after the current attempt (twice: at once). Exit 0 when everything "
        "tried was delivered, 1 when something is still queued or was parked, 2 for an "
        "unknown NAME.",
    )
    dl.add_argument("name", nargs="?", help="one bundle (default: every queued bundle)")
    dl.add_argument("--wait", action="store_true", help="retry with backoff until done")
    dl.add_argument("--json", action="store_true")
    dl.set_defaults(handler=run_deliver)
    rt = osub.add_parser(
        "retry", help="put parked bundles back in the queue, due now (and waiting ones)"
    )
    rt.add_argument("name", nargs="?", help="one bundle (default: all parked and waiting)")
    rt.add_argument("--json", action="store_true")
    rt.set_defaults(handler=run_retry)


def _outbox(args: argparse.Namespace) -> Any:
    from agent.cli.common import settings
    from agent.delivery import make_outbox
    from agent.keys import home

    return make_outbox(settings(args).settings, home())


def _find(box: Outbox, name: str) -> Item:
    """The item called ``name`` (a path to it is fine too); ConfigError (exit 2) if none."""
    from pathlib import Path

    from agent.cli.common import prog
    from agent.errors import ConfigError

    wanted = Path(name).name
    for item in box.items():
        if item.name == wanted:
            return item
    raise ConfigError(f"no bundle named {name} in the outbox; '{prog()} outbox list' shows them")


def run_list(args: argparse.Namespace) -> int:
    from agent.cli.common import emit_json, hint, human_size

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
        extra = r["location"] if r["state"] == "sent" else hint(r["last_error"] or "")
        if r["state"] == "queued" and r["next_attempt"] and r["next_attempt"] > time.time():
            extra = f"next try in {r['next_attempt'] - time.time():.0f}s; {extra}"
        ticket = f"  ticket #{r['ticket']}" if r["ticket"] else ""
        print(f"{r['state']:<7} {r['name']}  {human_size(r['size'])}{ticket}  {extra}")
    used, count = box.used_bytes()
    if count:
        print(f"{count} bundle(s) waiting, {human_size(used)}")
    return 0


def _row(a: Attempt) -> dict[str, Any]:
    return {
        "name": a.item.name,
        "outcome": a.outcome,
        "message": a.message,
        "ticket": a.receipt.ticket if a.receipt else a.item.meta.ticket,
    }


def run_deliver(args: argparse.Namespace) -> int:
    from agent.cli.common import emit_json, hint, prog, settings
    from agent.delivery import make_backend, make_outbox
    from agent.errors import EXIT_OK, EXIT_PARTIAL, Interrupted
    from agent.keys import home

    s = settings(args).settings
    box = make_outbox(s, home())
    name = None
    if args.name:
        item = _find(box, args.name)
        name = item.name
        if item.state != "queued":
            return _not_queued(args, item)
    backend = make_backend(s, home())
    stopped = False
    if args.wait:
        attempts, stopped = _wait(box, backend, name)
    else:
        try:
            attempts = box.deliver(backend, force=True, only=name)
        except KeyboardInterrupt:
            raise Interrupted(
                "Ctrl-C: the delivery was stopped; every bundle stays queued (the next "
                f"'{prog()} outbox deliver' resumes where this one stopped)"
            ) from None
    left = [i for i in box.items("queued") if name is None or i.name == name]
    code = EXIT_PARTIAL if left or any(a.outcome != "sent" for a in attempts) else EXIT_OK
    if args.json:
        emit_json([_row(a) for a in attempts])
        return code
    for r in map(_row, attempts):
        ticket = f"  ticket #{r['ticket']}" if r["ticket"] else ""
        print(f"{r['outcome']:<7} {r['name']}{ticket}  {hint(r['message'])}")
    if stopped and left:
        print(f"stopped with {len(left)} bundle(s) still queued:")
        for i in left:
            print(f"  {i.name}: {_when(i)}")
        print(f"  '{prog()} outbox deliver --wait' carries on; the bundles are safe in the outbox")
    elif not attempts:
        parked = len(box.items("parked"))
        note = f"; {parked} parked (see '{prog()} outbox list')" if parked else ""
        print(f"nothing queued{note}")
    return code


def _not_queued(args: argparse.Namespace, item: Item) -> int:
    """``deliver NAME`` for a bundle that is parked (exit 1) or delivered already (exit 0)."""
    from agent.cli.common import emit_json, hint, prog
    from agent.errors import EXIT_OK, EXIT_PARTIAL

    if item.state == "sent":
        where = (item.record.get("receipt") or {}).get("location") or "?"
        outcome, message, code = "sent", f"delivered already: {where}", EXIT_OK
    else:
        reason = hint(item.record.get("last_error") or "no reason recorded")
        outcome, code = "parked", EXIT_PARTIAL
        message = (
            f"parked, not delivered: {reason}; fix the cause, then run '{prog()} outbox "
            f"retry {item.name}'"
        )
    if args.json:
        emit_json([{"name": item.name, "outcome": outcome, "message": message, "ticket": None}])
    else:
        print(f"{outcome:<7} {item.name}  {message}")
    return code


def _when(item: Item) -> str:
    from agent.cli.common import hint

    due = item.record.get("next_attempt") or 0.0
    left = due - time.time()
    when = f"next try in {left:.0f}s" if left > 0.5 else "next try now"
    err = item.record.get("last_error")
    tries = item.record.get("attempts", 0)
    return when + (f" (attempt {tries} failed: {hint(err)})" if err else "")


def _wait(box: Outbox, backend: Any, name: str | None) -> tuple[list[Attempt], bool]:
    """``deliver --wait``: the outbox worker until nothing is queued, with its progress.

    On a terminal, a live line per waiting bundle (next try in N s, last error); otherwise
    one line per attempt on stderr. The first Ctrl-C (or SIGTERM) stops after the current
    attempt, a second one at once; returns the last attempt per bundle and whether it was
    stopped.
    """
    import signal
    import threading

    stop = threading.Event()
    show = _WaitDisplay()
    last: dict[str, Attempt] = {}

    def on_signal(signum: int, _frame: Any) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.set()
        show.note("stopping after the current attempt (Ctrl-C again to stop at once)")

    def on_attempt(a: Attempt) -> None:
        last[a.item.name] = a
        show.attempt(a)

    old_int = signal.signal(signal.SIGINT, on_signal)
    old_term = signal.signal(signal.SIGTERM, on_signal)
    show.start()
    try:
        box.run(backend, stop, only=name, on_attempt=on_attempt, on_wait=show.waiting)
    except KeyboardInterrupt:
        stop.set()
    finally:
        show.stop()
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)
    return list(last.values()), stop.is_set()


class _WaitDisplay:
    """What ``deliver --wait`` shows on stderr while it works."""

    def __init__(self) -> None:
        self.live: Any = None
        self.items: list[Item] = []
        self.said: dict[str, tuple[str, str]] = {}
        if sys.stderr.isatty():
            from rich.console import Console
            from rich.live import Live

            self.live = Live(
                self, console=Console(stderr=True), refresh_per_second=2, transient=True
            )

    def __rich__(self) -> Any:  # rendered by Live on each refresh: the countdown moves
        from rich.text import Text

        lines = [f"waiting to deliver {len(self.items)} bundle(s) (Ctrl-C to stop):"]
        lines += [f"  {i.name}: {_when(i)}" for i in self.items]
        return Text("\n".join(lines) if self.items else "delivering...")

    def start(self) -> None:
        if self.live is not None:
            self.live.start()

    def stop(self) -> None:
        if self.live is not None:
            self.live.stop()

    def note(self, text: str) -> None:
        self._line(f"outbox: {text}")

    def waiting(self, items: list[Item], _due: float) -> None:
        self.items = items

    def attempt(self, a: Attempt) -> None:
        from agent.cli.common import hint

        said = (a.outcome, a.message)
        if self.said.get(a.item.name) == said and a.outcome == "busy":
            return  # another worker still has it: said once is enough
        self.said[a.item.name] = said
        tries = a.item.record.get("attempts", 0)
        text = f"outbox: {a.outcome} {a.item.name} (attempt {tries}): {hint(a.message)}"
        if a.outcome == "retry":
            due = a.item.record.get("next_attempt", 0) - time.time()
            text += f"; next try in {max(0.0, due):.0f}s"
        self._line(text)

    def _line(self, text: str) -> None:
        if self.live is not None:
            self.live.console.print(text, markup=False, highlight=False)
        else:
            print(text, file=sys.stderr, flush=True)


def run_retry(args: argparse.Namespace) -> int:
    from agent.cli.common import emit_json, prog

    box = _outbox(args)
    if args.name:
        item = _find(box, args.name)
        if item.state == "sent":
            where = (item.record.get("receipt") or {}).get("location") or "?"
            msg = f"{item.name}: delivered already ({where}); nothing to retry"
            if args.json:
                emit_json({"ok": True, "requeued": [], "message": msg})
            else:
                print(msg)
            return 0
        moved = box.retry(item.name)
    else:
        moved = box.retry(None)
    if args.json:
        emit_json({"ok": True, "requeued": moved})
        return 0
    if moved:
        print(f"{len(moved)} bundle(s) back in the queue; '{prog()} outbox deliver' sends them")
    elif args.name:
        print(f"{args.name}: another worker is delivering it right now; nothing to do")
    else:
        print("nothing parked or waiting")
    return 0
