"""Benchmark: ``fieldtrace serve`` idle cost, health-run fan-out, request-to-bundle latency.

Run (about 3 minutes; root, with snmpd and Redmine installed as tests/run.sh does):
    .venv/bin/python tests/bench/bench_serve.py [--idle 60] [--requests 5] [--poll 5]

1. **Idle service.** 20 devices and 50 scheduled health checks (SNMP reachability, an
   ``snmp.get`` and a walked column, against a real snmpd on 127.0.0.1), interval 5 min.
   After the first round is done, RSS and CPU of the ``serve`` process are sampled over
   ``--idle`` seconds. Reference in the same run: a bare Python process running
   APScheduler with the same 50 interval jobs doing nothing (the floor of any scheduler
   written in Python). Targets: <= 80 MiB, < 1 % CPU.
2. **health run fan-out.** ``fieldtrace health run`` of the 50 checks on 20 devices,
   against the same checks of one device, as whole processes; best of 3.
3. **Request latency.** With a real Redmine (a throwaway instance) and the service
   polling every ``--poll`` seconds, the time from posting a signed request note to the
   bundle attached on that ticket, against the poll interval.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

TYPES = {
    "snmpbox3": """\
type: snmpbox3
title: SNMP device with three checks
profiles:
  default:
    title: system group
    steps:
      - {id: system, collector: snmp.get, oid: [SNMPv2-MIB::sysDescr.0, SNMPv2-MIB::sysUpTime.0]}
health:
  reachable: {reachable: snmp, interval: 5m}
  uptime:
    step: {collector: snmp.get, oid: SNMPv2-MIB::sysUpTime.0}
    expect: {min: 1}
    interval: 5m
  lo-up:
    step: {collector: snmp.walk, oid: IF-MIB::ifOperStatus}
    expect: {every: 1, rows: ["1"]}
    interval: 5m
""",
    "snmpbox2": """\
type: snmpbox2
title: SNMP device with two checks
profiles:
  default:
    title: system group
    steps:
      - {id: system, collector: snmp.get, oid: [SNMPv2-MIB::sysDescr.0]}
health:
  reachable: {reachable: snmp, interval: 5m}
  uptime:
    step: {collector: snmp.get, oid: SNMPv2-MIB::sysUpTime.0}
    expect: {min: 1}
    interval: 5m
""",
}

REFERENCE = """
import time, sys
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger
s = BackgroundScheduler()
for i in range(50):
    s.add_job(lambda: None, IntervalTrigger(seconds=300), id=f"j{i}")
s.start()
print("ready", flush=True)
sys.stdin.read()  # until the benchmark closes it
"""


def site(d: Path, port: int, community: str, devices: int, extra: str = "") -> Path:
    kb = d / "kb"
    kb.mkdir(exist_ok=True)
    for name, text in TYPES.items():
        (kb / f"{name}.yaml").write_text(text)
    (d / "community").write_text(community)
    devs = "".join(
        textwrap.dedent(f"""
        [[devices]]
        name = "dev{i:02d}"
        type = "{'snmpbox3' if i % 2 else 'snmpbox2'}"
        address = "127.0.0.1"
        snmp = {{ port = {port}, version = "2c", community = {{ file = "{d / 'community'}" }} }}
        """)
        for i in range(1, devices + 1)
    )  # fmt: skip
    cfg = d / f"site-{devices}.toml"
    cfg.write_text(
        f'[site]\ncompany = "Bench"\ncontract = "B-1"\n[kb]\npaths = ["{kb}"]\n'
        f'[service]\noutbox_interval = "5m"\n{extra}{devs}'
    )
    return cfg


def proc_stats(pid: int) -> tuple[float, int]:
    """(CPU seconds, RSS KiB) of a live process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    rss = next(int(ln.split()[1]) for ln in Path(f"/proc/{pid}/status").read_text().splitlines()
               if ln.startswith("VmRSS:"))  # fmt: skip
    return cpu, rss


def idle(cfg: Path, home: Path, seconds: float) -> None:
    env = {**os.environ, "FIELDTRACE_HOME": str(home), "PYTHONPATH": str(REPO)}
    svc = subprocess.Popen([sys.executable, "-m", "agent", "-c", str(cfg), "serve"], env=env,
                           stderr=subprocess.PIPE, text=True)  # fmt: skip
    ref = subprocess.Popen([sys.executable, "-c", REFERENCE], stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        _idle(svc, ref, seconds)
    finally:
        for p in (svc, ref):
            p.terminate()
            p.wait(15)


def _idle(svc: subprocess.Popen[str], ref: subprocess.Popen[str], seconds: float) -> None:
    assert svc.stderr is not None and ref.stdout is not None
    import queue
    import threading

    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert svc.stderr is not None
        for line in svc.stderr:  # keep draining: a full pipe would block the service
            lines.put(line)

    threading.Thread(target=read, daemon=True).start()
    seen: set[str] = set()
    t0 = time.monotonic()
    while len(seen) < 50:
        try:
            line = lines.get(timeout=max(0.1, 180 - (time.monotonic() - t0)))
        except queue.Empty:
            raise SystemExit(f"only {len(seen)} of 50 checks ran in 180 s") from None
        m = re.search(r"INFO: health (\S+): (ok|FAIL|undecided): (.*)", line)
        if m:
            seen.add(m.group(1))
            if m.group(2) != "ok":
                print(f"  {m.group(1)}: {m.group(2)}: {m.group(3)}")
    first_round = time.monotonic() - t0
    ref.stdout.readline()
    time.sleep(2)
    a_cpu, _ = proc_stats(svc.pid)
    r_cpu, _ = proc_stats(ref.pid)
    peak = rpeak = 0
    t1 = time.monotonic()
    while time.monotonic() - t1 < seconds:
        peak = max(peak, proc_stats(svc.pid)[1])
        rpeak = max(rpeak, proc_stats(ref.pid)[1])
        time.sleep(1)
    span = time.monotonic() - t1
    b_cpu, rss = proc_stats(svc.pid)
    s_cpu, rrss = proc_stats(ref.pid)
    cpu = 100 * (b_cpu - a_cpu) / span
    rcpu = 100 * (s_cpu - r_cpu) / span
    print(f"idle serve, 20 devices / 50 checks (first round {first_round:.1f}s), {span:.0f}s:")
    print(f"  fieldtrace serve: RSS {rss / 1024:.1f} MiB (peak {peak / 1024:.1f}), CPU {cpu:.2f} %")
    print(f"  APScheduler alone: RSS {rrss / 1024:.1f} MiB (peak {rpeak / 1024:.1f}), "
          f"CPU {rcpu:.2f} %")  # fmt: skip
    print(f"  ratio RSS {rss / rrss:.2f}x; targets <= 80 MiB and < 1 % CPU: "
          f"{'met' if rss / 1024 <= 80 and cpu < 1 else 'NOT met'}")  # fmt: skip


def run_health(cfg: Path, home: Path) -> tuple[float, int, int]:
    env = {**os.environ, "FIELDTRACE_HOME": str(home), "PYTHONPATH": str(REPO)}
    t0 = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-f", "%M", sys.executable, "-m", "agent", "-c",
                           str(cfg), "health", "run", "--json"], env=env, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    wall = time.perf_counter() - t0
    rows = json.loads(proc.stdout)
    bad = [r for r in rows if r["ok"] is not True]
    if bad:
        raise SystemExit(f"health run: {bad[:3]}")
    return wall, int(proc.stderr.strip().splitlines()[-1]), len(rows)


def fanout(many: Path, one: Path, home: Path) -> None:
    runs_many = [run_health(many, home) for _ in range(3)]
    runs_one = [run_health(one, home) for _ in range(3)]
    m, o = min(r[0] for r in runs_many), min(r[0] for r in runs_one)
    print("health run (whole process, best of 3):")
    print(f"  1 device, {runs_one[0][2]} checks: {o:.2f}s; 20 devices, {runs_many[0][2]} checks:"
          f" {m:.2f}s; ratio {m / o:.2f}x"
          f"; peak RSS {max(r[1] for r in runs_many) / 1024:.1f} MiB")  # fmt: skip


def latency(rounds: int, poll: float) -> None:
    from tests.fixtures.redmine import redmine_instance

    with tempfile.TemporaryDirectory() as tmp, redmine_instance(Path(tmp) / "cache") as rm:
        d = Path(tmp)
        key = d / "eng"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "e@v", "-f",
                        str(key)], check=True)  # fmt: skip
        (d / "api").write_text(rm.api_key)
        kb = d / "kb"
        kb.mkdir()
        (kb / "box.yaml").write_text("type: box\ntitle: box\nprofiles:\n  default:\n    title: t\n"
                                     "    steps:\n      - {id: u, collector: local.command, "
                                     'command: "uname -a"}\n')  # fmt: skip
        cfg = d / "site.toml"
        cfg.write_text(textwrap.dedent(f"""\
            [site]
            company = "Bench"
            contract = "B-1"
            [vendor]
            request_keys = ["{key.with_suffix('.pub').read_text().strip()}"]
            [helpdesk]
            backend = "redmine"
            url = "{rm.url}"
            api_key = {{ file = "{d / 'api'}" }}
            project = "diag"
            [kb]
            paths = ["{kb}"]
            [requests]
            poll_interval = "{poll}s"
            policy = {{ "*" = "auto" }}
            [[devices]]
            name = "local"
            type = "box"
            address = "localhost"
            """))  # fmt: skip
        env = {**os.environ, "FIELDTRACE_HOME": str(d / "home"), "PYTHONPATH": str(REPO)}
        svc = subprocess.Popen([sys.executable, "-m", "agent", "-c", str(cfg), "serve"],
                               env=env, stderr=subprocess.DEVNULL)  # fmt: skip
        times = []
        try:
            time.sleep(poll + 2)
            for _ in range(rounds):
                t = rm.create_issue("bench request")
                argv = [sys.executable, "-m", "agent", "request", "create", "--key", str(key),
                        "--ticket", str(t), "--device", "local", "--profile", "default",
                        "--site", "bench"]  # fmt: skip
                block = subprocess.run(argv, env=env, capture_output=True, text=True,
                                       check=True).stdout  # fmt: skip
                t0 = time.monotonic()
                r = rm.api("PUT", f"/issues/{t}.json", json={"issue": {"notes": block}})
                assert r.status_code in (200, 204)
                while not rm.issue(t).get("attachments"):
                    if time.monotonic() - t0 > 120:
                        raise SystemExit("no bundle after 120 s")
                    time.sleep(0.1)
                times.append(time.monotonic() - t0)
        finally:
            svc.terminate()
            svc.wait(15)
        print(f"request note -> bundle attached, poll interval {poll:g}s, {rounds} requests:")
        print("  " + ", ".join(f"{x:.1f}s" for x in times) + f"; median "
              f"{sorted(times)[len(times) // 2]:.1f}s = "
              f"{sorted(times)[len(times) // 2] / poll:.2f}x the poll interval")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--idle", type=float, default=60)
    ap.add_argument("--requests", type=int, default=5)
    ap.add_argument("--poll", type=float, default=5)
    args = ap.parse_args()
    from tests.fixtures.snmpd import snmpd_server

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=REPO).stdout.strip()  # fmt: skip
    print(f"commit {commit}, {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, "
          f"load {os.getloadavg()[0]:.2f}")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp, snmpd_server() as snmpd:
        d = Path(tmp)
        many = site(d, snmpd.port, snmpd.community, 20)
        one = site(d, snmpd.port, snmpd.community, 1)
        home = d / "home"
        idle(many, home, args.idle)
        fanout(many, one, home)
    latency(args.requests, args.poll)
    print(f"bench process peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.1f}"
          " MiB")  # fmt: skip


if __name__ == "__main__":
    main()
