"""The firewall model shared by the nftables and iptables readers.

A ruleset is a list of tables; a table holds chains (base chains carry a hook, a priority and
a policy) and, for nftables, named sets and maps. A rule knows how to evaluate itself against
a :class:`Packet` and returns ``None`` (no match) or an :class:`Action`. Matching is
three-valued: a rule whose matches are all true fires; one with a false match does not; one
that depends on something the model cannot know (an xt extension, a rate limit, a mark, an
unknown input interface) fires an ``unknown`` action naming itself, unless its action could
not change the verdict anyway (counters, logging).

:func:`evaluate` walks every base chain a packet meets on its way to the host (ingress,
prerouting, input) or through it (ingress, prerouting, forward, postrouting), in hook then
priority order, across every ruleset read (nftables, iptables-nft, iptables-legacy): the
packet is accepted only if every chain accepts it; a drop or reject anywhere is final. Its
answer (established) must then get back the other way (output, postrouting; or forward).
"""

from __future__ import annotations

import functools
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

Addr = ipaddress.IPv4Address | ipaddress.IPv6Address
Net = ipaddress.IPv4Network | ipaddress.IPv6Network
Proto = Literal["tcp", "udp"]
Hook = Literal["input", "forward", "output"]
Verdict = Literal["accept", "drop", "reject", "unknown"]

L4_NUMBERS = {"tcp": 6, "udp": 17}  # the layer-4 protocols modelled, by IP protocol number
TCP_FLAGS = ("fin", "syn", "rst", "psh", "ack", "urg", "ecn", "cwr")
HOOK_ORDER = {"ingress": 0, "prerouting": 1, "input": 2, "forward": 2, "output": 2,
              "postrouting": 3}  # fmt: skip
# the hooks a packet meets: to the host, through it (gateway), and the host's own replies
PATHS = {
    "input": ("ingress", "prerouting", "input"),
    "forward": ("ingress", "prerouting", "forward", "postrouting"),
    "output": ("output", "postrouting"),
}
MAX_DEPTH = 64


class FirewallError(Exception):
    """The ruleset cannot be read or parsed; the message says what and what to do."""


class FirewallPermissionError(FirewallError):
    """Reading the ruleset needs privileges this process (or SSH user) does not have."""


@dataclass(frozen=True)
class Packet:
    """The first packet of a connection attempt (or a later one, ``ct_state="established"``).

    ``dst``, ``sport`` and ``iif`` may be unknown (None): a rule that matches on an unknown
    field gives ``unknown``, except ``iif`` "lo", which never carries traffic from a remote
    source.
    """

    src: Addr | None
    proto: Proto
    dport: int | None
    dst: Addr | None = None
    sport: int | None = None
    iif: str | None = None
    oif: str | None = None  # forward path only: the interface towards the device
    ct_state: Literal["new", "established"] = "new"
    hook: Hook = "input"

    @property
    def v6(self) -> bool:
        addr = self.src if self.src is not None else self.dst
        return addr is not None and addr.version == 6

    def reply(self) -> Packet:
        """The answer to this packet (SYN-ACK, UDP reply): the other way, established."""
        return Packet(
            src=self.dst,
            proto=self.proto,
            dport=self.sport,
            dst=self.src,
            sport=self.dport,
            iif=self.oif,
            oif=self.iif,
            ct_state="established",
            hook="forward" if self.hook == "forward" else "output",
        )

    @property
    def tcp_flags(self) -> frozenset[str]:
        if self.proto != "tcp":
            return frozenset()
        return frozenset({"syn"} if self.ct_state == "new" else {"ack"})

    def describe(self) -> str:
        where = f" on {self.iif}" if self.iif else ""
        port = self.dport if self.dport is not None else "(client port)"
        return f"{port}/{self.proto} from {self.src or 'this host'}{where}"


@dataclass(frozen=True)
class RuleRef:
    """Where a rule is: which ruleset, table, chain, its 1-based position, handle and text."""

    source: str  # "nftables", "iptables", "ip6tables", "iptables-legacy", "ip6tables-legacy"
    family: str  # "ip", "ip6", "inet", "netdev"
    table: str
    chain: str
    position: int  # 0 = the chain's policy
    text: str
    handle: int | None = None

    @property
    def is_policy(self) -> bool:
        return self.position == 0

    @property
    def is_nft(self) -> bool:
        return self.source == "nftables"

    def label(self) -> str:
        table = f"{self.family} {self.table}" if self.is_nft else self.table
        if self.is_policy:
            return f"{table} {self.chain} policy"
        handle = f" (handle {self.handle})" if self.handle is not None else ""
        return f"{table} {self.chain} #{self.position}{handle}"

    def describe(self) -> str:
        return f"{self.source} '{self.label()}: {self.text}'"

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "family": self.family,
            "table": self.table,
            "chain": self.chain,
            "position": self.position,
            "handle": self.handle,
            "text": self.text,
            "label": self.label(),
        }


NO_RULES = RuleRef("kernel", "", "", "", 0, "no base chain on this path: the kernel accepts")


@dataclass(frozen=True)
class Action:
    """What a matching rule does. ``detail`` is the target chain, reject type or reason."""

    kind: Literal["accept", "drop", "reject", "return", "jump", "goto", "continue", "unknown"]
    detail: str = ""
    then: Action | None = None  # for "unknown": what the rule does if it matches


class Unknown:
    """A match result the model cannot decide; ``reason`` says why."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def __repr__(self) -> str:
        return f"Unknown({self.reason!r})"


Tri = bool | Unknown


def all_of(results: Iterable[Tri]) -> Tri:
    """AND of three-valued results: any False wins, then the first Unknown."""
    unknown: Unknown | None = None
    for r in results:
        if r is False:
            return False
        if isinstance(r, Unknown) and unknown is None:
            unknown = r
    return unknown if unknown is not None else True


def negate(r: Tri) -> Tri:
    return r if isinstance(r, Unknown) else not r


class Rule(Protocol):
    ref: RuleRef

    def evaluate(self, pkt: Packet, table: Table) -> Action | None: ...


@dataclass
class Chain:
    name: str
    rules: list[Rule] = field(default_factory=list)
    hook: str | None = None
    priority: int = 0
    policy: Literal["accept", "drop"] | None = None
    type: str = "filter"
    devices: tuple[str, ...] = ()  # netdev ingress chains

    @property
    def is_base(self) -> bool:
        return self.hook is not None


@dataclass
class Table:
    source: str
    family: str  # ip | ip6 | inet | netdev | bridge | arp
    name: str
    chains: dict[str, Chain] = field(default_factory=dict)
    sets: dict[str, Any] = field(default_factory=dict)  # nft named sets and maps
    ports: set[int] = field(default_factory=set)  # every port a rule mentions
    networks: set[Net] = field(default_factory=set)  # every address/network a rule mentions
    cache: dict[int, Any] = field(default_factory=dict, repr=False, compare=False)

    def applies_to(self, pkt: Packet) -> bool:
        if self.family == "ip":
            return not pkt.v6
        if self.family == "ip6":
            return pkt.v6
        return self.family in ("inet", "netdev")

    def policy_ref(self, chain: Chain) -> RuleRef:
        policy = (chain.policy or "accept").upper() if not self.is_nft else chain.policy
        text = f"policy {policy}" if self.is_nft else f":{chain.name} {policy}"
        return RuleRef(self.source, self.family, self.name, chain.name, 0, text)

    @property
    def is_nft(self) -> bool:
        return self.source == "nftables"


@dataclass(frozen=True)
class Decision:
    """The verdict of one base chain (or of the whole path) and the rule that gave it."""

    verdict: Verdict
    rule: RuleRef
    reason: str = ""
    path: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "rule": self.rule.as_dict(),
            "reason": self.reason,
            "path": list(self.path),
        }


@dataclass(frozen=True)
class Evaluation:
    """The packet's fate: ``verdict``, the deciding rule, and every base chain's decision."""

    packet: Packet
    verdict: Verdict
    decision: Decision
    chains: tuple[Decision, ...] = ()

    @property
    def accepted(self) -> bool:
        return self.verdict == "accept"

    def as_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "rule": self.decision.rule.as_dict(),
            "reason": self.decision.reason,
            "chains": [d.as_dict() for d in self.chains],
        }


@dataclass
class Ruleset:
    """Every table read from a host, with what was read and any notes for the report."""

    tables: list[Table] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    raw: dict[str, str] = field(default_factory=dict)  # artifact name -> the tool's output

    def ports(self) -> set[int]:
        return set().union(*(t.ports for t in self.tables)) if self.tables else set()

    def networks(self) -> set[Net]:
        return set().union(*(t.networks for t in self.tables)) if self.tables else set()

    def base_chains(self, pkt: Packet) -> list[tuple[Table, Chain]]:
        hooks = PATHS[pkt.hook]
        found = [
            (t, c)
            for t in self.tables
            if t.applies_to(pkt)
            for c in t.chains.values()
            if c.hook in hooks and (c.type != "nat" or pkt.ct_state == "new")
        ]
        found.sort(key=lambda tc: (HOOK_ORDER[tc[1].hook or "input"], tc[1].priority))
        return found


def _walk(table: Table, chain: Chain, pkt: Packet, path: list[str], depth: int) -> Decision | None:
    """Run ``chain``; a Decision, or None when it falls off its end or returns."""
    path.append(chain.name)
    if depth > MAX_DEPTH:
        ref = RuleRef(table.source, table.family, table.name, chain.name, 0, "(jump depth)")
        return Decision("unknown", ref, f"more than {MAX_DEPTH} nested jumps", tuple(path))
    for rule in chain.rules:
        action = rule.evaluate(pkt, table)
        if action is None or action.kind == "continue":
            continue
        kind = action.kind
        if kind == "unknown" and _harmless(table, action.then, pkt, path, depth):
            continue  # whether it matches or not, the packet goes on the same way
        if kind in ("accept", "drop", "reject", "unknown"):
            return Decision(kind, rule.ref, action.detail, tuple(path))
        if kind == "return":
            return None
        target = table.chains.get(action.detail)
        if target is None:
            return Decision(
                "unknown", rule.ref, f"{kind} to a chain that does not exist", tuple(path)
            )
        decision = _walk(table, target, pkt, path, depth + 1)
        if kind == "goto" or decision is not None:
            return decision
    return None


def _harmless(table: Table, then: Action | None, pkt: Packet, path: list[str], depth: int) -> bool:
    """A rule we cannot decide jumps to a chain that decides nothing (logging, say)."""
    if then is None or then.kind != "jump" or then.detail not in table.chains:
        return False
    return _walk(table, table.chains[then.detail], pkt, list(path), depth + 1) is None


def evaluate_chain(table: Table, chain: Chain, pkt: Packet) -> Decision:
    """One base chain's verdict for ``pkt`` (its policy when no rule decides)."""
    if chain.devices and pkt.iif is None:
        ref = RuleRef(table.source, table.family, table.name, chain.name, 0, "(device)")
        return Decision(
            "unknown",
            ref,
            f"ingress chain on {', '.join(chain.devices)} and the input interface is "
            "unknown (set firewall_interface)",
        )
    path: list[str] = []
    decision = _walk(table, chain, pkt, path, 0)
    if decision is not None:
        return decision
    policy = chain.policy or "accept"
    return Decision(policy, table.policy_ref(chain), "", tuple(path))


def evaluate(ruleset: Ruleset, pkt: Packet, reply: bool = True) -> Evaluation:
    """Whether ``pkt`` gets through, and which rule decided.

    The packet must be accepted by every base chain on its path, and (``reply``) its answer
    by every chain on the way back (OUTPUT for the host's own answers, FORWARD through a
    gateway): a connection whose SYN-ACK is dropped fails like a dropped SYN (a timeout).
    """
    ev = _evaluate_path(ruleset, pkt)
    if not reply or ev.verdict != "accept":
        return ev
    back = _evaluate_path(ruleset, pkt.reply())
    chains = ev.chains + back.chains
    if back.verdict == "accept":
        return Evaluation(pkt, "accept", ev.decision, chains)
    d = back.decision
    reason = f"the reply ({pkt.reply().describe()}) is {back.verdict}"
    reason += f": {d.reason}" if d.reason else ""
    verdict: Verdict = "unknown" if back.verdict == "unknown" else "drop"
    return Evaluation(pkt, verdict, Decision(verdict, d.rule, reason, d.path), chains)


def _evaluate_path(ruleset: Ruleset, pkt: Packet) -> Evaluation:
    decisions: list[Decision] = []
    first_unknown: Decision | None = None
    for table, chain in ruleset.base_chains(pkt):
        if chain.devices and pkt.iif is not None and pkt.iif not in chain.devices:
            continue
        d = evaluate_chain(table, chain, pkt)
        decisions.append(d)
        if d.verdict in ("drop", "reject"):
            return Evaluation(pkt, d.verdict, d, tuple(decisions))
        if d.verdict == "unknown" and first_unknown is None:
            first_unknown = d
    if first_unknown is not None:
        return Evaluation(pkt, "unknown", first_unknown, tuple(decisions))
    if not decisions:
        return Evaluation(pkt, "accept", Decision("accept", NO_RULES), ())
    # the most telling accept: an explicit rule in a filter chain, else the last one
    explicit = [d for d in decisions if not d.rule.is_policy]
    return Evaluation(pkt, "accept", (explicit or decisions)[-1], tuple(decisions))


# --- value helpers shared by both parsers -----------------------------------------------


@functools.lru_cache(maxsize=65536)
def service_port(name: str) -> int | None:
    """A port given as a number or a service name (/etc/services); None if unknown."""
    if name.isdigit():
        return int(name)
    try:
        return socket.getservbyname(name)
    except OSError:
        return None


def parse_net(text: str) -> Net:
    return ipaddress.ip_network(text, strict=False)


def iface_matches(pattern: str, iif: str | None, wildcard: str, out: bool = False) -> Tri:
    """Interface name match; ``wildcard`` is "+" (iptables) or "*" (nft) at the end."""
    if iif is None:
        if pattern == "lo":
            return False  # traffic between a remote source and a device never uses loopback
        which = "output" if out else "input"
        setting = "firewall_out_interface" if out else "firewall_interface"
        return Unknown(
            f"matches {which} interface {pattern!r} and the packet's {which} interface is "
            f"unknown (set {setting} for the device)"
        )
    if pattern.endswith(wildcard):
        return iif.startswith(pattern[:-1])
    return iif == pattern
