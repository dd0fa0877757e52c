"""``fieldtrace check-access``: the vendor's ports open to the vendor's IPs, and to nobody else."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent.access import DeviceAccess


def register(sub: Any) -> None:
    p = sub.add_parser(
        "check-access",
        help="verify the remote-access ports against the firewall rules",
        description="For each device, read the firewall in front of it (nftables, iptables, "
        "iptables-legacy) and check that every port its KB type needs for remote access is "
        "open to the vendor's support networks and to nobody else, and which other ports are "
        "open. Exit 0 compliant, 1 violations (or undecided rules), 2 error.",
    )
    p.add_argument("devices", nargs="*", metavar="DEVICE", help="default: every device")
    p.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    p.add_argument(
        "--probe",
        action="store_true",
        help="also try each required port from this host (TCP connect / UDP datagram)",
    )
    p.add_argument(
        "--budget",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="time per device for the scan of other open ports (default 60); ports left "
        "unchecked are reported as undecided",
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from agent.access import check_device
    from agent.cli.common import emit_json, settings
    from agent.errors import EXIT_OK, EXIT_PARTIAL, EXIT_USAGE
    from agent.job import load_context
    from agent.keys import home
    from agent.runner import select_devices

    loaded = settings(args)
    kb = load_context(loaded)
    devices = select_devices(loaded.settings, list(args.devices))
    base = home()
    results = [
        check_device(loaded.settings, kb, d, base, probe=args.probe, budget=args.budget)
        for d in devices
    ]
    statuses = {r.status for r in results}
    if "error" in statuses:
        code = EXIT_USAGE
    elif statuses <= {"compliant"}:
        code = EXIT_OK
    else:
        code = EXIT_PARTIAL
    if args.json:
        emit_json(
            {
                "compliant": code == EXIT_OK,
                "exit_code": code,
                "config": loaded.source,
                "support_ips": [str(n) for n in loaded.settings.vendor.support_ips],
                "devices": [r.as_dict() for r in results],
            }
        )
    else:
        _print(results)
    return code


def _print(results: list[DeviceAccess]) -> None:
    from rich import box
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from agent.cli.common import hint
    from collectors.firewall.access import findings_text, others_summary, vendor_summary

    console = Console(highlight=False, soft_wrap=True)
    tty = console.is_terminal
    for res in results:
        dev = res.device
        console.print(
            f"[bold]{dev.name}[/bold] ({dev.type}, {dev.address}): firewall on {res.location}"
            + (f"; read {', '.join(res.ruleset.sources)}" if res.ruleset else ""),
            markup=True,
        )
        for note in res.notes:
            console.print(f"  note: {hint(note)}", markup=False)
        if res.error is not None:
            console.print(f"  [red]error:[/red] {escape(hint(res.error))}")
            console.print()
            continue
        report = res.report
        assert report is not None
        checked = sum(report.checked_sources.values())
        # box lines on a terminal only: piped or redirected, the table is plain columns
        table = Table(show_edge=False, pad_edge=False, box=box.HEAVY_HEAD if tty else None)
        for col in ("port", "purpose", "vendor", "others", "status"):
            table.add_column(col)
        style = {"ok": "green", "violation": "red", "unknown": "yellow"}
        for r in report.requirements:
            req = r.requirement
            table.add_row(
                f"{req.port}/{req.protocol}",
                req.purpose,
                vendor_summary(r),
                others_summary(r, report.other_sources),
                f"[{style[r.status]}]{r.status}[/{style[r.status]}]",
            )
        if report.requirements:
            console.print(table)
        for line in findings_text(report):
            console.print(f"  {hint(line)}" if line else "", markup=False)
        for p in res.probes:
            console.print(f"  probe {p['port']}/{p['protocol']} -> {p['host']}: {p['result']}")
        verdict = {
            "compliant": "[green]compliant[/green]",
            "violations": f"[red]{len(report.violations)} violation(s)[/red]",
            "unknown": "[yellow]undecided: see 'cannot decide'[/yellow]",
        }[res.status]
        console.print(
            f"  result: {verdict} ({report.checked_ports} ports x {checked} sources, "
            f"{res.seconds:.2f}s)"
        )
        console.print()
