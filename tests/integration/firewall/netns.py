"""A firewall testbed in network namespaces: a "device" between a "vendor" and an "other" link.

    vendor ns  up0 ==== vnd0  device ns  oth0 ==== up0  other ns
    198.51.100.7,.8,.100    198.51.100.1 | 203.0.113.1     203.0.113.9,.200
    2001:db8:1::7,::8       2001:db8:1::1| 192.0.2.1       192.0.2.5
                                         | 2001:db8:2::1   2001:db8:2::9, 2001:db8:2::1:5

Documentation addresses exist only inside the namespaces; nothing touches the root namespace.
Neighbour entries are static, so IPv6 works even under a ruleset that drops ICMPv6.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from collectors.firewall import Run, local_runner

PEER = Path(__file__).with_name("peer.py")
IP = shutil.which("ip") or "/usr/sbin/ip"
TCP_PORTS = [22, 80, 443, 2222, 3000, 8080, 8443]
UDP_PORTS = [53, 161, 5060]
DEVICE_ADDRS = {
    "vnd0": ["198.51.100.1", "2001:db8:1::1"],
    "oth0": ["203.0.113.1", "192.0.2.1", "2001:db8:2::1"],
}
SOURCES = {
    "vendor": ["198.51.100.7", "198.51.100.8", "198.51.100.100", "2001:db8:1::7", "2001:db8:1::8"],
    "other": ["203.0.113.9", "203.0.113.200", "192.0.2.5", "2001:db8:2::9", "2001:db8:2::1:5"],
}
LINK = {"vendor": "vnd0", "other": "oth0"}
MACS = {"vnd0": "02:00:00:00:01:01", "vendor": "02:00:00:00:01:07",
        "oth0": "02:00:00:00:02:01", "other": "02:00:00:00:02:09"}  # fmt: skip


def ip(*args: str, stdin: str | None = None) -> None:
    proc = subprocess.run(["ip", *args], input=stdin, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, f"ip {' '.join(args)}: {proc.stderr}"


def prefix_len(addr: str) -> int:
    return 64 if ":" in addr else 24


def dst_for(src: str, role: str) -> str:
    """The device address on the source's subnet."""
    addrs = DEVICE_ADDRS[LINK[role]]
    if ":" in src:
        return next(a for a in addrs if ":" in a)
    return next(a for a in addrs if ":" not in a and a.split(".")[:3] == src.split(".")[:3])


@dataclass
class NetnsBed:
    """Three namespaces with unique names; ``close()`` deletes them and stops the listener."""

    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    listener: subprocess.Popen[str] | None = None
    created: list[str] = field(default_factory=list)

    @property
    def ns(self) -> dict[str, str]:
        return {r: f"ftfw-{self.tag}-{r}" for r in ("device", "vendor", "other")}

    def up(self) -> None:
        assert shutil.which("ip"), "iproute2 (ip) is required"
        for name in self.ns.values():
            ip("netns", "add", name)
            self.created.append(name)
        dev = self.ns["device"]
        for role, link in LINK.items():
            ip("link", "add", link, "netns", dev, "address", MACS[link], "type", "veth",
               "peer", "name", "up0", "netns", self.ns[role], "address", MACS[role])  # fmt: skip
        dev_batch = ["link set lo up"]
        for role, link in LINK.items():
            dev_batch.append(f"link set {link} up")
            batch = ["link set lo up", "link set up0 up"]
            for a in DEVICE_ADDRS[link]:
                dev_batch.append(f"addr add {a}/{prefix_len(a)} dev {link} nodad")
                batch.append(f"neigh replace {a} lladdr {MACS[link]} dev up0 nud permanent")
            for a in SOURCES[role]:
                batch.append(f"addr add {a}/{prefix_len(a)} dev up0 nodad")
                dev_batch.append(f"neigh replace {a} lladdr {MACS[role]} dev {link} nud permanent")
            ip("-n", self.ns[role], "-batch", "-", stdin="\n".join(batch) + "\n")
        ip("-n", dev, "-batch", "-", stdin="\n".join(dev_batch) + "\n")
        # ICMP errors are rate limited per destination: a burst of probes would see drops
        sysctl = [
            "sysctl", "-q", "-w", "net.ipv4.icmp_ratelimit=0", "net.ipv6.icmp.ratelimit=0",
            "net.ipv4.icmp_msgs_per_sec=100000", "net.ipv4.icmp_msgs_burst=100000",
        ]  # fmt: skip
        proc = subprocess.run(self.exec_argv("device", sysctl), capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr

    def exec_argv(self, role: str, argv: list[str]) -> list[str]:
        return [IP, "netns", "exec", self.ns[role], *argv]

    def route(self) -> None:
        """Make the device a router between vendor and other (for FORWARD tests)."""
        sysctl = ["sysctl", "-q", "-w", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"]
        proc = subprocess.run(self.exec_argv("device", sysctl), capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        for role, peer in (("vendor", "other"), ("other", "vendor")):
            gw = DEVICE_ADDRS[LINK[role]]
            batch = []
            for net, via in (("203.0.113.0/24" if peer == "other" else "198.51.100.0/24", gw[0]),
                             ("2001:db8:2::/64" if peer == "other" else "2001:db8:1::/64",
                              gw[-1])):  # fmt: skip
                batch.append(f"route add {net} via {via}")
            ip("-n", self.ns[role], "-batch", "-", stdin="\n".join(batch) + "\n")

    def listen(self, role: str = "device", addrs: list[str] | None = None) -> None:
        addrs = addrs or [a for v in DEVICE_ADDRS.values() for a in v]
        self.listener = subprocess.Popen(
            self.exec_argv(
                role,
                [
                    sys.executable,
                    str(PEER),
                    "listen",
                    ",".join(addrs),
                    ",".join(map(str, TCP_PORTS)),
                    ",".join(map(str, UDP_PORTS)),
                ],
            ),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.listener.stdout is not None
        line = self.listener.stdout.readline()
        assert line.strip() == "ready", f"listener did not start: {line!r}"

    def load(self, tool: str, text: str) -> None:
        argv = {
            "nft": ["nft", "-f", "-"],
            "iptables": ["iptables-restore"],
            "ip6tables": ["ip6tables-restore"],
            "iptables-legacy": ["iptables-legacy-restore"],
            "ip6tables-legacy": ["ip6tables-legacy-restore"],
        }[tool]
        proc = subprocess.run(
            self.exec_argv("device", argv), input=text, capture_output=True, text=True, timeout=30
        )
        assert proc.returncode == 0, f"{tool} refused the rules: {proc.stderr}"

    def runner(self) -> Run:
        """Read the device's firewall as fieldtrace does on a host, inside the namespace."""
        local = local_runner()
        return lambda argv: local(self.exec_argv("device", argv))

    def probe(
        self, role: str, probes: list[tuple[str, str, str, int]], timeout: float
    ) -> list[str]:
        proc = subprocess.run(
            self.exec_argv(role, [sys.executable, str(PEER), "probe", str(timeout)]),
            input=json.dumps(probes),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        result: list[str] = json.loads(proc.stdout)
        return result

    def close(self) -> None:
        if self.listener is not None:
            self.listener.kill()
            self.listener.wait(timeout=10)
            if self.listener.stdin:
                self.listener.stdin.close()
            if self.listener.stdout:
                self.listener.stdout.close()
        for name in reversed(self.created):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)
        self.created.clear()
