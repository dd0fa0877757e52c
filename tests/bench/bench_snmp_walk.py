"""Benchmark: walking a >= 10k-row SNMP table with fieldtrace's SnmpSession vs ``snmpbulkwalk``.

Run (a few seconds):
    .venv/bin/python tests/bench/bench_snmp_walk.py [--rounds 3] [--max-repetitions 25]

Both clients walk the same table of a real net-snmp snmpd on 127.0.0.1, with the same
max-repetitions, in the same run, alternating, best of N rounds. Two agents:

* ``native``: snmpd's own NET-SNMP-EXTEND-MIB config table (1300 ``extend`` lines x 8
  columns = 10 400 rows). snmpd answers from memory as fast as it can, so the time is the
  client's CPU: the worst case for a Python client.
* ``device``: a ``pass_persist`` table (2000 x 5 = 10 000 rows, tests/bench/
  snmp_passpersist_table.py) answering like a device's agent (0.1 ms of agent work per
  variable); the agent's time counts as it does on real equipment.

fieldtrace runs with each of its walk engines: ``auto`` (the default: net-snmp's
snmpbulkwalk driven as a child process, its output parsed and rendered by fieldtrace) and
``pysnmp`` (pysnmp 7 in-process, the fallback when the snmp package is missing).
Each client runs in its own process: fieldtrace's walk (session open, GETBULKs, rendering
to snmpwalk text; the session open is also shown apart) is timed inside its process
(interpreter start and imports excluded);
snmpbulkwalk is timed as a whole process. Rows must be equal (same OIDs and values, the text
compared line by line). Peak RSS is each process's ru_maxrss.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

EXTEND_TABLE = "1.3.6.1.4.1.8072.1.3.2.2"
PASS_TABLE = "1.3.6.1.4.1.99999.1"


def _measure(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, int, str]:
    """(wall seconds, peak RSS KiB, stdout) of a child; wait4 gives the child's own rusage."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert proc.stdout is not None and proc.stderr is not None
    out = proc.stdout.read()
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{argv[0]} failed ({proc.returncode}): {err.decode()[-800:]}")
    return wall, usage.ru_maxrss, out.decode()


def worker(port: int, community: str, oid: str, reps: int, out_path: str, walker: str) -> None:
    if walker == "pysnmp":
        import pysnmp.hlapi.v3arch.asyncio  # noqa: F401  (imported lazily by the session)

    from collectors.snmp import SnmpCredentials, SnmpSession
    from collectors.snmp_format import render, resolve_oid

    t0 = time.perf_counter()
    cred = SnmpCredentials("2c", community=community)
    session = SnmpSession("bench", "127.0.0.1", port, cred, walker=walker)  # type: ignore[arg-type]
    if session.walk_engine == "pysnmp":
        session._start()  # the walk would open it: timed apart (pysnmp engine ~0.1 s)
    opened = time.perf_counter() - t0
    rows = 0
    with open(out_path, "w") as fh:
        for batch in session.walk(resolve_oid(oid), max_repetitions=reps):
            fh.write("".join(render(o, v, None).line() for o, v in batch))
            rows += len(batch)
    session.close()
    seconds = time.perf_counter() - t0
    print(json.dumps({"rows": rows, "seconds": seconds, "open": opened, "engine": walker}))


def bench(name: str, extra: list[str], oid: str, reps: int, rounds: int, tmp: Path) -> None:
    from tests.fixtures.snmpd import snmpd_server

    with snmpd_server(extra, start_timeout=60) as server:
        ref_argv = [
            shutil.which("snmpbulkwalk") or "snmpbulkwalk",
            *server.v2c_args(),
            "-On",
            f"-Cr{reps}",
            "-t",
            "5",
            server.target,
            oid,
        ]
        env = dict(os.environ, PYTHONPATH=str(REPO))
        engines = ("auto", "pysnmp")
        ref_times: list[float] = []
        ref_rss = 0
        ref_text = ""
        runs: dict[str, dict[str, list[float]]] = {
            e: {"walk": [], "wall": [], "open": [], "rss": [], "rows": []} for e in engines
        }

        def argv(engine: str) -> list[str]:
            out = str(tmp / f"{name}-{engine}.txt")
            head = [sys.executable, __file__, "--worker", str(server.port), server.community]
            return [*head, oid, str(reps), out, engine]

        for _ in range(rounds):
            wall, rss, ref_text = _measure(ref_argv, server.tool_env())
            ref_times.append(wall)
            ref_rss = max(ref_rss, rss)
            for engine in engines:
                wall, rss, out = _measure(argv(engine), env)
                result = json.loads(out)
                run = runs[engine]
                run["walk"].append(result["seconds"])
                run["open"].append(result["open"])
                run["wall"].append(wall)
                run["rss"].append(rss)
                run["rows"].append(result["rows"])
        ref_lines = ref_text.splitlines()
        best_ref = min(ref_times)
        print(f"[{name}] table {oid}, max-repetitions {reps}, best of {rounds}")
        print(
            f"  snmpbulkwalk: {best_ref:.3f} s (process), {len(ref_lines)} rows, "
            f"peak RSS {ref_rss / 1024:.1f} MiB"
        )
        for engine in engines:
            run = runs[engine]
            equal = (tmp / f"{name}-{engine}.txt").read_text().splitlines() == ref_lines
            label = "fieldtrace (net-snmp engine)" if engine == "auto" else "fieldtrace (pysnmp)"
            best = min(run["walk"])
            print(
                f"  {label}: {best:.3f} s (walk incl. {min(run['open']):.3f} s session open; "
                f"{min(run['wall']):.3f} s as a process), {int(run['rows'][-1])} rows, "
                f"text identical: {equal}, peak RSS {max(run['rss']) / 1024:.1f} MiB"
            )
            print(
                f"    ratio to snmpbulkwalk: {best / best_ref:.2f}x (walk), "
                f"{min(run['wall']) / best_ref:.2f}x (process)  [target <= 3x]"
            )
            if not equal or run["rows"][-1] < 10_000:
                raise SystemExit(f"[{name}] {engine}: rows differ or fewer than 10 000")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-repetitions", type=int, default=25)
    ap.add_argument(
        "--agent-delay-ms",
        type=float,
        default=0.1,
        help="pass_persist agent work per variable (device case)",
    )
    ap.add_argument(
        "--worker", nargs=6, metavar=("PORT", "COMMUNITY", "OID", "REPS", "OUT", "WALKER")
    )
    args = ap.parse_args()
    if args.worker:
        port, community, oid, reps, out, walker = args.worker
        worker(int(port), community, oid, int(reps), out, walker)
        return
    import tempfile

    with tempfile.TemporaryDirectory(prefix="ft-bench-snmp-") as tmp:
        extend = [f"extend row{i:05d} /bin/true arg{i}" for i in range(1300)]
        bench("native", extend, EXTEND_TABLE, args.max_repetitions, args.rounds, Path(tmp))
        script = Path(__file__).with_name("snmp_passpersist_table.py")
        passp = [f"pass_persist .{PASS_TABLE} {sys.executable} {script} 2000 {args.agent_delay_ms}"]
        bench("device", passp, PASS_TABLE, args.max_repetitions, args.rounds, Path(tmp))


if __name__ == "__main__":
    main()
