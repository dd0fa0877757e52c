"""``access.check``: the remote-access verdict as a bundle step (access.json + access.txt).

The collector gets what it needs from the agent through ``device.access`` (filled by the
runner from the site config: vendor support networks, where the firewall is, the path and
destination) and ``device.kb["remote_access"]`` (the KB type's requirements); it never reads
settings. Rules on the device itself are read over ``ctx.session("ssh")``; rules of the agent
host locally, also when that host is the gateway in front of the device (FORWARD path). A
gateway reached over SSH is another device's session, which a step cannot open: that case is
skipped with a pointer to ``fieldtrace check-access``.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from typing import Any

from pydantic import Field

from collectors.base import (
    Collector,
    DeviceInfo,
    Duration,
    Facts,
    Options,
    StepContext,
    StepFailed,
    StepSkipped,
)
from collectors.firewall.access import Requirement, Target, check_access, render_text
from collectors.firewall.model import FirewallError, FirewallPermissionError
from collectors.firewall.reader import local_runner, read_ruleset, ssh_runner


def _resolve(address: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The device address as an IP (None: the agent host itself, or it does not resolve)."""
    if not address:
        return None
    try:
        return ipaddress.ip_address(address)
    except ValueError:
        pass
    try:
        return ipaddress.ip_address(socket.getaddrinfo(address, None)[0][4][0])
    except (OSError, IndexError, ValueError):
        return None


class AccessCheckOptions(Options):
    timeout: Duration = 30.0  # per command reading the rules
    extra_ports: list[int] = Field(default_factory=list)  # also check these ports
    keep_rules: bool = True  # keep the rule dumps (nft JSON, iptables-save) as artifacts
    budget: Duration = 20.0  # time for the scan of other open ports; the rest is "unknown"


class AccessCheck(Collector):
    """Read the device's firewall and check the KB's remote-access ports against it."""

    name = "access.check"
    transport = "any"
    Options = AccessCheckOptions
    summary = "remote-access verdict: required ports open to the vendor only (access.json/.txt)"

    def deadline_for(self, options: Any) -> float:
        return float(options.timeout) + float(options.budget) + 10.0

    def collect(self, ctx: StepContext, device: DeviceInfo, options: AccessCheckOptions) -> Facts:
        info: dict[str, Any] = device.access
        where = info.get("firewall") or ""
        if not where:
            raise StepSkipped(
                f"{device.name}: where its firewall is is unknown (set firewall in [[devices]])"
            )
        if where.startswith("gateway:"):
            raise StepSkipped(
                f"{device.name}: its firewall is on {where[8:]}; run 'fieldtrace check-access "
                f"{device.name}' to check it"
            )
        if where == "ssh":
            run = ssh_runner(ctx.session("ssh"), options.timeout)
        else:
            run = local_runner(min(options.timeout, max(ctx.remaining(), 1.0)))
        try:
            ruleset = read_ruleset(run, info.get("firewall_kind", "auto"), where=device.name)
        except FirewallPermissionError as exc:
            raise StepSkipped(str(exc)) from None  # a non-root run of the default profile
        except FirewallError as exc:
            raise StepFailed(str(exc)) from None
        ctx.check()
        vendor = [ipaddress.ip_network(n) for n in info.get("support_ips", [])]
        reqs = [
            Requirement(r["port"], r.get("protocol", "tcp"), r.get("purpose", ""))
            for r in device.kb.get("remote_access") or []
        ]
        dst = _resolve(info.get("dst"))
        target = Target(
            dst=dst,
            hook=info.get("hook", "input"),
            iif=info.get("interface"),
            families=(dst.version,) if dst is not None else (4, 6),
        )
        budget = min(options.budget, max(ctx.remaining() - 5.0, 1.0))
        report = check_access(ruleset, reqs, vendor, target, options.extra_ports, budget)
        doc = {"device": device.name, "firewall": where, "read": ruleset.sources,
               "notes": ruleset.notes, **report.as_dict()}  # fmt: skip
        ctx.sink.write_text("access.json", json.dumps(doc, indent=1))
        header = [
            f"{device.name} ({device.type}): firewall on "
            f"{'this host' if where == 'local' else where}: {', '.join(ruleset.sources)}",
            f"vendor support networks: {', '.join(map(str, vendor)) or '(none configured)'}",
            *[f"note: {n}" for n in ruleset.notes],
        ]
        ctx.sink.write_text("access.txt", render_text(report, header))
        if options.keep_rules:
            for name, text in ruleset.raw.items():
                ctx.sink.write_text(f"rules/{name}", text)
        return {
            "compliant": report.compliant,
            "violations": len(report.violations),
            "unknown": len(report.unknown),
        }
