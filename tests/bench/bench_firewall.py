"""Benchmark: reading and evaluating a big ruleset, against the tools and the kernel.

    .venv/bin/python tests/bench/bench_firewall.py [--rules 2000] [--probes 400]

In a throwaway network namespace (as root; deleted at the end) it loads ``--rules`` iptables
rules (with user chains and multiport) and as many native nft rules (with a named set), then
measures in the same run:
- dump: ``iptables-save`` + ``nft -j list ruleset`` alone (the reference) vs fieldtrace's
  read_ruleset (the same dumps plus parsing): the ratio is the parsing overhead;
- decide: evaluator decisions per second vs the kernel deciding real connection attempts
  (``--probes`` TCP connects from a second namespace, in parallel threads);
- a whole check_access (2 requirements, every other port) on that ruleset;
- peak RSS of this process (the tools' peak RSS separately).
"""

from __future__ import annotations

import argparse
import ipaddress
import random
import resource
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from collectors.firewall import Packet, evaluate, read_ruleset
from collectors.firewall.access import Requirement, Target, check_access
from tests.integration.firewall.netns import NetnsBed


def iptables_rules(n: int) -> str:
    lines = ["*filter", ":INPUT ACCEPT [0:0]", ":FORWARD ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]"]
    chains = [f"C{i}" for i in range(20)]
    lines += [f":{c} - [0:0]" for c in chains]
    for i in range(n):
        src = f"10.{i // 250 % 250}.{i % 250}.0/24"
        if i % 10 == 0:
            lines.append(f"-A INPUT -s {src} -p tcp -m multiport --dports 1000,2000:2100 -j "
                         f"{chains[i % 20]}")  # fmt: skip
        else:
            lines.append(
                f"-A {chains[i % 20]} -s {src} -p tcp -m tcp --dport {i % 60000 + 1} -j ACCEPT"
            )
    lines += ["-A INPUT -s 198.51.100.7/32 -p tcp -m tcp --dport 22 -j ACCEPT",
              "-A INPUT -p tcp -m tcp --dport 22 -j DROP", "COMMIT", ""]  # fmt: skip
    return "\n".join(lines)


def nft_rules(n: int) -> str:
    elems = ", ".join(f"172.{16 + i // 250 % 16}.{i % 250}.1" for i in range(min(n, 3000)))
    body = "\n".join(
        f"    ip saddr 192.168.{i // 250 % 250}.{i % 250} tcp dport {{ {i % 600 + 1}, 8080 }} "
        "accept"
        for i in range(n)
    )
    return (
        "table inet bench {\n"
        f"  set many {{ type ipv4_addr; elements = {{ {elems} }} }}\n"
        "  chain input {\n    type filter hook input priority 10; policy accept;\n"
        f"    ip saddr @many tcp dport 443 drop\n{body}\n  }}\n}}\n"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rules", type=int, default=2000)
    ap.add_argument("--probes", type=int, default=400)
    ap.add_argument("--budget", type=float, default=20.0)
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the namespaces are removed
    bed = NetnsBed()
    try:
        bed.up()
        bed.listen()
        bed.load("iptables", iptables_rules(args.rules))
        bed.load("nft", nft_rules(args.rules))
        run = bed.runner()
        t0 = time.perf_counter()
        for argv in (["iptables-save"], ["nft", "-j", "list", "ruleset"]):
            rc, _, err = run(argv)
            assert rc == 0, err
        t_tools = time.perf_counter() - t0
        t0 = time.perf_counter()
        ruleset = read_ruleset(run)
        t_read = time.perf_counter() - t0
        n_rules = sum(len(c.rules) for t in ruleset.tables for c in t.chains.values())
        rnd = random.Random(1)
        sources = ["198.51.100.7", "198.51.100.8", "198.51.100.100"]
        attempts = [(rnd.choice(sources), rnd.choice([22, 80, 443, 2222, 3000, 8080]))
                    for _ in range(args.probes)]  # fmt: skip
        dst = ipaddress.ip_address("198.51.100.1")
        t0 = time.perf_counter()
        predicted = [
            evaluate(
                ruleset, Packet(ipaddress.ip_address(s), "tcp", p, dst=dst, iif="vnd0")
            ).verdict
            for s, p in attempts
        ]
        t_eval = time.perf_counter() - t0
        t0 = time.perf_counter()
        kernel = bed.probe("vendor", [(s, "198.51.100.1", "tcp", p) for s, p in attempts], 1.5)
        t_kernel = time.perf_counter() - t0
        agree = sum(a == b for a, b in zip(predicted, kernel, strict=True))
        t0 = time.perf_counter()
        report = check_access(
            ruleset, [Requirement(22), Requirement(161, "udp")],
            [ipaddress.ip_network("198.51.100.7/32")], Target(dst=dst, families=(4,)),
            budget=args.budget,
        )  # fmt: skip
        t_check = time.perf_counter() - t0
    finally:
        bed.close()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rss_tools = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"ruleset: {n_rules} rules in {len(ruleset.tables)} tables")
    print(f"dump   reference (iptables-save + nft -j): {t_tools:.3f}s; fieldtrace read+parse: "
          f"{t_read:.3f}s; ratio {t_read / t_tools:.2f}x")  # fmt: skip
    print(f"decide evaluator: {len(attempts) / t_eval:,.0f} decisions/s; kernel (real connects, "
          f"parallel): {len(attempts) / t_kernel:,.0f}/s; ratio {t_kernel / t_eval:.1f}x faster; "
          f"agreement {agree}/{len(attempts)}")  # fmt: skip
    unchecked = sum(len(f.ports) for f in report.unknown if f.rule.source == "fieldtrace")
    print(f"check_access: {t_check:.2f}s (budget {args.budget:g}s): {report.checked_ports} ports "
          f"x {sum(report.checked_sources.values())} sources evaluated, {unchecked} ports left "
          f"unchecked, {len(report.findings)} findings")  # fmt: skip
    print(f"peak RSS: fieldtrace process {rss:.0f} MiB; largest child (tools) {rss_tools:.0f} MiB")


if __name__ == "__main__":
    main()
