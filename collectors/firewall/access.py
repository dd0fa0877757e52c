"""Remote-access compliance: the vendor's ports open to the vendor's networks, to nobody else.

:func:`check_access` takes a ruleset, the KB's requirements and the vendor's support
networks, and evaluates concrete packets: from representative vendor addresses (first, middle
and last of each network) and from one source per class of addresses the rules cannot tell
apart (private ranges first), to every required port and to one port per class of ports the
rules cannot tell apart (common service ports first), so the whole address and port space is
covered. Each finding names the rule that decides it and what to change.
"""

from __future__ import annotations

import ipaddress
import itertools
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from collectors.firewall.model import (
    Addr,
    Evaluation,
    Hook,
    Net,
    Packet,
    RuleRef,
    Ruleset,
    evaluate,
)

SAMPLE_PORTS = {
    "tcp": [21, 22, 23, 25, 53, 80, 110, 111, 135, 139, 143, 443, 445, 993, 995, 1433, 1521,
            2049, 2222, 3306, 3389, 5060, 5061, 5432, 5900, 6379, 8000, 8080, 8443, 9090, 27017],
    "udp": [53, 67, 69, 123, 137, 161, 162, 500, 514, 1194, 1812, 4500, 5060, 51820],
}  # fmt: skip
PRIVATE = {
    4: ["10.0.0.1", "10.255.255.254", "172.16.0.1", "172.31.255.254", "192.168.0.1",
        "192.168.255.254", "100.64.0.1"],
    6: ["fd00::1", "fdff:ffff:ffff:ffff:ffff:ffff:ffff:fffe", "fe80::1"],
}  # fmt: skip
UNIVERSE = {4: ["0.0.0.0/0"], 6: ["2000::/3", "fc00::/7", "fe80::/10"]}
BAD_V4 = [ipaddress.ip_network(n) for n in ("0.0.0.0/8", "127.0.0.0/8", "224.0.0.0/3")]
MAX_OTHERS = 400


@dataclass(frozen=True)
class Requirement:
    port: int
    protocol: Literal["tcp", "udp"] = "tcp"
    purpose: str = ""

    def label(self) -> str:
        return f"{self.port}/{self.protocol}" + (f" ({self.purpose})" if self.purpose else "")


@dataclass(frozen=True)
class Target:
    """Where the packets go: the device address (None: any of the host's), path, interface."""

    dst: Addr | None = None
    hook: Hook = "input"
    iif: str | None = None
    families: tuple[int, ...] = (4, 6)
    oif: str | None = None


def _usable(a: Addr) -> bool:
    if a.version == 4:
        return not any(a in n for n in BAD_V4) and str(a) != "255.255.255.255"
    return not (a.is_unspecified or a.is_loopback or a.is_multicast)


def _reps(net: Net) -> list[Addr]:
    """First, middle and last usable address of a network."""
    if net.num_addresses <= 2:
        return list(dict.fromkeys([net.network_address, net[-1]]))
    first, last = net.network_address + 1, net.broadcast_address - 1
    mid = net.network_address + net.num_addresses // 2
    return list(dict.fromkeys([first, mid, last]))


def vendor_sources(vendor: Iterable[Net], family: int) -> list[Addr]:
    out: list[Addr] = []
    for net in vendor:
        if net.version == family:
            out.extend(a for a in _reps(net) if _usable(a))
    return list(dict.fromkeys(out))


def other_sources(vendor: list[Net], family: int, mentioned: Iterable[Net]) -> list[Addr]:
    """One source per class of addresses the rules cannot tell apart, outside the vendor's.

    Every network a rule names (and every vendor network) cuts the address space at its first
    address and just after its last; addresses between two cuts are treated alike by every
    rule, so one of each class stands for all of them. The private ranges come first.
    """
    top = 2 ** (32 if family == 4 else 128)
    make = ipaddress.IPv4Address if family == 4 else ipaddress.IPv6Address
    mine = [n for n in vendor if n.version == family]
    universe = [ipaddress.ip_network(u) for u in UNIVERSE[family]]
    cuts = {0, top}
    for n in [*mine, *universe, *(BAD_V4 if family == 4 else []), *mentioned]:
        if n.version == family:
            cuts |= {int(n.network_address), int(n.broadcast_address) + 1}
    starts = sorted(cuts)

    def wanted(a: Addr) -> bool:
        return (
            _usable(a)
            and not any(a in n for n in mine)
            and (family == 4 or any(a in u for u in universe))
        )

    out: list[Addr] = [a for a in map(ipaddress.ip_address, PRIVATE[family]) if wanted(a)]
    for lo, nxt in itertools.pairwise(starts):
        a = make(lo + 1 if nxt - lo > 2 else lo)
        if wanted(a):
            out.append(a)
    return list(dict.fromkeys(out))


@dataclass
class Finding:
    kind: Literal["vendor-blocked", "open-to-others", "extra-open", "unknown"]
    port: int
    protocol: str
    rule: RuleRef
    sources: list[str] = field(default_factory=list)
    reason: str = ""
    fix: str = ""
    ports: list[int] = field(default_factory=list)  # extra-open: every port this rule opens

    def what(self) -> str:
        ports = self.ports or [self.port]
        if len(ports) > 6:
            return f"{len(ports)} {self.protocol} ports ({', '.join(map(str, ports[:6]))}, ...)"
        return ", ".join(f"{p}/{self.protocol}" for p in ports)

    def message(self) -> str:
        srcs = ", ".join(self.sources[:4]) + (
            f" and {len(self.sources) - 4} more" if len(self.sources) > 4 else ""
        )
        what = self.what()
        rule = f"rule {self.rule.describe()}"
        if self.rule.source == "kernel":
            rule = "no firewall rule on the path (the kernel accepts)"
        if self.kind == "vendor-blocked":
            return f"{rule} blocks {what} from the vendor ({srcs})"
        if self.kind == "open-to-others":
            return f"{rule} accepts {what} from outside the vendor's networks ({srcs})"
        if self.kind == "extra-open":
            return f"{rule} accepts {what}, which the vendor does not need, from outside ({srcs})"
        if self.rule.source == "fieldtrace":
            return f"not checked: {what}: {self.reason}"
        if self.kind == "unknown" and len(self.ports) > 1:
            return f"cannot decide {what}: {rule} {self.reason}"
        return f"cannot decide {what} from {srcs}: {rule} {self.reason}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "port": self.port,
            "ports": self.ports or [self.port],
            "protocol": self.protocol,
            "sources": self.sources,
            "rule": self.rule.as_dict(),
            "reason": self.reason,
            "message": self.message(),
            "fix": self.fix,
        }


def _fam_kw(ref: RuleRef, v6: bool) -> str:
    return "ip6" if v6 else "ip"


def scan_order(mentioned: Iterable[int]) -> list[tuple[str, int]]:
    """(protocol, port) to scan: common ports, then each port class of the ruleset."""
    bounds = {1, 65536}
    for v in mentioned:
        if 0 < v < 65536:
            bounds |= {v, v + 1}
    classes = sorted(bounds - {65536})
    out: list[tuple[str, int]] = []
    for proto in ("tcp", "udp"):
        out.extend((proto, p) for p in SAMPLE_PORTS[proto])
    for proto in ("tcp", "udp"):
        out.extend((proto, p) for p in classes)
    return list(dict.fromkeys(out))


def fix_for(
    kind: str, ref: RuleRef, port: int, proto: str, vendor: list[Net], v6: bool, reply: bool = False
) -> str:
    """What to change so the finding goes away, in the syntax of the ruleset at fault."""
    if reply and kind == "vendor-blocked":
        where = f"{ref.family} {ref.table} {ref.chain}" if ref.is_nft else ref.chain
        if ref.is_nft:
            pos = f" position {ref.handle}" if ref.handle is not None and not ref.is_policy else ""
            verb = "insert" if pos else "add"
            return (
                f"let the answers out: 'nft {verb} rule {where}{pos} ct state "
                "established,related accept'"
            )
        tool = "ip6tables" if v6 else "iptables"
        t = "" if ref.table == "filter" else f"-t {ref.table} "
        pos = "" if ref.is_policy else f" {ref.position}"
        return (
            f"let the answers out: '{tool} {t}-I {where}{pos} -m conntrack --ctstate "
            "ESTABLISHED,RELATED -j ACCEPT'"
        )
    nets = [str(n) for n in vendor if (n.version == 6) == v6] or ["<vendor network>"]
    nft_set = nets[0] if len(nets) == 1 else "{ " + ", ".join(nets) + " }"
    fam = _fam_kw(ref, v6)
    tool = "ip6tables" if v6 else "iptables"
    if ref.source == "kernel" and kind == "extra-open":
        return "no firewall is loaded: drop by default and accept only what is needed"
    if ref.source == "kernel":
        return (
            f"no firewall is loaded: allow {port}/{proto} from the vendor only, e.g. "
            f"'{tool} -A INPUT -p {proto} --dport {port} -s {nets[0]} -j ACCEPT' then "
            f"'{tool} -A INPUT -p {proto} --dport {port} -j DROP'"
        )
    if kind == "extra-open" and ref.is_policy:
        return (
            f"the policy of {ref.label().removesuffix(' policy')} accepts what no rule stops: "
            "drop by default and accept only what is needed"
        )
    if ref.is_nft:
        where = f"{ref.family} {ref.table} {ref.chain}"
        if kind == "vendor-blocked":
            pos = f" position {ref.handle}" if ref.handle is not None and not ref.is_policy else ""
            verb = "insert" if pos else "add"
            return (
                f"allow the vendor before it: 'nft {verb} rule {where}{pos} {fam} saddr "
                f"{nft_set} {proto} dport {port} accept'"
            )
        if ref.is_policy:
            return (
                f"in {where}: 'nft add rule {where} {fam} saddr {nft_set} {proto} dport {port} "
                f"accept' then 'nft add rule {where} {proto} dport {port} drop' (or policy drop)"
            )
        if kind == "extra-open":
            return f"remove the rule (nft delete rule {where} handle {ref.handle}) or restrict it"
        if f"{fam} saddr" in ref.text:
            return f"narrow its '{fam} saddr' to the vendor's: {nft_set}"
        return f"restrict it to the vendor: add '{fam} saddr {nft_set}' to it"
    chain, table = ref.chain, ref.table
    t = "" if table == "filter" else f"-t {table} "
    if kind == "vendor-blocked":
        if ref.is_policy:
            return f"add '{tool} {t}-A {chain} -s {nets[0]} -p {proto} --dport {port} -j ACCEPT'"
        return (
            f"insert before it: '{tool} {t}-I {chain} {ref.position} -s {nets[0]} -p {proto} "
            f"--dport {port} -j ACCEPT'" + (" (one per vendor network)" if len(nets) > 1 else "")
        )
    if ref.is_policy:
        return (
            f"'{tool} {t}-A {chain} -p {proto} --dport {port} -s {nets[0]} -j ACCEPT' then "
            f"'{tool} {t}-A {chain} -p {proto} --dport {port} -j DROP' (or policy DROP)"
        )
    if kind == "extra-open":
        return f"remove it ('{tool} {t}-D {chain} {ref.position}') or restrict it with -s"
    more = f" (one copy per vendor network: {', '.join(nets)})" if len(nets) > 1 else ""
    if " -s " in f" {ref.text} " or "--src-range" in ref.text:
        return f"narrow its source to the vendor's: -s {nets[0]}{more}"
    return f"restrict it to the vendor: add -s {nets[0]} to it{more}"


@dataclass
class RequirementResult:
    requirement: Requirement
    vendor: dict[str, str] = field(default_factory=dict)  # source -> verdict
    others_open: list[str] = field(default_factory=list)
    status: Literal["ok", "violation", "unknown"] = "ok"

    def as_dict(self) -> dict[str, Any]:
        r = self.requirement
        return {
            "port": r.port,
            "protocol": r.protocol,
            "purpose": r.purpose,
            "status": self.status,
            "vendor": self.vendor,
            "open_to_others": self.others_open,
        }


@dataclass
class AccessReport:
    requirements: list[RequirementResult] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    checked_sources: dict[str, int] = field(default_factory=dict)
    checked_ports: int = 0
    other_sources: int = 0  # of the checked sources, those outside the vendor's networks
    notes: list[str] = field(default_factory=list)

    @property
    def violations(self) -> list[Finding]:
        return [f for f in self.findings if f.kind != "unknown"]

    @property
    def unknown(self) -> list[Finding]:
        return [f for f in self.findings if f.kind == "unknown"]

    @property
    def compliant(self) -> bool:
        return not self.findings

    def as_dict(self) -> dict[str, Any]:
        return {
            "compliant": self.compliant,
            "requirements": [r.as_dict() for r in self.requirements],
            "violations": [f.as_dict() for f in self.violations],
            "unknown": [f.as_dict() for f in self.unknown],
            "checked_sources": self.checked_sources,
            "checked_ports": self.checked_ports,
            "other_sources": self.other_sources,
            "notes": self.notes,
        }


class _Collector:
    """Groups findings by (kind, port, protocol, rule) so one rule is one line."""

    def __init__(self, vendor: list[Net]) -> None:
        self.vendor = vendor
        self.by_key: dict[tuple[str, int, str, str], Finding] = {}

    def add(self, kind: str, ev: Evaluation) -> None:
        pkt, ref = ev.packet, ev.decision.rule
        assert pkt.dport is not None
        reply = ev.decision.reason.startswith("the reply")
        port = 0 if kind in ("extra-open", "unknown") else pkt.dport
        key = (kind, port, pkt.proto, ref.label() + ref.source)
        f = self.by_key.get(key)
        if f is None:
            f = Finding(
                kind,  # type: ignore[arg-type]
                pkt.dport,
                pkt.proto,
                ref,
                reason=ev.decision.reason,
                fix=""
                if kind == "unknown"
                else fix_for(kind, ref, pkt.dport, pkt.proto, self.vendor, pkt.v6, reply),
            )
            self.by_key[key] = f
        if str(pkt.src) not in f.sources:
            f.sources.append(str(pkt.src))
        if pkt.dport not in f.ports:
            f.ports.append(pkt.dport)


def check_access(
    ruleset: Ruleset,
    requirements: list[Requirement],
    vendor: list[Net],
    target: Target,
    extra_ports: Iterable[int] = (),
    budget: float = float("inf"),
) -> AccessReport:
    """Evaluate the requirements and every other port against vendor and other sources.

    Other ports: one per class of ports the ruleset cannot tell apart (every port a rule
    names, the one after it, and the start of each gap), which covers all 65535; common
    service ports first. ``budget`` (seconds) bounds that scan; ports left unchecked become
    an ``unknown`` finding, never a silent pass.
    """
    report = AccessReport()
    found = _Collector(vendor)
    mentioned = ruleset.networks()
    families = [f for f in target.families if target.dst is None or target.dst.version == f]
    vend = {f: vendor_sources(vendor, f) for f in families}
    others = {f: other_sources(vendor, f, mentioned) for f in families}
    for fam in families:
        if len(others[fam]) > MAX_OTHERS:
            report.notes.append(
                f"IPv{fam}: the rules cut the address space into {len(others[fam])} classes; "
                f"{MAX_OTHERS} were checked (the first ones, private ranges first)"
            )
            others[fam] = others[fam][:MAX_OTHERS]
    report.other_sources = sum(len(others[f]) for f in families)
    report.checked_sources = {f"ipv{f}": len(vend[f]) + len(others[f]) for f in families}

    def ev(src: Addr, proto: str, port: int) -> Evaluation:
        pkt = Packet(
            src,
            proto,  # type: ignore[arg-type]
            port,
            dst=target.dst,
            iif=target.iif,
            oif=target.oif,
            hook=target.hook,
        )
        return evaluate(ruleset, pkt)

    required = {(r.port, r.protocol) for r in requirements}
    for req in requirements:
        res = RequirementResult(req)
        for fam in families:
            for src in vend[fam]:
                e = ev(src, req.protocol, req.port)
                res.vendor[str(src)] = e.verdict
                if e.verdict == "unknown":
                    found.add("unknown", e)
                elif not e.accepted:
                    found.add("vendor-blocked", e)
            for src in others[fam]:
                e = ev(src, req.protocol, req.port)
                if e.verdict == "unknown":
                    found.add("unknown", e)
                elif e.accepted:
                    res.others_open.append(str(src))
                    found.add("open-to-others", e)
        verdicts = set(res.vendor.values())
        if res.others_open or verdicts - {"accept", "unknown"}:
            res.status = "violation"
        elif "unknown" in verdicts or any(
            f.kind == "unknown" and req.port in f.ports and f.protocol == req.protocol
            for f in found.by_key.values()
        ):
            res.status = "unknown"
        report.requirements.append(res)
    deadline = time.monotonic() + budget
    count = 0
    skipped: dict[str, list[int]] = {}
    for proto, port in scan_order(ruleset.ports() | set(extra_ports)):
        if (port, proto) in required:
            continue
        if time.monotonic() > deadline:
            skipped.setdefault(proto, []).append(port)
            continue
        count += 1
        for fam in families:
            for src in others[fam]:
                e = ev(src, proto, port)
                if e.accepted:
                    found.add("extra-open", e)
                elif e.verdict == "unknown":
                    found.add("unknown", e)
    for proto, ports in skipped.items():
        ref = RuleRef("fieldtrace", "", "", "", 0, f"time budget of {budget:g}s")
        f = Finding("unknown", ports[0], proto, ref, ports=ports)
        f.reason = (
            "the scan for other open ports stopped at its time budget (a large ruleset); "
            "'fieldtrace check-access' has no budget, access.check takes budget"
        )
        found.by_key[("unknown", 0, proto, "budget")] = f
    report.checked_ports = count + len(required)
    order = {"vendor-blocked": 0, "open-to-others": 1, "extra-open": 2, "unknown": 3}
    report.findings = sorted(
        found.by_key.values(), key=lambda f: (order[f.kind], f.protocol, f.port)
    )
    return report


def vendor_summary(res: RequirementResult) -> str:
    verdicts = list(res.vendor.values())
    if not verdicts:
        return "no vendor networks"
    ok = verdicts.count("accept")
    if ok == len(verdicts):
        return f"allowed ({ok}/{len(verdicts)})"
    if "unknown" in verdicts and ok + verdicts.count("unknown") == len(verdicts):
        return f"unknown ({verdicts.count('unknown')}/{len(verdicts)})"
    return f"BLOCKED ({len(verdicts) - ok}/{len(verdicts)})"


def others_summary(res: RequirementResult, checked: int) -> str:
    if res.others_open:
        return f"OPEN from {len(res.others_open)} of {checked} sources"
    return f"closed ({checked} sources)"


def render_text(report: AccessReport, header: list[str]) -> str:
    """The report as plain text (the bundle's access.txt; the CLI shows the same findings)."""
    lines = [*header, *(f"note: {n}" for n in report.notes), ""]
    checked = sum(report.checked_sources.values())
    lines.append(f"{'port':<10} {'purpose':<14} {'vendor':<20} {'others':<34} status")
    for r in report.requirements:
        req = r.requirement
        lines.append(
            f"{f'{req.port}/{req.protocol}':<10} {req.purpose[:14]:<14} {vendor_summary(r):<20} "
            f"{others_summary(r, report.other_sources):<34} {r.status}"
        )
    if not report.requirements:
        lines.append("(the KB lists no remote_access ports)")
    lines.append("")
    lines.extend(findings_text(report))
    verdict = "COMPLIANT" if report.compliant else (
        "VIOLATIONS" if report.violations else "UNKNOWN (not every case could be decided)"
    )  # fmt: skip
    lines.append(
        f"result: {verdict}; {len(report.violations)} violation(s), {len(report.unknown)} "
        f"undecided; {report.checked_ports} ports x {checked} sources evaluated"
    )
    return "\n".join(lines) + "\n"


def findings_text(report: AccessReport) -> list[str]:
    lines: list[str] = []
    titles = {
        "vendor-blocked": "the vendor is blocked:",
        "open-to-others": "open to sources outside the vendor's networks:",
        "extra-open": "ports open beyond the requirements:",
        "unknown": "cannot decide (fieldtrace does not model what these rules use):",
    }
    for kind, title in titles.items():
        items = [f for f in report.findings if f.kind == kind]
        if not items:
            continue
        lines.append(title)
        for f in items:
            lines.append(f"  - {f.message()}")
            if f.fix:
                lines.append(f"    fix: {f.fix}")
        lines.append("")
    return lines
