"""``iptables-save`` / ``ip6tables-save`` output (nft or legacy backend) -> tables of rules.

Each ``-A`` line is split with shlex and parsed into a list of matches and a target. Options
of the matches fieldtrace models (protocol, addresses, interfaces, ports, multiport, tcp
flags, conntrack/state, iprange, addrtype, comment) become predicates; any other match module
or option becomes an ``unknown`` predicate naming it, so a rule using it is never guessed.
"""

from __future__ import annotations

import ipaddress
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field

from collectors.firewall.model import (
    L4_NUMBERS,
    TCP_FLAGS,
    Action,
    Chain,
    FirewallError,
    Packet,
    RuleRef,
    Table,
    Tri,
    Unknown,
    all_of,
    iface_matches,
    negate,
    parse_net,
    service_port,
)

Pred = Callable[[Packet], Tri]

# table -> builtin chain -> (hook, priority) on the paths fieldtrace models
HOOKS: dict[str, dict[str, tuple[str, int]]] = {
    "raw": {"PREROUTING": ("prerouting", -300), "OUTPUT": ("output", -300)},
    "mangle": {"PREROUTING": ("prerouting", -150), "INPUT": ("input", -150),
               "FORWARD": ("forward", -150), "OUTPUT": ("output", -150),
               "POSTROUTING": ("postrouting", -150)},
    "nat": {"PREROUTING": ("prerouting", -100), "INPUT": ("input", 100),
            "OUTPUT": ("output", -100), "POSTROUTING": ("postrouting", 100)},
    "filter": {"INPUT": ("input", 0), "FORWARD": ("forward", 0), "OUTPUT": ("output", 0)},
    "security": {"INPUT": ("input", 50), "FORWARD": ("forward", 50), "OUTPUT": ("output", 50)},
}  # fmt: skip
BUILTIN_CHAINS = {"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"}
# targets that never change whether the packet is accepted
NOOP_TARGETS = {
    "LOG", "NFLOG", "ULOG", "TRACE", "AUDIT", "MARK", "CONNMARK", "CONNSECMARK", "SECMARK",
    "DSCP", "TOS", "TTL", "HL", "TCPMSS", "CLASSIFY", "CHECKSUM", "IDLETIMER", "LED",
}  # fmt: skip
GENERAL = {
    "-p", "--protocol", "-s", "--source", "--src", "-d", "--destination", "--dst",
    "-i", "--in-interface", "-o", "--out-interface", "-m", "--match", "-j", "--jump",
    "-g", "--goto", "-f", "--fragment", "-c", "--set-counters", "-4", "--ipv4", "-6", "--ipv6",
}  # fmt: skip
COSTS = {
    "--dport": 0, "--destination-port": 0, "--dports": 0, "--destination-ports": 0,
    "-p": 1, "--protocol": 1, "-i": 2, "--in-interface": 2, "--ctstate": 3, "--state": 3,
}  # fmt: skip
CT_STATES = {"NEW", "ESTABLISHED", "RELATED", "INVALID", "UNTRACKED", "SNAT", "DNAT"}


@dataclass
class IptRule:
    ref: RuleRef
    preds: list[Pred] = field(default_factory=list)
    target: str | None = None
    target_opts: list[str] = field(default_factory=list)
    goto: bool = False

    def evaluate(self, pkt: Packet, table: Table) -> Action | None:
        matched = all_of(p(pkt) for p in self.preds)
        if matched is False:
            return None
        action = self._action(table)
        if isinstance(matched, Unknown) and action.kind != "continue":
            return Action("unknown", matched.reason, then=action)
        return action

    def _action(self, table: Table) -> Action:
        t = self.target
        if t is None or t in NOOP_TARGETS:
            return Action("continue")
        if self.goto:
            return Action("goto", t)
        if t in ("ACCEPT", "DROP", "RETURN"):
            return Action(t.lower())  # type: ignore[arg-type]
        if t in ("SNAT", "MASQUERADE") and table.name == "nat":
            return Action("accept")  # source NAT rewrites, it does not filter  # type: ignore[arg-type]
        if t == "REJECT":
            return Action("reject", " ".join(self.target_opts))
        if t in table.chains:
            return Action("jump", t)
        if t == "CT" and "--notrack" not in self.target_opts:
            return Action("continue")
        return Action("unknown", f"target {t} is not modelled")


def _proto_pred(value: str) -> Pred:
    v = value.lower()
    if v in ("all", "0"):
        return lambda pkt: True
    number = L4_NUMBERS.get(v)
    if number is None and v.isdigit():
        number = int(v)

    def pred(pkt: Packet) -> Tri:
        return L4_NUMBERS[pkt.proto] == number

    return pred


def _addr_pred(value: str, field_name: str, table: Table) -> Pred:
    nets = []
    for part in value.split(","):
        try:
            nets.append(parse_net(part))
        except ValueError:
            raise FirewallError(f"not an address or network: {part!r}") from None
    table.networks.update(nets)

    def pred(pkt: Packet) -> Tri:
        addr = pkt.src if field_name == "src" else pkt.dst
        if addr is None:
            return Unknown(f"matches the {field_name} address {value} and it is unknown")
        return any(addr in n for n in nets)

    return pred


def _port(text: str) -> int:
    port = service_port(text)
    if port is None:
        raise FirewallError(f"unknown port or service name {text!r}")
    return port


def _port_spec(text: str, table: Table) -> list[tuple[int, int]]:
    """``22``, ``1000:2000``, ``:1024``, ``22,80,1000:2000`` -> inclusive ranges."""
    out = []
    for part in text.split(","):
        if ":" in part:
            lo_s, hi_s = part.split(":", 1)
            lo = _port(lo_s) if lo_s else 0
            hi = _port(hi_s) if hi_s else 65535
        else:
            lo = hi = _port(part)
        out.append((lo, hi))
        table.ports.update({lo, hi})
    return out


def _ports_pred(ranges: list[tuple[int, int]], which: str) -> Pred:
    def pred(pkt: Packet) -> Tri:
        if pkt.dport is None:  # a reply: its destination is the client's port
            if which == "dport" or pkt.sport is None:
                return Unknown("matches the destination port of a reply (the client's port)")
            if any(lo <= pkt.sport <= hi for lo, hi in ranges):
                return True
            if which == "either":
                return Unknown("matches the destination port of a reply (the client's port)")
            return False
        if which == "sport":
            if pkt.sport is None:
                return Unknown("matches the source port and it is unknown")
            port = pkt.sport
        elif which == "either":
            if pkt.sport is None:
                if any(lo <= pkt.dport <= hi for lo, hi in ranges):
                    return True
                return Unknown("matches the source port and it is unknown")
            return any(lo <= p <= hi for lo, hi in ranges for p in (pkt.dport, pkt.sport))
        else:
            port = pkt.dport
        return any(lo <= port <= hi for lo, hi in ranges)

    return pred


def _l4(proto: str | None, pred: Pred) -> Pred:
    """Port and flag matches only apply to their protocol (iptables requires -p)."""

    def wrapped(pkt: Packet) -> Tri:
        if proto is not None and pkt.proto != proto:
            return False
        return pred(pkt)

    return wrapped


def _tcp_flags(mask: str, comp: str) -> Pred:
    def flags(text: str) -> set[str]:
        names = {f.lower() for f in text.split(",")}
        if "all" in names:
            return set(TCP_FLAGS)
        return names - {"none"}

    m, c = flags(mask), flags(comp)

    def pred(pkt: Packet) -> Tri:
        return (set(pkt.tcp_flags) & m) == c

    return pred


def _ctstate(value: str) -> Pred:
    states = {s.upper() for s in value.split(",")}
    bad = states - CT_STATES
    if bad:
        raise FirewallError(f"unknown conntrack state {', '.join(sorted(bad))}")

    def pred(pkt: Packet) -> Tri:
        if pkt.ct_state.upper() in states:
            return True
        if states & {"SNAT", "DNAT"}:
            return Unknown("matches the SNAT/DNAT conntrack state (NAT is not modelled)")
        return False

    return pred


def _range_pred(value: str, field_name: str, table: Table) -> Pred:
    lo_s, _, hi_s = value.partition("-")
    lo, hi = ipaddress.ip_address(lo_s), ipaddress.ip_address(hi_s or lo_s)
    table.networks.update(ipaddress.summarize_address_range(lo, hi))

    def pred(pkt: Packet) -> Tri:
        addr = pkt.src if field_name == "src" else pkt.dst
        if addr is None:
            return Unknown("matches the destination address and it is unknown")
        return addr.version == lo.version and lo <= addr <= hi  # type: ignore[operator]

    return pred


def _addrtype(value: str, which: str) -> Pred:
    types = {t.upper() for t in value.split(",")}

    def pred(pkt: Packet) -> Tri:
        local = pkt.hook == ("output" if which == "src" else "input")
        actual = {"LOCAL", "UNICAST"} if local else {"UNICAST"}
        if types <= {"UNICAST", "LOCAL", "BROADCAST", "MULTICAST", "ANYCAST"}:
            return bool(types & actual)
        return Unknown(f"address type {value} is not modelled")

    return pred


def _unknown_pred(reason: str) -> Pred:
    def pred(pkt: Packet) -> Tri:
        return Unknown(reason)

    return pred


class _Tokens:
    def __init__(self, tokens: list[str]) -> None:
        self.t = tokens
        self.i = 0

    def more(self) -> bool:
        return self.i < len(self.t)

    def peek(self) -> str:
        return self.t[self.i] if self.more() else ""

    def next(self, what: str) -> str:
        if not self.more():
            raise FirewallError(f"{what}: a value is missing")
        self.i += 1
        return self.t[self.i - 1]


def parse_rule(line: str, table: Table, source: str, position: int) -> tuple[str, IptRule]:
    """One ``-A CHAIN ...`` line -> (chain, rule)."""
    try:
        tokens = shlex.split(line)
    except ValueError as exc:
        raise FirewallError(f"cannot split the rule: {exc}") from None
    if tokens and tokens[0].startswith("[") and tokens[0].endswith("]"):
        tokens = tokens[1:]  # iptables-save -c counters
    if len(tokens) < 2 or tokens[0] not in ("-A", "--append"):
        raise FirewallError("expected '-A CHAIN ...'")
    chain = tokens[1]
    ref = RuleRef(source, table.family, table.name, chain, position, line.strip())
    rule = IptRule(ref)
    tok = _Tokens(tokens[2:])
    costs: list[int] = []
    proto: str | None = None
    module = ""
    neg = False
    while tok.more():
        opt = tok.next("option")
        if opt == "!":
            neg = True
            continue
        value_neg = False
        pred: Pred | None = None
        if opt in ("-p", "--protocol"):
            value = tok.next(opt)
            proto = value.lower() if value.lower() in L4_NUMBERS else proto
            pred = _proto_pred(value)
        elif opt in ("-s", "--source", "--src", "-d", "--destination", "--dst"):
            pred = _addr_pred(tok.next(opt), "src" if opt in ("-s", "--source", "--src") else "dst",
                              table)  # fmt: skip
        elif opt in ("-i", "--in-interface"):
            name = tok.next(opt)
            pred = lambda pkt, n=name: iface_matches(n, pkt.iif, "+")  # noqa: E731
        elif opt in ("-o", "--out-interface"):
            name = tok.next(opt)
            pred = lambda pkt, n=name: (  # noqa: E731
                iface_matches(n, pkt.oif, "+", out=True)
                if pkt.hook == "forward"
                else Unknown(f"matches output interface {n!r} on the input path")
            )
        elif opt in ("-f", "--fragment"):
            pred = lambda pkt: False  # noqa: E731  (a connection's first packet is no fragment)
        elif opt in ("-c", "--set-counters"):
            tok.next(opt)
            tok.next(opt)
            continue
        elif opt in ("-4", "--ipv4", "-6", "--ipv6"):
            continue
        elif opt in ("-m", "--match"):
            module = tok.next(opt).lower()
            if module not in {"tcp", "udp", "multiport", "conntrack", "state", "comment",
                              "iprange", "addrtype", "icmp", "icmp6", "icmpv6"}:  # fmt: skip
                rule.preds.append(_unknown_pred(f"match module {module!r} is not modelled"))
                costs.append(9)
                while (
                    tok.more()
                    and tok.peek() not in GENERAL
                    and not (
                        tok.peek() == "!" and tok.i + 1 < len(tok.t) and tok.t[tok.i + 1] in GENERAL
                    )
                ):
                    tok.next("option")
            continue
        elif opt in ("-j", "--jump", "-g", "--goto"):
            rule.target = tok.next(opt)
            rule.goto = opt in ("-g", "--goto")
            while tok.more() and tok.peek() not in GENERAL:
                rule.target_opts.append(tok.next(opt))
            continue
        else:
            if tok.peek() == "!" and opt.startswith("--"):
                tok.next(opt)  # old style: --dport ! 22
                value_neg = True
            pred = _module_option(opt, tok, module, proto, table)
        if neg or value_neg:
            pred = (lambda p: lambda pkt: negate(p(pkt)))(pred)
            neg = False
        rule.preds.append(pred)
        costs.append(COSTS.get(opt, 5))
    # matches are ANDed: test the cheap, selective ones (ports, protocol) first
    rule.preds = [p for _, _, p in sorted(zip(costs, range(len(costs)), rule.preds, strict=True))]
    return chain, rule


def _module_option(opt: str, tok: _Tokens, module: str, proto: str | None, table: Table) -> Pred:
    l4 = module if module in ("tcp", "udp") else proto
    if opt in ("--dport", "--destination-port", "--sport", "--source-port"):
        which = "dport" if opt in ("--dport", "--destination-port") else "sport"
        return _l4(l4, _ports_pred(_port_spec(tok.next(opt), table), which))
    if opt in ("--dports", "--destination-ports", "--sports", "--source-ports", "--ports"):
        which = {"--dports": "dport", "--destination-ports": "dport", "--ports": "either"}.get(
            opt, "sport"
        )
        return _l4(proto, _ports_pred(_port_spec(tok.next(opt), table), which))
    if opt == "--syn":
        return _l4("tcp", _tcp_flags("SYN,RST,ACK,FIN", "SYN"))
    if opt == "--tcp-flags":
        mask = tok.next(opt)
        return _l4("tcp", _tcp_flags(mask, tok.next(opt)))
    if opt in ("--ctstate", "--state"):
        return _ctstate(tok.next(opt))
    if opt == "--comment":
        tok.next(opt)
        return lambda pkt: True
    if opt in ("--src-range", "--dst-range"):
        return _range_pred(tok.next(opt), "src" if opt == "--src-range" else "dst", table)
    if opt in ("--src-type", "--dst-type"):
        return _addrtype(tok.next(opt), "src" if opt == "--src-type" else "dst")
    if opt in ("--limit-iface-in", "--limit-iface-out"):
        return lambda pkt: True
    if opt in ("--icmp-type", "--icmpv6-type"):
        tok.next(opt)
        return lambda pkt: False  # only ICMP packets match, never a TCP/UDP one
    # an option of a modelled module that is not modelled itself
    if tok.more() and not tok.peek().startswith("-"):
        tok.next(opt)
    return lambda pkt: Unknown(f"option {opt} of match {module or '?'} is not modelled")


def parse_save(text: str, source: str, family: str) -> list[Table]:
    """The whole output of an ``*tables-save`` command -> tables (with modelled chains)."""
    tables: list[Table] = []
    table: Table | None = None
    positions: dict[str, int] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            if line.startswith("*"):
                table = Table(source, family, line[1:].strip())
                positions = {}
                tables.append(table)
            elif table is None:
                raise FirewallError("a rule or chain before any '*table' line")
            elif line == "COMMIT":
                table = None
            elif line.startswith(":"):
                parts = line[1:].split()
                if len(parts) < 2:
                    raise FirewallError("expected ':CHAIN POLICY [packets:bytes]'")
                name, policy = parts[0], parts[1]
                hook = HOOKS.get(table.name, {}).get(name)
                if policy not in ("ACCEPT", "DROP", "-"):
                    raise FirewallError(f"unknown chain policy {policy!r}")
                table.chains[name] = Chain(
                    name,
                    hook=hook[0] if hook else None,
                    priority=hook[1] if hook else 0,
                    policy=None if policy == "-" else policy.lower(),  # type: ignore[arg-type]
                    type="nat" if table.name == "nat" else "filter",
                )
            elif line.startswith(("-A ", "--append ", "[")):
                chain_name = line.lstrip("[0123456789:] ").split()[1]
                positions[chain_name] = positions.get(chain_name, 0) + 1
                chain_name, rule = parse_rule(line, table, source, positions[chain_name])
                chain = table.chains.get(chain_name)
                if chain is None:
                    if chain_name in BUILTIN_CHAINS:
                        chain = table.chains[chain_name] = Chain(chain_name)
                    else:
                        raise FirewallError(f"rule for chain {chain_name!r}, never declared")
                chain.rules.append(rule)
            else:
                raise FirewallError("not a table, chain, rule or COMMIT line")
        except FirewallError as exc:
            raise FirewallError(f"{source}-save line {lineno}: {exc}: {line[:120]}") from None
        except (ValueError, IndexError) as exc:
            raise FirewallError(f"{source}-save line {lineno}: {exc}: {line[:120]}") from None
    if table is not None:
        raise FirewallError(f"{source}-save: table {table.name} has no COMMIT (output cut short?)")
    return tables
