"""``fieldtrace collect``: run a KB profile on devices into one encrypted bundle."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent.job import JobResult
    from agent.runner import Plan, PlannedStep, StepResult


def register(sub: Any) -> None:
    p = sub.add_parser(
        "collect",
        help="collect from devices into an encrypted bundle",
        description="Collect evidence from devices, following the KB profile of each device's "
        "type, into one scrubbed, signed and encrypted bundle that goes to the outbox.",
    )
    p.add_argument(
        "devices",
        nargs="*",
        metavar="DEVICE",
        help="devices to collect from (default: every configured device)",
    )
    p.add_argument(
        "-T",
        "--type",
        action="append",
        default=[],
        metavar="TYPE",
        dest="types",
        help="also every device of this KB type (repeatable)",
    )
    p.add_argument(
        "-a",
        "--all",
        action="store_true",
        dest="all_devices",
        help="every configured device (the default when no DEVICE or --type is given)",
    )
    p.add_argument("-p", "--profile", help="KB profile (problem type); default: 'default'")
    p.add_argument("-t", "--ticket", help="HelpDesk ticket the bundle belongs to")
    p.add_argument(
        "--subject", default="", help="subject of the new ticket (when there is no --ticket)"
    )
    p.add_argument("--description", default="", help="what the problem is, for the new ticket")
    p.add_argument(
        "--attach",
        action="append",
        default=[],
        metavar="FILE",
        help="add a file (screenshot, notes) to the bundle under attachments/; repeat it for "
        "several files (--attach a.png --attach b.txt)",
    )
    p.add_argument("-n", "--dry-run", action="store_true", help="print the plan and touch nothing")
    p.add_argument(
        "-o",
        "--output",
        metavar="PATH",
        help="write the bundle to PATH (a file or a directory) instead of the outbox",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    p.set_defaults(handler=run)


class Progress:
    """A rich progress display on stderr when it is a terminal; silent otherwise.

    One bar for the phase (collect, scrub, pack) and, while collecting, one line per device
    with its current step and, when it is done, its status.
    """

    STYLE = {"ok": "green", "partial": "yellow", "timeout": "red", "failed": "red"}
    RANK = {"ok": 0, "partial": 1, "timeout": 2, "failed": 3}  # as the manifest ranks them

    def __init__(self, enabled: bool) -> None:
        self._p: Any = None
        self._task: Any = None
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn

            self._p = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TaskProgressColumn(),
                TextColumn("{task.fields[current]}"),
                console=Console(stderr=True),
                transient=True,
            )
            self._p.start()
        self._running: dict[str, str] = {}
        self._devices: dict[str, Any] = {}  # device name -> its task
        self._left: dict[str, int] = {}
        self._worst: dict[str, str] = {}

    def devices(self, plan: Plan) -> None:
        """One line per device (only when there are several)."""
        if self._p is None or len(plan.devices) < 2:
            return
        for d in plan.devices:
            n = len(plan.for_device(d.name))
            self._left[d.name] = n
            self._worst[d.name] = "ok"
            self._devices[d.name] = self._p.add_task(f"  {d.name}", total=n, current="waiting")

    def phase(self, name: str, total: int = 0) -> None:
        if self._p is None:
            return
        if self._task is not None:
            self._p.remove_task(self._task)
        self._task = self._p.add_task(name, total=total or None, current="")

    def advance(self, n: int) -> None:
        if self._p is not None and self._task is not None:
            self._p.advance(self._task, n)

    def step(self, event: str, ps: PlannedStep, result: StepResult | None) -> None:
        if self._p is None or self._task is None or event == "progress":
            return
        name = ps.device.name
        key = f"{name}/{ps.step.id}"
        if event == "start":
            self._running[key] = key
        else:
            self._running.pop(key, None)
            self._p.advance(self._task, 1)
        self._p.update(self._task, current=", ".join(list(self._running)[:3]))
        task = self._devices.get(name)
        if task is None:
            return
        if event == "start":
            self._p.update(task, current=f"{ps.step.id} ({ps.step.collector})")
            return
        status = result.status if result else "ok"
        if self.RANK.get(status, 0) > self.RANK[self._worst[name]]:
            self._worst[name] = status
        self._left[name] -= 1
        self._p.advance(task, 1)
        if self._left[name] <= 0:
            worst = self._worst[name]
            self._p.update(task, current=f"[{self.STYLE.get(worst, 'green')}]{worst}[/]")

    def stop(self) -> None:
        if self._p is not None:
            self._p.stop()


def run(args: argparse.Namespace) -> int:
    from agent.cli.common import emit_json, settings
    from agent.errors import ConfigError, Interrupted
    from agent.job import JobRequest, check_job, execute, prepare

    loaded = settings(args)
    if args.all_devices and (args.devices or args.types):
        raise ConfigError("--all cannot be combined with DEVICE names or --type")
    _files_given_as_devices(loaded, args.devices)
    request = JobRequest(
        devices=tuple(args.devices),
        types=tuple(args.types),
        profile=args.profile,
        ticket=args.ticket,
        output=Path(args.output) if args.output else None,
        subject=args.subject,
        description=args.description,
        attachments=tuple(Path(a) for a in args.attach),
    )
    if args.dry_run:  # every check, nothing created: no keys, outbox, staging or log file
        checked = check_job(loaded, request, touch=False)
        plan = checked.plan.describe()
        if args.json:
            emit_json(
                {"ok": True, "config": loaded.source, "profile": checked.plan.profile,
                 "steps": plan}
            )  # fmt: skip
        else:
            _print_plan(loaded.source, checked.plan.profile, plan)
        return 0
    prep = prepare(loaded, request)
    progress = Progress(sys.stderr.isatty() and not args.json)
    progress.devices(prep.plan)
    t0 = time.monotonic()
    try:
        result = execute(prep, progress)
    except KeyboardInterrupt:  # the second Ctrl-C: execute removed staging and any partial
        raise Interrupted(
            "Ctrl-C twice: the job was abandoned; nothing was kept (no bundle, no staging)"
        ) from None
    finally:
        progress.stop()
    elapsed = time.monotonic() - t0
    if args.json:
        emit_json(_json_result(result, prep.home, elapsed))
    else:
        _print_result(result, prep.home, elapsed, len(prep.recipients) - 1)
    return result.exit_code


def _files_given_as_devices(loaded: Any, names: list[str]) -> None:
    """``--attach a.txt b.txt``: b.txt is a DEVICE; say how to attach it instead."""
    from agent.errors import ConfigError

    known = {d.name for d in loaded.settings.inventory()}
    for name in names:
        if name not in known and Path(name).exists():
            raise ConfigError(
                f"{name!r} is not a configured device, but a file of that name exists; to "
                f"attach it, write --attach {name} (one --attach per file)"
            )


def _print_plan(source: str, profile: str, plan: list[dict[str, Any]]) -> None:
    print(f"plan for profile '{profile}' (config: {source}); nothing will be touched")
    for s in plan:
        opts = " ".join(f"{k}={v!r}" for k, v in s["options"].items())
        skip = f"  [skipped: {s['skip']}]" if s["skip"] else ""
        skip += "  [background]" if s.get("background") else ""
        print(
            f"  {s['device']}/{s['step']:<14} {s['collector']:<14} {opts}  "
            f"(deadline {s['deadline_s']:g}s){skip}"
        )


def _json_result(result: JobResult, home: Path, elapsed: float) -> dict[str, Any]:
    d = result.delivery
    return {
        "exit_code": result.exit_code,
        "bundle": str(result.bundle) if result.bundle else None,
        "bundle_id": result.bundle_id,
        "job_id": result.job_id,
        "seconds": round(elapsed, 3),
        "summary": result.manifest["summary"],
        "interrupted": result.interrupted,
        "scrubbed": result.counts,
        "identity": str(home / "identity.txt"),
        "signer": result.manifest["signer"],
        "delivery": None
        if d is None
        else {
            "outcome": d.outcome,
            "message": d.message,
            "location": d.receipt.location if d.receipt else None,
        },
        "ticket": result.ticket,
        "ticket_url": result.ticket_url,
        "devices": result.manifest["devices"],
        "steps": [
            {"device": r.device, "id": r.step, "status": r.status, "error": r.error}
            for r in result.results
        ],
    }


def _print_result(result: JobResult, home: Path, elapsed: float, vendor_recipients: int) -> None:
    from agent.cli.common import hint, human_size, plural, prog

    s = result.manifest["summary"]
    devices = ", ".join(result.manifest["job"]["devices"])
    counts = ", ".join(f"{k} {v}" for k, v in s.items() if k != "steps")
    print(f"collected {plural(s['steps'], 'step')} from {devices} in {elapsed:.1f}s: {counts}")
    if result.interrupted:
        print("  interrupted: steps not yet run were skipped; what was collected is bundled")
    if len(result.manifest["devices"]) > 1:
        for dev in result.manifest["devices"]:
            steps = ", ".join(f"{k} {v}" for k, v in dev["steps"].items())
            print(f"  {dev['name']} ({dev['type']}): {dev['status']} ({steps})")
    for r in result.results:
        if r.status in ("failed", "timeout", "partial"):
            print(f"  {r.device}/{r.step}: {r.status}: {hint(r.error or '')}")
    if result.counts:
        total = sum(result.counts.values())
        print(
            f"scrubbed {total} secret(s): "
            + ", ".join(f"{k} {v}" for k, v in sorted(result.counts.items()))
        )
    assert result.pack is not None
    shown = result.bundle or (result.delivery.item.name if result.delivery else "")
    who = (
        f"{vendor_recipients} vendor key(s) + this site's identity"
        if vendor_recipients
        else "this site's identity only: no [vendor] recipients configured"
    )
    print(f"bundle: {shown} ({human_size(result.pack.encrypted_bytes)}, encrypted to {who})")
    d = result.delivery
    if result.ticket:
        url = f" {result.ticket_url}" if result.ticket_url else ""
        print(f"ticket: #{result.ticket}{url}")
    if d is not None and d.receipt is not None and d.receipt.backend != "directory":
        rc = d.receipt
        where = f"attached to ticket #{rc.ticket}" if rc.ticket else f"delivered by {rc.backend}"
        print(f"delivery: {where}: {rc.location}")
        print(f"signed by {result.manifest['signer']} (see '{prog()} keys show')")
        return
    if d is not None and d.outcome == "parked":
        print(
            f"delivery: parked: {hint(d.message)}\n  the bundle is kept in the outbox; fix the "
            f"cause, then run '{prog()} outbox retry' and '{prog()} outbox deliver'"
        )
    elif d is not None and d.outcome != "sent":
        print(
            f"delivery: will retry: {hint(d.message)}\n  the bundle is queued in the outbox; "
            f"'{prog()} outbox deliver' tries again now"
        )
    ident = home / "identity.txt"
    print(f"open it:  {prog()} bundle open {_q(result.bundle)}")
    # stock tools, safe on a hostile file only into a new private directory (see
    # docs/bundle-reading.md): no owners or modes from the archive, nothing overwritten
    out = _q(Path(result.bundle.name.removesuffix(".tar.zst.age") if result.bundle else "B"))
    print(
        f"   or:    mkdir -m 700 {out} && age -d -i {_q(ident)} {_q(result.bundle)} | "
        f"tar --zstd -x -k --no-same-owner --no-same-permissions -C {out}"
    )
    print(f"signed by {result.manifest['signer']} (see '{prog()} keys show')")


def _q(path: Path | None) -> str:
    import shlex

    return shlex.quote(str(path))
