"""Benchmark: 50 devices x 10 ssh.command steps through the real runner vs 1 device x 10.

Run:  .venv/bin/python tests/bench/bench_ssh_fanout.py [--devices 50] [--steps 10]
      [--latency 0.5] [--parallel 50]

Real OpenSSH sshd instances (started like the test fixture; sshd listens on at most 16
ports, so 4 instances for 50 devices) on 127.0.0.1; each port is a device in the inventory
(its own known_hosts entry, its own SSH connection). Each
step runs ``sleep LATENCY; uname -a; cat /proc/loadavg`` on the device: the sleep stands
for the time a real device takes to answer a CLI command (0.3-2 s on network gear), so the
figure shows what fan-out costs us, not how fast a loopback `uname` is. Both runs go
through ``agent.runner.Runner`` (sessions opened by ``agent.ssh_session.open_ssh``, steps
with deadlines, artifacts in a staging dir), in the same process and run.
Prints both wall times, the ratio (target <= 1.5) and the peak RSS of this process.
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from agent.kb import KnowledgeBase, parse_kb  # noqa: E402
from agent.settings import Settings  # noqa: E402
from tests.bench.timing import time_profile  # noqa: E402
from tests.fixtures.sshd import Sshd, running_sshd, throwaway_user  # noqa: E402


def kb(steps: int, latency: float) -> KnowledgeBase:
    cmd = f"sleep {latency}"  # one command: the read-only allow-list refuses ";" chains
    body = "\n".join(
        f"      - {{id: s{i}, collector: ssh.command, command: '{cmd}'}}" for i in range(steps)
    )
    t = parse_kb(
        f"type: benchgw\ntitle: b\nprofiles:\n  default:\n    title: d\n    steps:\n{body}\n",
        "bench",
    )
    return KnowledgeBase({"benchgw": t})


def run(
    targets: list[tuple[Sshd, int]], home: Path, knowledge: KnowledgeBase, parallel: int
) -> float:
    settings = Settings.model_validate(
        {
            "collect": {"max_parallel_devices": parallel},
            "devices": [
                {
                    "name": f"gw{i}",
                    "type": "benchgw",
                    "address": "127.0.0.1",
                    "ssh": {"port": p, "username": srv.user, "key": {"file": str(srv.client_key)}},
                }
                for i, (srv, p) in enumerate(targets)
            ],
        }
    )
    return time_profile(settings, knowledge, home, parallel)


EXTRA = "MaxStartups 400\nMaxSessions 20"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", type=int, default=50)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--latency", type=float, default=0.5)
    ap.add_argument("--parallel", type=int, default=50)
    args = ap.parse_args()
    knowledge = kb(args.steps, args.latency)
    home = Path(tempfile.mkdtemp(prefix="ft-bench-home-"))
    with contextlib.ExitStack() as stack:
        # a fresh unprivileged login (root's shell rc files on this machine cost 0.14 s of CPU
        # per command, which would measure them, not us)
        user = stack.enter_context(throwaway_user("ftb"))
        servers = []
        left = args.devices
        while left > 0:
            n = min(16, left)
            servers.append(
                stack.enter_context(running_sshd(user=user, ports=n, extra_config=EXTRA))
            )
            left -= n
        stack.callback(shutil.rmtree, home, True)
        targets = [(s, p) for s in servers for p in s.ports]
        (home / "known_hosts").write_text("".join(s.known_hosts_line(p) + "\n" for s, p in targets))
        one = run(targets[:1], home, knowledge, args.parallel)
        many = run(targets, home, knowledge, args.parallel)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"steps: {args.steps} x ssh.command (device latency {args.latency}s), "
        f"max_parallel_devices={args.parallel}"
    )
    print(f"1 device:   {one:.2f} s")
    print(f"{args.devices} devices: {many:.2f} s")
    print(f"ratio {args.devices} devices / 1 device: {many / one:.2f}x (target <= 1.5x)")
    print(f"peak RSS: {rss:.0f} MiB")


if __name__ == "__main__":
    main()
