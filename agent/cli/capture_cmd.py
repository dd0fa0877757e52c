"""``fieldtrace capture``: capture packets on this host straight into a bundle for a ticket."""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent.job import Prepared
    from agent.runner import PlannedStep, StepResult


def register(sub: Any) -> None:
    p = sub.add_parser(
        "capture",
        help="capture packets on this host into an encrypted bundle",
        description="Capture packets on one of this host's interfaces (tcpdump) into a scrubbed, "
        "signed and encrypted bundle, with a SIP summary when the trace holds SIP. Shows a "
        "live packet counter; Ctrl-C ends the capture early and still delivers the bundle.",
    )
    p.add_argument("-i", "--interface", required=True, help="interface name, or 'any'")
    p.add_argument("-f", "--filter", default="", metavar="BPF", help="e.g. 'udp port 5060'")
    p.add_argument("-d", "--duration", default="60s", help="capture length (default 60s)")
    p.add_argument("-c", "--max-packets", type=int, metavar="N", help="stop after N packets")
    p.add_argument("--max-bytes", metavar="SIZE", help="stop at this trace size (default 200MB)")
    p.add_argument("-t", "--ticket", help="HelpDesk ticket the bundle belongs to")
    p.add_argument(
        "-o", "--output", metavar="PATH", help="write the bundle to PATH instead of the outbox"
    )
    p.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    p.set_defaults(handler=run)


def build(args: argparse.Namespace) -> Prepared:
    """The ad-hoc job: one pcap.capture step on this host (validated like a KB step)."""
    from pathlib import Path

    from pydantic import ValidationError

    from agent.cli.common import settings
    from agent.errors import ConfigError, pydantic_problems
    from agent.job import JobRequest, load_context, prepare
    from agent.kb import Step
    from agent.runner import Plan, PlannedStep
    from agent.settings import LOCAL_DEVICE
    from collectors.pcap import PcapCapture

    loaded = settings(args)
    _check_interface(args.interface)
    kb = load_context(loaded)
    raw: dict[str, Any] = {"interface": args.interface, "duration": args.duration}
    if args.filter:
        raw["filter"] = args.filter
    if args.max_packets is not None:
        raw["max_packets"] = args.max_packets
    if args.max_bytes:
        raw["max_bytes"] = args.max_bytes
    try:
        options = PcapCapture.Options.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError("capture: " + "; ".join(pydantic_problems(exc))) from None
    device = next((d for d in loaded.settings.inventory() if d.is_local), LOCAL_DEVICE)
    step = Step("capture", PcapCapture.name, options, title="fieldtrace capture")
    plan = Plan("capture", (device,), (PlannedStep(device, kb.get(device.type), step),))
    request = JobRequest(
        devices=(device.name,),
        profile="capture",
        ticket=args.ticket,
        output=Path(args.output) if args.output else None,
    )
    return prepare(loaded, request, kb=kb, plan=plan)


def _check_interface(name: str) -> None:
    """A capture on an interface that does not exist is refused before anything starts."""
    import socket

    from agent.errors import ConfigError

    if name == "any":
        return
    try:
        here = sorted(n for _i, n in socket.if_nameindex())
    except OSError:  # cannot list them: the capture step says what went wrong
        return
    if name not in here:
        raise ConfigError(
            f"-i {name}: no such interface on this host (here: any, {', '.join(here)}); "
            "nothing was captured"
        )


class Counter:
    """The live packet counter on stderr (a terminal only)."""

    def __init__(self, enabled: bool, interface: str) -> None:
        self.enabled = enabled
        self.interface = interface
        self.t0 = time.monotonic()

    def step(self, event: str, ps: PlannedStep, result: StepResult | None) -> None:
        if not self.enabled:
            return
        if event == "start":
            self.t0 = time.monotonic()
            sys.stderr.write(f"capturing on {self.interface} (Ctrl-C to stop early)\n")
        elif event == "progress" and result is not None:
            from agent.cli.common import human_size

            f = result.facts
            sys.stderr.write(
                f"\r  {f.get('packets', 0):>10,} packets  {human_size(f.get('bytes', 0)):>10}"
                f"  {time.monotonic() - self.t0:6.0f}s "
            )
        elif event == "end":
            sys.stderr.write("\n")
        sys.stderr.flush()

    def phase(self, name: str, total: int = 0) -> None:
        if self.enabled and name != "collect":
            sys.stderr.write(f"{name}...\n")

    def advance(self, n: int) -> None:
        pass


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from agent.cli.collect_cmd import _json_result, _print_result
    from agent.cli.common import emit_json
    from agent.errors import EXIT_OK, EXIT_PARTIAL, Interrupted
    from agent.job import execute

    prep = build(args)
    counter = Counter(sys.stderr.isatty(), args.interface)  # stderr: --json stays clean
    t0 = time.monotonic()
    try:
        result = execute(prep, counter)
    except KeyboardInterrupt:  # a second Ctrl-C (the first ends the capture early)
        raise Interrupted(
            "Ctrl-C twice: the capture was abandoned; nothing was kept (no bundle, no staging)"
        ) from None
    elapsed = time.monotonic() - t0
    (res,) = result.results
    facts = res.facts
    reason = facts.get("stop_reason")
    if reason == "cancelled" and result.interrupted:
        reason = "interrupted by user"
    # Ctrl-C is the normal way to end a capture early: exit 0 when the trace is whole
    parked = result.delivery is not None and result.delivery.outcome == "parked"
    code = EXIT_OK if res.status == "ok" and not parked else EXIT_PARTIAL
    if args.json:
        out = _json_result(result, prep.home, elapsed)
        out["exit_code"] = code
        out["capture"] = {**facts, "stop_reason": reason}
        emit_json(out)
        return code
    if res.status == "ok" or facts:
        sip = facts.get("sip")
        print(
            f"captured {facts.get('packets', 0)} packets ({facts.get('bytes', 0)} bytes) on "
            f"{facts.get('interface')} in {facts.get('seconds', 0):.1f}s; stopped: {reason}; "
            f"dropped by the kernel: {facts.get('kernel_drops', 0)}"
        )
        if sip:
            print(
                f"SIP: {sip['calls']} call(s), {sip['completed']} completed, {sip['failed']} "
                f"failed; final codes {sip['by_final_code'] or '-'}"
            )
    # the stop reason above already says it was interrupted: no "steps were skipped" line
    shown = dataclasses.replace(result, interrupted=False)
    _print_result(shown, prep.home, elapsed, len(prep.recipients) - 1)
    return code
