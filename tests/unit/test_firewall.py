"""The firewall parsers and evaluator on recorded dumps (tests/data/firewall/samples)."""

from __future__ import annotations

import ipaddress
import json
import re
from pathlib import Path

import pytest

from collectors.firewall.access import Requirement, Target, check_access, other_sources
from collectors.firewall.iptables import parse_save
from collectors.firewall.model import FirewallError, Packet, Ruleset, evaluate
from collectors.firewall.nft import parse_nft_json
from collectors.firewall.reader import read_ruleset

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "firewall" / "samples"
VENDOR = "198.51.100.20"


def pkt(src: str, port: int, proto: str = "tcp", **kw: object) -> Packet:
    return Packet(ipaddress.ip_address(src), proto, port, **kw)  # type: ignore[arg-type]


def ipt(text: str, family: str = "ip") -> Ruleset:
    tool = "iptables" if family == "ip" else "ip6tables"
    return Ruleset(parse_save(text, tool, family))


def nft(script_json: list[dict[str, object]]) -> Ruleset:
    return Ruleset(parse_nft_json(json.dumps({"nftables": script_json})))


def test_iptables_save_sample() -> None:
    rs = ipt((SAMPLES / "iptables-save_iptables-nft.txt").read_text())
    (table,) = rs.tables
    assert table.name == "filter"
    inp = table.chains["INPUT"]
    assert (inp.hook, inp.policy, len(inp.rules)) == ("input", "accept", 4)
    assert inp.rules[2].ref.text.startswith("-A INPUT -s 198.51.100.20/32 -p tcp")
    ev = evaluate(rs, pkt(VENDOR, 22))
    assert ev.verdict == "accept" and ev.decision.rule.position == 3
    ev = evaluate(rs, pkt("198.51.100.30", 22))
    assert ev.verdict == "reject" and "tcp-reset" in ev.decision.reason
    assert ev.decision.rule.label() == "filter INPUT #4"
    ev = evaluate(rs, pkt("198.51.100.30", 80))
    assert ev.verdict == "accept" and ev.decision.rule.is_policy
    assert evaluate(rs, pkt("2001:db8::1", 22)).decision.rule.source == "kernel"  # no ip6 rules


def test_nft_native_sample() -> None:
    rs = Ruleset(parse_nft_json((SAMPLES / "nft-json_native.json").read_text()))
    ev = evaluate(rs, pkt(VENDOR, 22))
    assert ev.verdict == "accept"
    assert (
        ev.decision.rule.handle == 4 and 'comment "vendor remote access"' in ev.decision.rule.text
    )
    ev = evaluate(rs, pkt("198.51.100.30", 22))
    assert (ev.verdict, ev.decision.rule.text) == ("drop", "tcp dport 22 drop")
    # inet: the ip saddr rule does not match IPv6, the tcp dport drop does
    assert evaluate(rs, pkt("2001:db8::20", 22)).verdict == "drop"
    assert evaluate(rs, pkt("198.51.100.30", 22, "udp")).verdict == "accept"


def test_nft_view_of_iptables_nft_is_unknown_not_guessed() -> None:
    rs = Ruleset(parse_nft_json((SAMPLES / "nft-json_from_iptables-nft.json").read_text()))
    ev = evaluate(rs, pkt(VENDOR, 22))
    assert ev.verdict == "unknown"
    assert ev.decision.rule.label() == "ip filter INPUT #2 (handle 3)"
    assert "conntrack" in ev.decision.reason and "xt match conntrack" in ev.decision.rule.text
    # the same table is skipped when iptables-save showed it (no double counting)
    assert (
        parse_nft_json(
            (SAMPLES / "nft-json_from_iptables-nft.json").read_text(), skip={("ip", "filter")}
        )
        == []
    )


RULES = """*filter
:INPUT DROP [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:VENDOR - [0:0]
:LOGDROP - [0:0]
[12:720] -A INPUT -i lo -j ACCEPT
-A INPUT -m limit --limit 5/min -j LOG --log-prefix "in: "
-A INPUT -p tcp -m multiport --dports 22,2222 -j VENDOR
-A INPUT -p tcp -m tcp --dport 1000:2000 ! -s 10.0.0.0/8 -j ACCEPT
-A INPUT -i eth+ -p udp -m udp --dport 161 -j ACCEPT
-A INPUT -p tcp -m tcp --dport 8080 -m recent --rcheck -j ACCEPT
-A INPUT -p udp -g LOGDROP
-A VENDOR -s 198.51.100.0/29 -j ACCEPT
-A VENDOR -p tcp -m tcp --dport 2222 -j RETURN
-A VENDOR -j REJECT
-A LOGDROP -j LOG
COMMIT
"""


@pytest.mark.parametrize(
    ("src", "port", "proto", "iif", "verdict", "where"),
    [
        ("198.51.100.7", 22, "tcp", None, "accept", "VENDOR #1"),
        ("198.51.100.9", 22, "tcp", None, "reject", "VENDOR #3"),
        ("198.51.100.9", 2222, "tcp", None, "drop", "INPUT policy"),  # RETURN -> policy
        ("203.0.113.5", 1500, "tcp", None, "accept", "INPUT #4"),
        ("10.1.1.1", 1500, "tcp", None, "drop", "INPUT policy"),  # negated CIDR
        ("10.1.1.1", 2001, "tcp", None, "drop", "INPUT policy"),  # range end
        ("203.0.113.5", 161, "udp", "eth0", "accept", "INPUT #5"),
        ("203.0.113.5", 161, "udp", "wan0", "drop", "INPUT policy"),  # goto LOGDROP -> policy
        ("203.0.113.5", 161, "udp", None, "unknown", "INPUT #5"),  # interface unknown
        ("203.0.113.5", 8080, "tcp", None, "unknown", "INPUT #6"),  # -m recent
        ("203.0.113.5", 9999, "tcp", None, "drop", "INPUT policy"),
    ],
)
def test_iptables_semantics(
    src: str, port: int, proto: str, iif: str | None, verdict: str, where: str
) -> None:
    ev = evaluate(ipt(RULES), pkt(src, port, proto, iif=iif))
    assert ev.verdict == verdict, ev.decision
    assert ev.decision.rule.label().startswith(f"filter {where}")
    if verdict == "unknown":
        assert ev.decision.reason


def test_iptables_lo_interface_never_matches_remote_sources() -> None:
    rs = ipt("*filter\n:INPUT DROP [0:0]\n-A INPUT -i lo -j ACCEPT\nCOMMIT\n")
    assert evaluate(rs, pkt("203.0.113.5", 22)).verdict == "drop"


def test_established_packets_and_tcp_flags() -> None:
    rs = ipt(
        "*filter\n:INPUT DROP [0:0]\n"
        "-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n"
        "-A INPUT -p tcp -m tcp ! --syn -j REJECT\n"
        "-A INPUT -p tcp -m state --state NEW -m tcp --dport 22 -j ACCEPT\nCOMMIT\n"
    )
    assert evaluate(rs, pkt("203.0.113.5", 22)).verdict == "accept"
    assert evaluate(rs, pkt("203.0.113.5", 80, ct_state="established")).verdict == "accept"
    assert evaluate(rs, pkt("203.0.113.5", 80)).verdict == "drop"


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -s 300.1.1.1 -j DROP\nCOMMIT\n", "line 3"),
        ("*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -j DROP\n", "no COMMIT"),
        ("-A INPUT -j DROP\n", "before any '*table'"),
        ("*filter\n:INPUT MAYBE [0:0]\nCOMMIT\n", "unknown chain policy"),
        ('*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -m comment --comment "x -j DROP\nCOMMIT\n',
         "cannot split"),
        ("*filter\n:INPUT ACCEPT [0:0]\n-A NOPE -j DROP\nCOMMIT\n", "never declared"),
        ("*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -p tcp --dport nosuchsvc -j DROP\nCOMMIT\n",
         "unknown port"),
    ],
)  # fmt: skip
def test_iptables_bad_input(text: str, error: str) -> None:
    with pytest.raises(FirewallError, match=re.escape(error)):
        parse_save(text, "iptables", "ip")


def _m(proto: str, fld: str, right: object, op: str = "==") -> dict[str, object]:
    return {
        "match": {"op": op, "left": {"payload": {"protocol": proto, "field": fld}}, "right": right}
    }


def test_nft_sets_vmaps_and_chains() -> None:
    base = {"family": "inet", "table": "t"}
    jump_sub = {"jump": {"target": "sub"}}
    rs = nft(
        [
            {"table": {"family": "inet", "name": "t", "handle": 1}},
            {"set": {**base, "name": "v", "type": "ipv4_addr", "flags": ["interval"],
                     "elem": [{"prefix": {"addr": "198.51.100.0", "len": 29}},
                              {"range": ["203.0.113.10", "203.0.113.20"]}]}},
            {"map": {**base, "name": "m", "type": "inet_service", "map": "verdict",
                     "elem": [[80, {"accept": None}], [{"range": [90, 99]}, jump_sub]]}},
            {"chain": {**base, "name": "sub", "handle": 2}},
            {"chain": {**base, "name": "in", "handle": 3, "type": "filter", "hook": "input",
                       "prio": 0, "policy": "drop"}},
            {"rule": {**base, "chain": "sub", "handle": 4, "expr": [
                _m("ip", "saddr", "@v"), {"return": None}]}},
            {"rule": {**base, "chain": "sub", "handle": 5, "expr": [{"reject": None}]}},
            {"rule": {**base, "chain": "in", "handle": 6, "expr": [
                {"vmap": {"key": _m("tcp", "dport", 0)["match"]["left"], "data": "@m"}}]}},  # type: ignore[index]
            {"rule": {**base, "chain": "in", "handle": 7, "expr": [
                _m("th", "dport", {"range": [90, 99]}), {"counter": None}, {"accept": None}]}},
            {"rule": {**base, "chain": "in", "handle": 8, "expr": [
                _m("tcp", "dport", 22), {"limit": {"rate": 5, "per": "second"}},
                {"accept": None}]}},
        ]
    )  # fmt: skip
    assert evaluate(rs, pkt("203.0.113.99", 80)).verdict == "accept"
    ev = evaluate(rs, pkt("203.0.113.99", 95))
    assert (ev.verdict, ev.decision.rule.handle) == ("reject", 5)
    ev = evaluate(rs, pkt("203.0.113.15", 95))  # in the set's range: return, then th dport
    assert (ev.verdict, ev.decision.rule.handle) == ("accept", 7)
    assert evaluate(rs, pkt("198.51.100.7", 95)).verdict == "accept"
    ev = evaluate(rs, pkt("198.51.100.7", 22))
    assert ev.verdict == "unknown" and "limit" in ev.decision.reason
    assert evaluate(rs, pkt("198.51.100.7", 23)).verdict == "drop"


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("not json", "not JSON"),
        ('{"x": 1}', "no 'nftables' list"),
        ('{"nftables": [{"metainfo": {"json_schema_version": 2}}]}', "schema version 2"),
        ('{"nftables": [{"chain": {"family": "ip", "table": "nope", "name": "c"}}]}',
         "unknown table"),
        ('{"nftables": [{"table": {"family": "ip", "name": "t"}}, '
         '{"rule": {"family": "ip", "table": "t", "chain": "c", "expr": []}}]}', "unknown chain"),
    ],
)  # fmt: skip
def test_nft_bad_input(text: str, error: str) -> None:
    with pytest.raises(FirewallError, match=error):
        parse_nft_json(text)


def test_several_base_chains_every_one_must_accept() -> None:
    def table(name: str, prio: int, verdict: str) -> list[dict[str, object]]:
        return [
            {"table": {"family": "ip", "name": name}},
            {"chain": {"family": "ip", "table": name, "name": "c", "type": "filter",
                       "hook": "input", "prio": prio, "policy": "accept"}},
            {"rule": {"family": "ip", "table": name, "chain": "c", "handle": 2,
                      "expr": [{verdict: None}]}},
        ]  # fmt: skip

    rs = nft(table("late", 10, "drop") + table("early", -10, "accept"))
    ev = evaluate(rs, pkt("203.0.113.5", 22))
    assert ev.verdict == "drop" and ev.decision.rule.table == "late"
    assert [d.rule.table for d in ev.chains] == ["early", "late"]
    # a legacy iptables table drops too: still every chain must accept
    legacy = parse_save("*filter\n:INPUT DROP [0:0]\nCOMMIT\n", "iptables-legacy", "ip")
    rs = nft(table("only", 0, "accept"))
    rs.tables.extend(legacy)
    ev = evaluate(rs, pkt("203.0.113.5", 22))
    assert ev.verdict == "drop" and ev.decision.rule.source == "iptables-legacy"


def test_access_report_names_rule_and_fix() -> None:
    rs = ipt(
        "*filter\n:INPUT DROP [0:0]\n"
        "-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT\n"
        "-A INPUT -s 198.51.100.0/24 -p tcp -m tcp --dport 443 -j ACCEPT\n"
        "-A INPUT -p tcp -m tcp --dport 8080 -j ACCEPT\nCOMMIT\n"
    )
    vendor = [ipaddress.ip_network("198.51.100.7/32")]
    reqs = [Requirement(22, "tcp", "ssh"), Requirement(443, "tcp", "web"), Requirement(161, "udp")]
    report = check_access(rs, reqs, vendor, Target(families=(4,)))
    by_kind = {(f.kind, f.port): f for f in report.findings}
    ssh = by_kind[("open-to-others", 22)]
    assert ssh.rule.text == "-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT"
    assert "add -s 198.51.100.7/32 to it" in ssh.fix
    web = by_kind[("open-to-others", 443)]
    # the vendor's /32 cuts the rule's /24 in two classes: both are found open
    assert "198.51.100.1" in web.sources and "198.51.100.9" in web.sources
    assert web.fix == "narrow its source to the vendor's: -s 198.51.100.7/32"
    snmp = by_kind[("vendor-blocked", 161)]
    assert snmp.rule.is_policy and "-A INPUT -s 198.51.100.7/32 -p udp --dport 161" in snmp.fix
    extra = next(f for f in report.findings if f.kind == "extra-open")
    assert extra.ports == [8080] and "-D INPUT 3" in extra.fix
    assert not report.compliant and [r.status for r in report.requirements] == ["violation"] * 3


def test_access_compliant_ruleset() -> None:
    rs = ipt(
        "*filter\n:INPUT DROP [0:0]\n"
        "-A INPUT -s 198.51.100.7/32 -p tcp -m tcp --dport 22 -j ACCEPT\nCOMMIT\n"
    )
    report = check_access(
        rs, [Requirement(22)], [ipaddress.ip_network("198.51.100.7/32")], Target(families=(4,))
    )
    assert report.compliant, [f.message() for f in report.findings]
    assert report.requirements[0].vendor == {"198.51.100.7": "accept"}


def test_other_sources_cover_edges_and_exclude_vendor() -> None:
    vendor = [ipaddress.ip_network("198.51.100.0/28")]
    rule_net = ipaddress.ip_network("198.51.100.0/24")
    found = other_sources(vendor, 4, [rule_net])
    srcs = {str(a) for a in found}
    # a source in every class: private, inside the rule's /24 after the vendor's /28, and
    # on both sides of the /24
    assert {"198.51.100.17", "10.0.0.1", "192.168.0.1"} <= srcs
    assert any(a < rule_net.network_address for a in found)
    assert any(a > rule_net.broadcast_address for a in found)
    assert not any(a in vendor[0] for a in found)
    assert not any(a.is_loopback or a.is_multicast or int(a) < 2**24 for a in found)
    assert len(found) < 30  # one per class, not one per address


def test_reader_errors_are_clear() -> None:
    def nothing(argv: list[str]) -> tuple[int, bytes, bytes]:
        return 127, b"", b"sh: 1: command not found"

    with pytest.raises(FirewallError, match="neither nft or iptables-save is installed"):
        read_ruleset(nothing, where="gw1")

    def denied(argv: list[str]) -> tuple[int, bytes, bytes]:
        return 1, b"", b"Operation not permitted (you must be root)"

    with pytest.raises(FirewallError, match=r"permission denied.*root"):
        read_ruleset(denied, "nftables", where="gw1")


FORWARD = (
    "*filter\n:INPUT DROP [0:0]\n:FORWARD DROP [0:0]\n"
    "-A FORWARD -i wan0 -o lan+ -s 198.51.100.7/32 -d 10.1.2.3/32 -p tcp -m tcp --dport 22 "
    "-j ACCEPT\nCOMMIT\n"
)


def test_forward_path_needs_the_reply_too() -> None:
    dst = ipaddress.ip_address("10.1.2.3")
    ev = evaluate(ipt(FORWARD), pkt("198.51.100.7", 22, dst=dst, iif="wan0", oif="lan1",
                                    hook="forward"))  # fmt: skip
    # the SYN passes, the SYN-ACK meets the FORWARD policy: a timeout for the client
    assert ev.verdict == "drop" and ev.decision.rule.is_policy
    assert ev.decision.reason.startswith("the reply (")
    report = check_access(
        ipt(FORWARD), [Requirement(22)], [ipaddress.ip_network("198.51.100.7/32")],
        Target(dst=dst, hook="forward", iif="wan0", oif="lan1", families=(4,)),
    )  # fmt: skip
    (blocked,) = [f for f in report.findings if f.kind == "vendor-blocked"]
    assert "--ctstate ESTABLISHED,RELATED -j ACCEPT" in blocked.fix


def test_forward_path_with_interfaces() -> None:
    rs = ipt(FORWARD.replace(":FORWARD DROP [0:0]\n", ":FORWARD DROP [0:0]\n"
             "-A FORWARD -m conntrack --ctstate ESTABLISHED -j ACCEPT\n"))  # fmt: skip
    dst = ipaddress.ip_address("10.1.2.3")
    fwd = {"dst": dst, "hook": "forward"}
    ok = evaluate(rs, pkt("198.51.100.7", 22, iif="wan0", oif="lan1", **fwd))
    assert ok.verdict == "accept" and ok.decision.rule.position == 2
    assert evaluate(rs, pkt("198.51.100.7", 22, iif="wan0", oif="dmz0", **fwd)).verdict == "drop"
    undecided = evaluate(rs, pkt("198.51.100.7", 22, iif="wan0", **fwd))
    assert undecided.verdict == "unknown" and "firewall_out_interface" in undecided.decision.reason
    # the INPUT chain is not on the forward path
    assert evaluate(rs, pkt("198.51.100.7", 22, dst=dst)).verdict == "drop"


def test_undecidable_jump_to_a_logging_chain_does_not_matter() -> None:
    # ufw's pattern: rate-limited logging in a user chain that decides nothing
    rs = ipt(
        "*filter\n:INPUT DROP [0:0]\n:ufw-logging-deny - [0:0]\n:ufw-reject - [0:0]\n"
        "-A INPUT -m limit --limit 3/min --limit-burst 10 -j ufw-logging-deny\n"
        "-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT\n"
        "-A INPUT -m limit --limit 3/min -j ufw-reject\n"
        '-A ufw-logging-deny -j LOG --log-prefix "[UFW BLOCK] "\n'
        "-A ufw-reject -j REJECT\nCOMMIT\n"
    )
    assert evaluate(rs, pkt("203.0.113.5", 22)).verdict == "accept"
    ev = evaluate(rs, pkt("203.0.113.5", 80))  # the second limit jumps to a REJECT
    assert ev.verdict == "unknown" and ev.decision.rule.position == 3
