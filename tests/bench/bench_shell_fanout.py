"""Benchmark: ssh.shell fan-out, N simulated SIP gateways x 10 commands vs 1 gateway x 10.

Run:  .venv/bin/python tests/bench/bench_shell_fanout.py [--devices 50] [--commands 10]
      [--latency 0.3] [--parallel 50]

The gateways are device-CLI simulators (``tests/fixtures/cli_sim.py``, paramiko server mode)
in a separate process, each on its own 127.0.0.1 port with its own host key (recorded in
the site known_hosts) and password login. Each simulated command answers after LATENCY
seconds (the time a real gateway takes to answer a CLI command) with a recorded output.
The KB profile has one ssh.shell step per command (sharing the device's shell, the KB's
``terminal length 0`` first), like the shipped sip-gateway type. Both runs go through
``agent.runner.Runner`` with real ``open_ssh`` sessions in this process, in the same run.
Prints both wall times, the ratio (target <= 1.5) and peak RSS of this process and of the
simulator process.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from agent.kb import KnowledgeBase, parse_kb  # noqa: E402
from agent.settings import Settings  # noqa: E402
from tests.bench.timing import time_profile  # noqa: E402

COMMANDS = [
    "show version",
    "show interfaces",
    "show ip interface brief",
    "show sip-ua status",
    "show sip-ua register status",
    "show sip-ua calls",
    "show sip-ua statistics",
    "show logging",
    "show running-config",
    "show call active voice brief",
]
PASSWORD = "bench-Passw0rd"


def serve(n: int, latency: float) -> None:
    """Child process: start n simulators, print them as JSON, stop when stdin closes."""
    import logging

    from tests.fixtures.cli_sim import CliSimulator

    logging.getLogger("paramiko").setLevel(logging.CRITICAL)  # clients hanging up at the end

    sims = [
        CliSimulator(
            f"gw{i}", "isr4321-cube", users={"diag": PASSWORD}, privileged=True, latency=latency
        ).start()
        for i in range(n)
    ]
    print(json.dumps([{"port": s.port, "known": s.known_hosts_line()} for s in sims]), flush=True)
    sys.stdin.read()
    for s in sims:
        s.stop()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    print(json.dumps({"rss_mib": rss}), flush=True)


def kb(commands: int) -> KnowledgeBase:
    steps = "\n".join(
        f"      - {{id: c{i}, collector: ssh.shell, command: '{COMMANDS[i % len(COMMANDS)]}'}}"
        for i in range(commands)
    )
    text = (
        "type: benchgw\ntitle: b\n"
        "ssh: {mode: shell, prompt: '[\\w.-]+[#>] ?$', on_open: ['terminal length 0'],"
        " failure_strings: ['% Invalid input']}\n"
        f"profiles:\n  default:\n    title: d\n    steps:\n{steps}\n"
    )
    return KnowledgeBase({"benchgw": parse_kb(text, "bench")})


def run(
    sims: list[dict[str, object]], home: Path, knowledge: KnowledgeBase, parallel: int
) -> float:
    secret = home / "password"
    settings = Settings.model_validate(
        {
            "collect": {"max_parallel_devices": parallel},
            "devices": [
                {
                    "name": f"gw{i}",
                    "type": "benchgw",
                    "address": "127.0.0.1",
                    "ssh": {
                        "port": s["port"],
                        "username": "diag",
                        "password": {"file": str(secret)},
                    },
                }
                for i, s in enumerate(sims)
            ],
        }
    )
    return time_profile(settings, knowledge, home, parallel)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=50)
    ap.add_argument("--commands", type=int, default=10)
    ap.add_argument("--latency", type=float, default=0.3)
    ap.add_argument("--parallel", type=int, default=50)
    ap.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve, args.latency)
        return
    child = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(args.devices), "--latency", str(args.latency)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    home = Path(tempfile.mkdtemp(prefix="bench-home-"))
    try:
        assert child.stdout is not None and child.stdin is not None
        sims = json.loads(child.stdout.readline())
        (home / "known_hosts").write_text("".join(f"{s['known']}\n" for s in sims))
        (home / "password").write_text(PASSWORD)
        knowledge = kb(args.commands)
        one = run(sims[:1], home, knowledge, args.parallel)
        many = run(sims, home, knowledge, args.parallel)
        child.stdin.close()
        sim_rss = json.loads(child.stdout.readline())["rss_mib"]
        child.wait(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        shutil.rmtree(home, ignore_errors=True)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    print(
        f"ssh.shell fan-out: {args.commands} commands, latency {args.latency:g}s, "
        f"max_parallel_devices {args.parallel}"
    )
    print(f"  1 device:   {one:.2f}s")
    print(f"  {args.devices} devices: {many:.2f}s")
    print(f"  ratio {many / one:.2f}x (target <= 1.5x)")
    print(f"  peak RSS: agent {rss} MiB, simulators {sim_rss} MiB")


if __name__ == "__main__":
    main()
