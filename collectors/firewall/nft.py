"""``nft -j list ruleset`` (JSON schema 1) -> tables of rules.

Rules are kept as their JSON expression lists and evaluated directly: ``match`` expressions
on payload (ip/ip6/tcp/udp/th), meta (l4proto, nfproto, protocol, iif, iifname), ct (state,
direction), fib daddr type, concatenations, tcp-flag bit tests; right-hand sides that are
values, prefixes, ranges, anonymous or named sets (intervals, concatenations); verdict maps;
accept/drop/reject/return/jump/goto/continue. Counters, logs and mark setting do not change
a verdict. Anything else (xt extensions from iptables-nft, limits, quotas, NAT, queue,
unknown keys) makes a rule that would fire ``unknown``, naming it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

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

ABSENT = object()  # the packet has no such header: the match is false whatever its operator
NOOP_STATEMENTS = {"counter", "log", "mangle", "set", "comment", "ct helper", "meter"}
VERDICTS = ("accept", "drop", "reject", "return", "jump", "goto", "continue", "queue")


class _Unknown(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _value(pkt: Packet, expr: Any) -> Any:
    """The packet's value for a left-hand expression, ABSENT, or raise _Unknown."""
    if not isinstance(expr, dict) or len(expr) != 1:
        raise _Unknown(f"expression {_short(expr)} is not modelled")
    ((kind, body),) = expr.items()
    if kind == "payload":
        proto, fld = body.get("protocol"), body.get("field")
        if proto in ("ip", "ip6"):
            if (proto == "ip6") != pkt.v6:
                return ABSENT
            if fld == "saddr":
                if pkt.src is None:
                    raise _Unknown("matches the source address of this host's reply")
                return pkt.src
            if fld == "daddr":
                if pkt.dst is None:
                    raise _Unknown("matches the destination address and it is unknown")
                return pkt.dst
            if fld in ("protocol", "nexthdr"):
                return pkt.proto
        elif proto in ("tcp", "udp", "th", "sctp", "dccp", "udplite"):
            if proto != "th" and proto != pkt.proto:
                return ABSENT
            if fld == "dport":
                if pkt.dport is None:
                    raise _Unknown("matches the destination port of a reply (the client's port)")
                return pkt.dport
            if fld == "sport":
                if pkt.sport is None:
                    raise _Unknown("matches the source port and it is unknown")
                return pkt.sport
            if fld == "flags" and proto == "tcp":
                return pkt.tcp_flags
        raise _Unknown(f"payload {proto} {fld} is not modelled")
    if kind == "meta":
        key = body.get("key")
        if key == "l4proto":
            return pkt.proto
        if key == "nfproto":
            return "ipv6" if pkt.v6 else "ipv4"
        if key == "protocol":
            return "ip6" if pkt.v6 else "ip"
        if key in ("iif", "iifname"):
            return ("iface", pkt.iif)
        if key in ("oif", "oifname") and pkt.hook == "forward":
            return ("oface", pkt.oif)
        raise _Unknown(f"meta {key} is not modelled")
    if kind == "ct":
        key = body.get("key")
        if key == "state":
            return frozenset({pkt.ct_state})
        if key == "direction":
            return "original"
        raise _Unknown(f"ct {key} is not modelled")
    if kind == "fib":
        if body.get("result") == "type" and body.get("flags") == ["daddr"]:
            return "local" if pkt.hook == "input" else "unicast"
        raise _Unknown("fib lookup is not modelled")
    if kind == "concat":
        parts = tuple(_value(pkt, e) for e in body)
        return ABSENT if any(p is ABSENT for p in parts) else parts
    if kind == "&":
        inner, mask = body
        v = _value(pkt, inner)
        if isinstance(v, frozenset) and isinstance(mask, list | str):
            return v & _flags(mask)
        raise _Unknown(f"bit test on {_short(inner)} is not modelled")
    raise _Unknown(f"{kind} expression is not modelled")


def _flags(x: Any) -> frozenset[str]:
    if isinstance(x, str):
        return frozenset({x})
    if isinstance(x, list):
        return frozenset(str(f) for f in x)
    raise _Unknown(f"flag value {_short(x)} is not modelled")


def _as_port(x: Any) -> int:
    if isinstance(x, int):
        return x
    port = service_port(str(x))
    if port is None:
        raise _Unknown(f"unknown service {x!r}")
    return port


def _elem_matches(v: Any, elem: Any, table: Table) -> bool:
    """Does packet value ``v`` match one element (value, prefix, range, concat)?"""
    if isinstance(elem, dict) and "elem" in elem:
        elem = elem["elem"].get("val")
    if isinstance(v, tuple) and len(v) == 2 and v[0] in ("iface", "oface"):
        if not isinstance(elem, str):
            raise _Unknown(f"interface value {_short(elem)} is not modelled")
        r = iface_matches(elem, v[1], "*", out=v[0] == "oface")
        if isinstance(r, Unknown):
            raise _Unknown(r.reason)
        return r
    if isinstance(v, tuple):
        if isinstance(elem, dict) and "concat" in elem:
            parts = elem["concat"]
            return len(parts) == len(v) and all(
                _elem_matches(a, b, table) for a, b in zip(v, parts, strict=True)
            )
        raise _Unknown(f"concatenation element {_short(elem)} is not modelled")
    if isinstance(v, frozenset):  # ct state / tcp flags: equality of flag sets
        return v == _flags(elem)
    if isinstance(v, ipaddress.IPv4Address | ipaddress.IPv6Address):
        if isinstance(elem, str):
            try:
                return v in parse_net(elem)
            except ValueError:
                raise _Unknown(f"address {elem!r} is not modelled") from None
        if isinstance(elem, dict) and "prefix" in elem:
            net = parse_net(f"{elem['prefix']['addr']}/{elem['prefix']['len']}")
            return v in net
        if isinstance(elem, dict) and "range" in elem:
            lo, hi = (ipaddress.ip_address(a) for a in elem["range"])
            return lo.version == v.version and lo <= v <= hi  # type: ignore[operator]
        raise _Unknown(f"address element {_short(elem)} is not modelled")
    if isinstance(v, int):
        if isinstance(elem, dict) and "range" in elem:
            plo, phi = (_as_port(a) for a in elem["range"])
            return plo <= v <= phi
        return v == _as_port(elem)
    if isinstance(v, str):
        if isinstance(elem, int) and v in L4_NUMBERS:
            return L4_NUMBERS[v] == elem
        return bool(v == elem)
    raise _Unknown(f"element {_short(elem)} is not modelled")


class _CompiledSet:
    """A set of addresses or ports as exact values plus sorted integer intervals."""

    def __init__(self, elems: list[Any], table: Table) -> None:
        self.exact: set[Any] = set()
        self.ranges: list[tuple[int, int, int]] = []  # (version or 0 for ports, lo, hi)
        self.rest: list[Any] = []  # elements only the generic matcher understands
        for e in elems:
            if isinstance(e, dict) and "elem" in e:
                e = e["elem"].get("val")
            try:
                if isinstance(e, int) and not isinstance(e, bool):
                    self.exact.add((0, e))
                elif isinstance(e, str) and any(c in e for c in ".:"):
                    net = parse_net(e)
                    if net.num_addresses == 1:
                        self.exact.add((net.version, int(net.network_address)))
                    else:
                        self._add_range(net.version, net.network_address, net.broadcast_address)
                elif isinstance(e, dict) and "prefix" in e:
                    net = parse_net(f"{e['prefix']['addr']}/{e['prefix']['len']}")
                    self._add_range(net.version, net.network_address, net.broadcast_address)
                elif (
                    isinstance(e, dict)
                    and "range" in e
                    and all(isinstance(x, int) for x in e["range"])
                ):
                    self.ranges.append((0, e["range"][0], e["range"][1]))
                elif isinstance(e, dict) and "range" in e:
                    lo, hi = (ipaddress.ip_address(x) for x in e["range"])
                    self._add_range(lo.version, lo, hi)
                else:
                    self.rest.append(e)
            except (ValueError, KeyError, TypeError):
                self.rest.append(e)
        self.table = table

    def _add_range(self, version: int, lo: Any, hi: Any) -> None:
        self.ranges.append((version, int(lo), int(hi)))

    def contains(self, v: Any) -> bool:
        version = 0 if isinstance(v, int) else v.version
        n = int(v)
        if (version, n) in self.exact:
            return True
        if self.ranges and any(ver == version and lo <= n <= hi for ver, lo, hi in self.ranges):
            return True
        return bool(self.rest) and any(_elem_matches(v, e, self.table) for e in self.rest)


def _compiled(elems: list[Any], table: Table) -> _CompiledSet:
    """The compiled form of a set's elements, cached on the table (elements live as long)."""
    hit = table.cache.get(id(elems))
    if hit is not None and hit[0] is elems:
        return hit[1]  # type: ignore[no-any-return]
    cs = _CompiledSet(elems, table)
    table.cache[id(elems)] = (elems, cs)
    return cs


def _elements(right: Any, table: Table) -> list[Any] | None:
    """The elements of a set right-hand side (anonymous or named), else None."""
    if isinstance(right, dict) and "set" in right:
        s = right["set"]
        return s if isinstance(s, list) else [s]
    if isinstance(right, str) and right.startswith("@"):
        named = table.sets.get(right[1:])
        if named is None:
            raise _Unknown(f"set {right} is not in the ruleset")
        elem = named.get("elem", [])
        return elem if isinstance(elem, list) else [elem]
    return None


def _match(pkt: Packet, m: dict[str, Any], table: Table) -> Tri:
    op, left, right = m.get("op", "=="), m.get("left"), m.get("right")
    try:
        v = _value(pkt, left)
        if v is ABSENT:
            return False
        elems = _elements(right, table)
        if op in ("<", ">", "<=", ">="):
            if not isinstance(v, int):
                raise _Unknown(f"comparison {op} on {_short(left)} is not modelled")
            r = _as_port(right)
            return {"<": v < r, ">": v > r, "<=": v <= r, ">=": v >= r}[op]
        if isinstance(v, frozenset) and op == "in" and elems is None:
            # flag test: ct state established,related -> any of these bits set
            return bool(v & _flags(right))
        if isinstance(v, frozenset) and elems is None and isinstance(left, dict) and "&" in left:
            hit = v == _flags(right) if right != 0 else not v
        elif elems is not None:
            if isinstance(v, frozenset):
                hit = any(bool(v & _flags(e)) for e in elems)
            elif isinstance(v, int | ipaddress.IPv4Address | ipaddress.IPv6Address):
                hit = _compiled(elems, table).contains(v)
            else:
                hit = any(_elem_matches(v, e, table) for e in elems)
        elif isinstance(v, frozenset):
            hit = bool(v & _flags(right)) if op == "in" else v == _flags(right)
        else:
            hit = _elem_matches(v, right, table)
        if op in ("==", "in"):
            return hit
        if op == "!=":
            return not hit
        raise _Unknown(f"operator {op!r} is not modelled")
    except _Unknown as exc:
        return Unknown(exc.reason)


def _verdict(obj: Any) -> Action | None:
    if not isinstance(obj, dict) or len(obj) != 1:
        return None
    ((k, body),) = obj.items()
    if k in ("accept", "drop", "return", "continue"):
        return Action(k)
    if k in ("jump", "goto"):
        return Action(k, str(body["target"]))
    return None


def _getter(left: Any) -> Callable[[Packet], Any] | None:
    """A fast accessor for the commonest left-hand sides (addresses, ports), else None."""
    if not isinstance(left, dict) or "payload" not in left:
        return None
    proto, fld = left["payload"].get("protocol"), left["payload"].get("field")
    if fld == "saddr" and proto == "ip":
        return lambda p: ABSENT if p.v6 else p.src
    if fld == "saddr" and proto == "ip6":
        return lambda p: p.src if p.v6 else ABSENT
    if fld == "dport" and proto in ("tcp", "udp"):
        return lambda p: p.dport if p.proto == proto else ABSENT
    if fld == "dport" and proto == "th":
        return lambda p: p.dport
    return None


def _fast_match(m: dict[str, Any], table: Table) -> Callable[[Packet], Tri] | None:
    """A compiled ==/!= match on an address or port (cached on the table), else None."""
    key = id(m)
    hit = table.cache.get(key)
    if hit is not None and hit[0] is m:
        return hit[1]  # type: ignore[no-any-return]
    fn: Callable[[Packet], Tri] | None = None
    op, right = m.get("op", "=="), m.get("right")
    get = _getter(m.get("left"))
    if get is not None and op in ("==", "!=", "in"):
        try:
            elems = _elements(right, table)
        except _Unknown:
            elems = None
        if elems is None and not (isinstance(right, str) and right.startswith("@")):
            elems = [right]
        if elems is not None:
            cs = _compiled(elems, table)
            negated: bool = op == "!="

            def fn(pkt: Packet) -> Tri:
                v = get(pkt)
                if v is ABSENT:
                    return False
                if v is None:
                    return Unknown("matches an address or port this packet does not know")
                try:
                    hit: bool = cs.contains(v)
                    return hit != negated
                except _Unknown as exc:
                    return Unknown(exc.reason)

    table.cache[key] = (m, fn)
    return fn


def _match_cost(m: dict[str, Any]) -> int:
    left = m.get("left")
    if isinstance(left, dict) and "payload" in left:
        return 0 if left["payload"].get("field") in ("dport", "sport") else 2
    if isinstance(left, dict) and "meta" in left:
        return 1
    return 3


@dataclass
class NftRule:
    ref: RuleRef
    expr: list[Any]
    # the rule's matches, cheapest and most selective first (ports, protocols): they are ANDed,
    # so their order does not change the outcome, only how soon a non-matching rule is left
    matches: list[dict[str, Any]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        found = [
            stmt["match"]
            for stmt in self.expr
            if isinstance(stmt, dict) and len(stmt) == 1 and isinstance(stmt.get("match"), dict)
        ]
        self.matches = sorted(found, key=_match_cost)

    def evaluate(self, pkt: Packet, table: Table) -> Action | None:
        conds: list[Tri] = []
        for body in self.matches:
            fast = _fast_match(body, table)
            conds.append(fast(pkt) if fast is not None else _match(pkt, body, table))
            if conds[-1] is False:
                return None
        for stmt in self.expr:
            if not isinstance(stmt, dict) or len(stmt) != 1:
                return self._finish(conds, Action("unknown", f"statement {_short(stmt)}"))
            ((key, body),) = stmt.items()
            if key == "match":
                continue  # evaluated above
            elif key in NOOP_STATEMENTS:
                continue
            elif key == "xt":
                name = body.get("name", "?") if isinstance(body, dict) else "?"
                if body.get("type") == "match":
                    conds.append(
                        True if name == "comment"
                        else Unknown(f"iptables-nft extension match {name!r} is opaque in nft "
                                     "JSON (install iptables to read it with iptables-save)")
                    )  # fmt: skip
                else:
                    return self._finish(
                        conds, Action("unknown", f"iptables-nft target {name!r} is opaque")
                    )
            elif key in ("limit", "quota"):
                conds.append(Unknown(f"{key} is not modelled"))
            elif key == "reject":
                # "reject with icmp ..." only applies to IPv4 packets, "icmpv6" to IPv6
                rtype = body.get("type") if isinstance(body, dict) else None
                if (rtype == "icmp" and pkt.v6) or (rtype == "icmpv6" and not pkt.v6):
                    return None
                return self._finish(conds, Action("reject", _short(body)))
            elif key in ("snat", "masquerade"):
                return self._finish(conds, Action("accept"))  # rewrites the source only
            elif key == "vmap":
                return self._vmap(pkt, body, table, conds)
            elif (v := _verdict(stmt)) is not None:
                return self._finish(conds, v)
            else:
                return self._finish(conds, Action("unknown", f"statement {key!r} is not modelled"))
        return self._finish(conds, Action("continue"))

    def _finish(self, conds: list[Tri], action: Action) -> Action | None:
        matched = all_of(conds)
        if matched is False:
            return None
        if isinstance(matched, Unknown) and action.kind != "continue":
            return Action("unknown", matched.reason, then=action)
        return action

    def _vmap(
        self, pkt: Packet, body: dict[str, Any], table: Table, conds: list[Tri]
    ) -> Action | None:
        data = body.get("data")
        try:
            v = _value(pkt, body.get("key"))
            if v is ABSENT:
                return None
            if isinstance(data, str) and data.startswith("@"):
                named = table.sets.get(data[1:])
                if named is None:
                    raise _Unknown(f"map {data} is not in the ruleset")
                pairs = named.get("elem", [])
            elif isinstance(data, dict) and "set" in data:
                pairs = data["set"]
            else:
                raise _Unknown("verdict map is not modelled")
            for key, verdict in pairs:
                if _elem_matches(v, key, table):
                    action = _verdict(verdict)
                    if action is None:
                        raise _Unknown(f"verdict {_short(verdict)} is not modelled")
                    return self._finish(conds, action)
            return None
        except _Unknown as exc:
            return self._finish(conds, Action("unknown", exc.reason))


def _short(x: Any) -> str:
    return json.dumps(x, separators=(",", ":"))[:80]


# --- rendering rules as nft-like text for reports ----------------------------------------


def _render_value(x: Any) -> str:
    if isinstance(x, dict):
        if "prefix" in x:
            return f"{x['prefix']['addr']}/{x['prefix']['len']}"
        if "range" in x:
            return "-".join(str(_render_value(a)) for a in x["range"])
        if "set" in x:
            s = x["set"] if isinstance(x["set"], list) else [x["set"]]
            return "{ " + ", ".join(_render_value(e) for e in s) + " }"
        if "concat" in x:
            return " . ".join(_render_value(e) for e in x["concat"])
        if "payload" in x:
            return f"{x['payload'].get('protocol')} {x['payload'].get('field')}"
        if "meta" in x:
            key = x["meta"].get("key")
            return key if key in ("iif", "iifname", "oif", "oifname", "l4proto") else f"meta {key}"
        if "ct" in x:
            return f"ct {x['ct'].get('key')}"
        if "fib" in x:
            return f"fib {' . '.join(x['fib'].get('flags', []))} {x['fib'].get('result')}"
        if "&" in x:
            return f"{_render_value(x['&'][0])} & ({_render_value(x['&'][1])})"
        if "elem" in x:
            return _render_value(x["elem"].get("val"))
        if len(x) == 1:
            ((k, v),) = x.items()
            if v is None:
                return str(k)
            if k in ("jump", "goto"):
                return f"{k} {v.get('target')}"
        return _short(x)
    if isinstance(x, list):
        if len(x) == 2 and not isinstance(x[0], list) and isinstance(x[1], dict):
            return f"{_render_value(x[0])} : {_render_value(x[1])}"
        return ",".join(_render_value(e) for e in x)
    if isinstance(x, str) and x.startswith("@"):
        return x
    return (
        json.dumps(x)
        if isinstance(x, str) and not x.replace(".", "").replace(":", "").isalnum()
        else str(x)
    )


def render(expr: list[Any]) -> str:
    parts = []
    for stmt in expr:
        if not isinstance(stmt, dict) or len(stmt) != 1:
            parts.append(_short(stmt))
            continue
        ((k, body),) = stmt.items()
        if k == "match":
            op = body.get("op", "==")
            op_text = "" if op in ("==", "in") else f"{op} "
            parts.append(
                f"{_render_value(body.get('left'))} {op_text}{_render_value(body.get('right'))}"
            )
        elif k == "counter":
            parts.append("counter")
        elif k == "vmap":
            parts.append(f"{_render_value(body.get('key'))} vmap {_render_value(body.get('data'))}")
        elif k == "xt":
            parts.append(f"xt {body.get('type')} {body.get('name')}")
        elif k == "reject":
            parts.append(
                "reject"
                + (f" with {body.get('type')} {body.get('expr', '')}".rstrip() if body else "")
            )
        elif body is None:
            parts.append(k)
        elif k in ("jump", "goto"):
            parts.append(f"{k} {body.get('target')}")
        else:
            parts.append(f"{k} {_short(body)}")
    return " ".join(parts)


# --- the ruleset -------------------------------------------------------------------------


def _collect_hints(x: Any, table: Table, key: str = "") -> None:
    """Remember every port and address a rule or set mentions (for the access report)."""
    if isinstance(x, dict):
        if "prefix" in x and isinstance(x["prefix"], dict):
            with contextlib.suppress(ValueError, KeyError, TypeError):
                table.networks.add(parse_net(f"{x['prefix']['addr']}/{x['prefix']['len']}"))
            return
        for k, v in x.items():
            _collect_hints(v, table, k)
    elif isinstance(x, list):
        for v in x:
            _collect_hints(v, table, key)
    elif (
        isinstance(x, int)
        and not isinstance(x, bool)
        and 0 < x < 65536
        and key in ("right", "range", "set", "elem", "concat", "val", "")
    ):
        table.ports.add(x)
    elif (
        isinstance(x, str)
        and any(c in x for c in ".:")
        and key in ("right", "range", "set", "elem", "concat", "val", "addr")
    ):
        with contextlib.suppress(ValueError):
            table.networks.add(parse_net(x))


def parse_nft_json(text: str, skip: set[tuple[str, str]] | None = None) -> list[Table]:
    """``nft -j list ruleset`` output -> tables; ``skip``: (family, name) read elsewhere."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FirewallError(f"nft -j list ruleset: output is not JSON ({exc})") from None
    items = data.get("nftables") if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise FirewallError("nft -j list ruleset: no 'nftables' list in the output")
    skip = skip or set()
    tables: dict[tuple[str, str], Table] = {}
    positions: dict[tuple[str, str, str], int] = {}
    try:
        for item in items:
            if not isinstance(item, dict) or len(item) != 1:
                raise FirewallError(f"unexpected element {_short(item)}")
            ((kind, body),) = item.items()
            if kind == "metainfo":
                version = body.get("json_schema_version", 1)
                if version != 1:
                    raise FirewallError(f"JSON schema version {version} is not supported (1 is)")
                continue
            key = (body.get("family"), body.get("table") if kind != "table" else body.get("name"))
            if key in skip:
                continue
            if kind == "table":
                tables[key] = Table("nftables", body["family"], body["name"])
                continue
            table = tables.get(key)
            if table is None:
                raise FirewallError(f"{kind} of unknown table {key[0]} {key[1]}")
            if kind in ("set", "map"):
                table.sets[body["name"]] = body
                _collect_hints(body.get("elem", []), table)
            elif kind == "chain":
                devs = body.get("dev") or body.get("devices") or ()
                table.chains[body["name"]] = Chain(
                    body["name"],
                    hook=body.get("hook"),
                    priority=int(body.get("prio", 0)),
                    policy=body.get("policy", "accept") if body.get("hook") else None,
                    type=body.get("type", "filter"),
                    devices=(devs,) if isinstance(devs, str) else tuple(devs),
                )
            elif kind == "rule":
                chain = table.chains.get(body["chain"])
                if chain is None:
                    raise FirewallError(f"rule in unknown chain {body['chain']}")
                pkey = (key[0], key[1], body["chain"])
                positions[pkey] = positions.get(pkey, 0) + 1
                expr = body.get("expr", [])
                text_ = render(expr)
                if body.get("comment"):
                    text_ += f' comment "{body["comment"]}"'
                ref = RuleRef("nftables", table.family, table.name, chain.name,
                              positions[pkey], text_, body.get("handle"))  # fmt: skip
                chain.rules.append(NftRule(ref, expr))
                _collect_hints(expr, table)
            # flowtables, counters, quotas, ct helpers, ... carry no filtering rules
    except (KeyError, TypeError, ValueError) as exc:
        raise FirewallError(f"nft -j list ruleset: unexpected structure ({exc!r})") from None
    return list(tables.values())


__all__ = ["TCP_FLAGS", "NftRule", "negate", "parse_nft_json", "render"]
