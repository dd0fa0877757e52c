"""The evaluator against the kernel: every (source, port) of every corpus ruleset.

Each ruleset in tests/data/firewall/corpus is loaded into a fresh "device" namespace with the
real tools (nft -f, iptables-restore, ip6tables-restore, iptables-legacy-restore); fieldtrace
reads it back as it would on a host and predicts, for every source address of the "vendor"
and "other" namespaces and every TCP/UDP port, accept / drop / reject. The same attempts are
made for real from those namespaces (connect / UDP echo; refused = reject, no answer = drop).
The bar is 100% agreement and no "unknown" on the corpus.
"""

from __future__ import annotations

import ipaddress
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from collectors.firewall import Packet, evaluate, read_ruleset
from tests.integration.firewall.netns import (
    LINK,
    SOURCES,
    TCP_PORTS,
    UDP_PORTS,
    NetnsBed,
    dst_for,
)

CORPUS = Path(__file__).resolve().parents[2] / "data" / "firewall" / "corpus"
CASES = sorted(p for p in CORPUS.iterdir() if p.suffix in (".rules", ".nft"))
FORWARD_CASES = sorted(p for p in (CORPUS / "forward").iterdir() if p.suffix in (".rules", ".nft"))
BEHIND = ["203.0.113.9", "2001:db8:2::9"]  # the device behind the gateway (the "other" ns)
PROBE_TIMEOUT = 1.5
SECTION = re.compile(r"^#@\s*(nft|iptables|ip6tables|iptables-legacy|ip6tables-legacy)\s*$")


def sections(path: Path) -> list[tuple[str, str]]:
    """A .nft file is one nft script; a .rules file has '#@ tool' sections (default iptables)."""
    text = path.read_text()
    if path.suffix == ".nft":
        return [("nft", text)]
    out: list[tuple[str, list[str]]] = [("iptables", [])]
    for line in text.splitlines():
        m = SECTION.match(line)
        if m:
            out.append((m.group(1), []))
        else:
            out[-1][1].append(line)
    return [(tool, "\n".join(lines) + "\n") for tool, lines in out if "".join(lines).strip()]


def run_case(path: Path) -> list[str]:
    """Mismatches between the evaluator and the kernel for one ruleset (empty: agreement)."""
    bed = NetnsBed()
    try:
        bed.up()
        bed.listen()
        for tool, text in sections(path):
            bed.load(tool, text)
        ruleset = read_ruleset(bed.runner(), where=f"namespace {bed.ns['device']}")
        attempts = {
            role: [(src, dst_for(src, role), proto, port) for src in srcs
                   for proto, ports in (("tcp", TCP_PORTS), ("udp", UDP_PORTS)) for port in ports]
            for role, srcs in SOURCES.items()
        }  # fmt: skip
        with ThreadPoolExecutor(2) as pool:
            futures = {r: pool.submit(bed.probe, r, a, PROBE_TIMEOUT) for r, a in attempts.items()}
            kernel = {r: f.result() for r, f in futures.items()}
        problems = []
        verdicts = set()
        for role, tries in attempts.items():
            for (src, dst, proto, port), seen in zip(tries, kernel[role], strict=True):
                pkt = Packet(
                    ipaddress.ip_address(src), proto, port,  # type: ignore[arg-type]
                    dst=ipaddress.ip_address(dst), iif=LINK[role],
                )  # fmt: skip
                ev = evaluate(ruleset, pkt)
                verdicts.add(seen)
                if ev.verdict != seen:
                    problems.append(
                        f"{path.name}: {proto}/{port} from {src}: kernel {seen}, evaluator "
                        f"{ev.verdict} by {ev.decision.rule.describe()} {ev.decision.reason}"
                    )
        if len(verdicts) < 2:
            problems.append(f"{path.name}: every attempt gave {verdicts}: the case tests nothing")
        return problems
    finally:
        bed.close()


def run_forward_case(path: Path) -> list[str]:
    """The device namespace as a gateway: vendor sources -> the host behind it (FORWARD)."""
    bed = NetnsBed()
    try:
        bed.up()
        bed.route()
        bed.listen("other", BEHIND)
        for tool, text in sections(path):
            bed.load(tool, text)
        ruleset = read_ruleset(bed.runner(), where=f"namespace {bed.ns['device']}")
        tries = [
            (src, next(b for b in BEHIND if (":" in b) == (":" in src)), proto, port)
            for src in SOURCES["vendor"]
            for proto, ports in (("tcp", TCP_PORTS), ("udp", UDP_PORTS))
            for port in ports
        ]
        kernel = bed.probe("vendor", tries, PROBE_TIMEOUT)
        problems, seen_verdicts = [], set()
        for (src, dst, proto, port), seen in zip(tries, kernel, strict=True):
            pkt = Packet(
                ipaddress.ip_address(src), proto, port,  # type: ignore[arg-type]
                dst=ipaddress.ip_address(dst), iif="vnd0", oif="oth0", hook="forward",
            )  # fmt: skip
            ev = evaluate(ruleset, pkt)
            seen_verdicts.add(seen)
            if ev.verdict != seen:
                problems.append(
                    f"forward/{path.name}: {proto}/{port} {src} -> {dst}: kernel {seen}, "
                    f"evaluator {ev.verdict} by {ev.decision.rule.describe()} {ev.decision.reason}"
                )
        if len(seen_verdicts) < 2:
            problems.append(f"forward/{path.name}: every attempt gave {seen_verdicts}")
        return problems
    finally:
        bed.close()


@pytest.mark.integration
def test_forward_path_agrees_with_the_kernel() -> None:
    assert len(FORWARD_CASES) >= 4
    with ThreadPoolExecutor(4) as pool:
        problems = [p for result in pool.map(run_forward_case, FORWARD_CASES) for p in result]
    assert not problems, "\n".join(problems)


@pytest.mark.integration
def test_corpus_is_big_enough() -> None:
    assert len(CASES) >= 20, [c.name for c in CASES]


@pytest.mark.integration
def test_evaluator_agrees_with_the_kernel() -> None:
    with ThreadPoolExecutor(4) as pool:
        problems = [p for result in pool.map(run_case, CASES) for p in result]
    assert not problems, "\n".join(problems)
