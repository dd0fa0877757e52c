"""Remote-access verification for configured devices (``fieldtrace check-access``).

Where a device's firewall lives is a device setting: ``firewall = "local"`` (this host; the
default for a local device), ``"ssh"`` (the device itself, read over its SSH session; the
default when it has ssh settings) or the name of another device (the gateway in front of it:
then packets to the device's address cross the gateway's FORWARD path, not its INPUT path).
The rules are read, evaluated against the KB type's ``remote_access`` requirements and the
vendor's support networks by ``collectors.firewall.access``, which the ``access.check``
collector uses too; :func:`device_access_info` is what the runner hands that collector.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.kb import KnowledgeBase
from agent.settings import Device, Settings
from collectors.base import StepError
from collectors.firewall import FirewallError, Ruleset, local_runner, read_ruleset, ssh_runner
from collectors.firewall.access import AccessReport, Requirement, Target, check_access
from collectors.firewall.model import Hook
from collectors.firewall.reader import Run

log = logging.getLogger(__name__)


def firewall_location(settings: Settings, device: Device) -> tuple[str, Device | None]:
    """("local", None), ("ssh", device) or ("gateway", gateway); ("", None) when unset."""
    fw = device.firewall
    if fw is None:
        if device.is_local:
            return "local", None
        return ("ssh", device) if device.ssh is not None else ("", None)
    if fw == "local":
        return "local", None
    if fw == "ssh":
        return "ssh", device
    gw = next(d for d in settings.inventory() if d.name == fw)
    return "gateway", gw


def device_address(device: Device) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The device's IP address as the agent resolves it; None for the agent host itself."""
    if device.is_local:
        return None
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(device.address)
    try:
        info = socket.getaddrinfo(device.address, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return None
    return ipaddress.ip_address(info[0][4][0])


def target_for(settings: Settings, device: Device) -> Target:
    where, _ = firewall_location(settings, device)
    dst = device_address(device)
    hook: Hook = "forward" if where == "gateway" else "input"
    families = (dst.version,) if dst is not None else (4, 6)
    return Target(
        dst=dst,
        hook=hook,
        iif=device.firewall_interface,
        families=families,
        oif=device.firewall_out_interface if hook == "forward" else None,
    )


def device_access_info(settings: Settings, device: Device) -> dict[str, Any]:
    """What the ``access.check`` collector needs, JSON-able (no secrets, no DNS lookup:
    ``dst`` is the device's address as configured, None for the agent host itself)."""
    where, host = firewall_location(settings, device)
    fw = where
    if where == "gateway" and host is not None:
        # a gateway that is this host is read here; another device's session a step cannot use
        fw = "local" if host.is_local and host.ssh is None else f"gateway:{host.name}"
    return {
        "support_ips": [str(n) for n in settings.vendor.support_ips],
        "firewall": fw,
        "firewall_kind": device.firewall_kind,
        "interface": device.firewall_interface,
        "dst": None if device.is_local else device.address,
        "hook": "forward" if where == "gateway" else "input",
    }


@dataclass
class DeviceAccess:
    """The check of one device: the report, or the error that prevented it."""

    device: Device
    location: str
    target: Target
    report: AccessReport | None = None
    ruleset: Ruleset | None = None
    error: str | None = None
    notes: list[str] = field(default_factory=list)
    probes: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def status(self) -> str:
        if self.error is not None or self.report is None:
            return "error"
        if self.report.violations:
            return "violations"
        return "unknown" if self.report.unknown else "compliant"

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.device.name,
            "type": self.device.type,
            "address": self.device.address,
            "status": self.status,
            "error": self.error,
            "firewall": {
                "location": self.location,
                "kind": self.device.firewall_kind,
                "path": self.target.hook,
                "destination": str(self.target.dst) if self.target.dst else None,
                "interface": self.target.iif,
                "out_interface": self.target.oif,
                "read": self.ruleset.sources if self.ruleset else [],
            },
            "notes": self.notes,
            "probes": self.probes,
            "seconds": round(self.seconds, 3),
        }
        if self.report is not None:
            out.update(self.report.as_dict())
        return out


def _runner(where: str, host: Device | None, home: Path) -> tuple[Run, Callable[[], None]]:
    if where == "local" or (host is not None and host.is_local and host.ssh is None):
        return local_runner(), lambda: None
    assert host is not None
    from agent.sessions import DeviceSessions

    sessions = DeviceSessions(host, home)
    try:
        session = sessions.get("ssh")
    except StepError as exc:
        sessions.close()
        raise FirewallError(f"{host.name}: cannot open SSH to read the firewall: {exc}") from None
    except ModuleNotFoundError:
        sessions.close()
        raise FirewallError("the SSH transport is not available in this build") from None
    return ssh_runner(session), sessions.close


def requirements_for(kb: KnowledgeBase, device: Device) -> list[Requirement]:
    kbtype = kb.get(device.type)
    return [Requirement(r.port, r.protocol, r.purpose) for r in kbtype.remote_access]


def check_device(
    settings: Settings,
    kb: KnowledgeBase,
    device: Device,
    home: Path,
    probe: bool = False,
    budget: float = 60.0,
) -> DeviceAccess:
    t0 = time.monotonic()
    where, host = firewall_location(settings, device)
    target = target_for(settings, device)
    label = {"local": "this host", "ssh": f"{device.name} over SSH"}.get(
        where, f"gateway {host.name if host else '?'} (forward path)"
    )
    result = DeviceAccess(device, label, target)
    reqs = requirements_for(kb, device)
    if not settings.vendor.support_ips:
        result.notes.append(
            "no [vendor] support_ips configured: every source counts as 'outside the vendor'"
        )
    if not reqs:
        result.notes.append(f"KB type {device.type} lists no remote_access ports")
    if where == "gateway" and target.dst is None:
        result.error = f"{device.name}: address {device.address!r} does not resolve to an IP"
    elif not where:
        result.error = (
            f'{device.name}: where its firewall is is unknown: set firewall = "ssh" (with ssh '
            'settings), "local", or the name of the gateway device in front of it'
        )
    else:
        try:
            run, close = _runner(where, host, home)
            try:
                name = host.name if host else "this host"
                ruleset = read_ruleset(run, device.firewall_kind, where=name)
            finally:
                close()
            result.ruleset = ruleset
            result.notes.extend(ruleset.notes)
            result.report = check_access(
                ruleset, reqs, list(settings.vendor.support_ips), target, budget=budget
            )
        except FirewallError as exc:
            result.error = str(exc)
    if probe:
        result.probes = [probe_port(device, r) for r in reqs]
    result.seconds = time.monotonic() - t0
    return result


def probe_port(device: Device, req: Requirement, timeout: float = 2.0) -> dict[str, Any]:
    """Reachability from the agent: TCP connect, or a UDP datagram and a short wait."""
    host = "127.0.0.1" if device.is_local else device.address
    out: dict[str, Any] = {"port": req.port, "protocol": req.protocol, "host": host}
    t0 = time.monotonic()
    try:
        infos = socket.getaddrinfo(
            host, req.port, type=socket.SOCK_STREAM if req.protocol == "tcp" else socket.SOCK_DGRAM
        )
        family, kind, proto, _, addr = infos[0]
        with socket.socket(family, kind, proto) as s:
            s.settimeout(timeout)
            s.connect(addr)
            if req.protocol == "udp":
                s.send(b"\0")
                try:
                    s.recv(1)
                    out["result"] = "answered"
                except TimeoutError:
                    out["result"] = "no answer (open or filtered)"
            else:
                out["result"] = "open"
    except TimeoutError:
        out["result"] = "timeout (filtered)"
    except ConnectionRefusedError:
        out["result"] = "refused (reachable, nothing listening or rejected)"
    except OSError as exc:
        out["result"] = f"error: {exc.strerror or exc}"
    out["seconds"] = round(time.monotonic() - t0, 3)
    return out
