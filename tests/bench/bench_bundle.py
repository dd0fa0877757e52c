"""Benchmark: bundling 1 GiB of mixed artifacts vs `tar | zstd | age` on the same input.

Run:  .venv/bin/python tests/bench/bench_bundle.py [--size-mib 1024] [--rounds 3]

Input: half compressible text (syslog-like lines, some with secrets), half random
(pcap-like) data, in files of 64-128 MiB, laid out like a staging directory. Measured in
the same run, page cache warm for both:
  reference  tar -cf - | zstd -3 -T0 | age -r R > out   (three processes, stock CLIs)
  fieldtrace scrub + sha256 + manifest + tar -> zstd -> age (pyrage) -> atomic rename,
             in a child process so its peak RSS is its own. The child first writes the
             input through artifact sinks, as collectors do (not timed: that is collection),
             so binary artifacts arrive already hashed, as they do in a job. Fresh input
             every round; the reference then runs on the same (scrubbed) files.
Prints MiB/s of each, the ratio (fieldtrace / reference; target >= 0.8) and peak RSS
(target <= 64 MiB).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collectors.base import Artifact

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def make_input(root: Path, size_mib: int) -> tuple[list[Artifact], float]:
    """Write the input the way collectors do, through artifact sinks that hash and scrub as
    they go; returns the artifacts and the seconds spent writing (and scrubbing) the text."""
    from agent.scrub import Scrubber
    from collectors.base import ArtifactSink

    rnd = random.Random(7)
    lines = []
    for i in range(40000):
        lines.append(
            f"2026-11-25T10:{i % 60:02d}:{i % 59:02d}.{i % 1000:03d} gw1 sipd[{1000 + i % 50}]: "
            f"call {i} from sip:user{i % 977}@10.0.{i % 255}.{i % 200} to sip:{i % 313}@pbx "
            f"status={rnd.choice(['200', '486', '503', '180'])} dur={i % 300}s\n"
        )
        if i % 5000 == 0:
            lines.append(f"config reload: password = secret{i} community public{i}\n")
    text = "".join(lines).encode()
    artifacts = []
    text_s = 0.0
    scrubber = Scrubber()
    half = size_mib // 2
    for kind, total in (("text", half), ("pcap", size_mib - half)):
        n = 0
        left = total
        while left > 0:
            mib = min(128, left)
            sink = ArtifactSink(root, f"gw1/{kind}{n}", scrubber=scrubber)
            name = "trace.pcap" if kind == "pcap" else "messages.log"
            t0 = time.perf_counter()
            with sink.open(name, max_bytes=mib << 20) as w:
                want = mib << 20
                pos = 0
                while want > 0:
                    size = min(want, 1 << 20)
                    if kind == "pcap":
                        chunk = os.urandom(size)
                    else:
                        if pos + size > len(text):
                            pos = 0
                        chunk = text[pos : pos + size]
                        pos += size
                    w.write(chunk)
                    want -= len(chunk)
            if kind == "text":
                text_s += time.perf_counter() - t0
            artifacts.extend(sink.artifacts)
            left -= mib
            n += 1
    return artifacts, text_s


def generate(root: Path, size_mib: int) -> dict[str, Any]:
    """First child: write the input through scrubbing sinks, as collection does (untimed)."""
    arts, text_s = make_input(root, size_mib)
    return {"artifacts": [dataclasses.asdict(a) for a in arts], "text_write_s": text_s}


def run_fieldtrace(root: Path, out: Path, home: Path, gen: dict[str, Any]) -> dict[str, float]:
    """Second child: what a job does after collection, in a process of its own (its RSS)."""
    from agent.bundle import write_bundle
    from agent.job import _Silent, scrub_and_hash
    from agent.keys import load_identity, load_signing_key
    from agent.runner import StepResult
    from agent.scrub import Scrubber
    from collectors.base import Artifact

    arts = [Artifact(**a) for a in gen["artifacts"]]
    key = load_signing_key(home)
    ident = load_identity(home)
    t0 = time.perf_counter()
    # what a job does after collection: the job's own scrub_and_hash (it scrubs and hashes
    # whatever the sinks did not), then pack
    results = [StepResult("gw1", a.path.split("/")[1], "bench", {}, artifacts=[a]) for a in arts]
    scrub_and_hash(Scrubber(), root, results, _Silent())
    t1 = time.perf_counter()
    steps = [
        {
            "device": a.path.split("/")[0],
            "id": a.path.split("/")[1],
            "artifacts": [
                {"path": a.path, "size": a.size, "sha256": a.sha256, "scrubbed": a.scrubbed}
            ],
        }
        for a in arts
    ]
    manifest = {"format": "fieldtrace.bundle/1", "steps": steps}
    write_bundle(out, "bench", manifest, root, key, [ident.to_public()], time.time())
    t2 = time.perf_counter()
    return {
        "scrub_hash_s": t1 - t0,
        "pack_s": t2 - t1,
        "total_s": t2 - t0,
        "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "workers_rss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
        "scrubbed": sum(sum(a.scrubbed.values()) for a in arts),
        "text_write_s": gen["text_write_s"],
    }


def run_reference(root: Path, out: Path, recipient: str) -> tuple[float, float]:
    t0 = time.perf_counter()
    cmd = f"tar -C {root} -cf - . | zstd -q -3 -T0 | age -r {recipient} > {out}"
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    subprocess.run(["bash", "-c", cmd], check=True)
    elapsed = time.perf_counter() - t0
    rss = max(before, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024
    return elapsed, rss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workdir", default=None, help="where to put the input (default: a temp dir)")
    ap.add_argument("--gen", metavar="ROOT", help=argparse.SUPPRESS)
    ap.add_argument(
        "--pack", nargs=4, metavar=("ROOT", "OUT", "HOME", "GEN"), help=argparse.SUPPRESS
    )
    args = ap.parse_args()
    if args.gen:
        print(json.dumps(generate(Path(args.gen), args.size_mib)))
        return
    if args.pack:
        root, out, home, gen = args.pack
        print(json.dumps(run_fieldtrace(Path(root), Path(out), Path(home), json.loads(gen))))
        return
    for tool in ("tar", "zstd", "age", "age-keygen"):
        if not shutil.which(tool):
            sys.exit(f"{tool} not found: install it (tests/run.sh does)")
    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="ftbench-") as tmp:
        base = Path(tmp)
        root, home = base / "staging", base / "home"
        home.mkdir()
        env = dict(os.environ, PYTHONPATH=str(REPO), FIELDTRACE_HOME=str(home))
        subprocess.run(
            [sys.executable, "-c", "from agent.keys import load_identity as l; l()"],
            env=env,
            check=True,
        )
        recipient = subprocess.run(
            ["age-keygen", "-y", str(home / "identity.txt")],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        mib = args.size_mib
        rows = []
        for r in range(args.rounds):
            ref_out, ft_out = base / "ref.age", base / "ft.age"
            shutil.rmtree(root, ignore_errors=True)
            gen = subprocess.run(
                [sys.executable, __file__, "--size-mib", str(mib), "--gen", str(root)],
                env=env,
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            os.sync()  # the input is cached but no longer dirty, for both sides alike
            child = subprocess.run(
                [sys.executable, __file__, "--pack", str(root), str(ft_out), str(home), gen],
                env=env,
                check=True,
                capture_output=True,
                text=True,
            )
            ft = json.loads(child.stdout)
            ft_size = ft_out.stat().st_size
            ft_out.unlink()
            ref_s, ref_rss = run_reference(root, ref_out, recipient)
            ref_size = ref_out.stat().st_size
            ref_out.unlink()
            rows.append((ref_s, ft))
            print(
                f"round {r + 1}: reference {mib / ref_s:7.0f} MiB/s ({ref_s:.2f}s, peak RSS of "
                f"one process {ref_rss:.0f} MiB) | fieldtrace {mib / ft['total_s']:7.0f} MiB/s "
                f"({ft['total_s']:.2f}s: scrub+hash {ft['scrub_hash_s']:.2f}s, pack "
                f"{ft['pack_s']:.2f}s; peak RSS {ft['rss_mib']:.1f} MiB, scrub workers "
                f"{ft['workers_rss_mib']:.0f} MiB; {ft['scrubbed']} secrets scrubbed; "
                f"{ft_size / 2**20:.1f} MiB out (reference {ref_size / 2**20:.1f} MiB); "
                f"writing {mib // 2} MiB of text through the "
                f"scrubbing sinks during collection took {ft['text_write_s']:.2f}s)"
                f" | ratio {ref_s / ft['total_s']:.2f}x (pack only {ref_s / ft['pack_s']:.2f}x)",
                flush=True,
            )
        best_ref = min(r for r, _ in rows)
        best_ft = min(f["total_s"] for _, f in rows)
        best_pack = min(f["pack_s"] for _, f in rows)
        peak = max(f["rss_mib"] for _, f in rows)
        median = statistics.median(r / f["total_s"] for r, f in rows)
        print(
            f"\nbest of {args.rounds}: reference {mib / best_ref:.0f} MiB/s, fieldtrace "
            f"{mib / best_ft:.0f} MiB/s -> ratio {best_ref / best_ft:.2f}x (target >= 0.8); "
            f"pack stage alone {best_ref / best_pack:.2f}x; fieldtrace peak RSS {peak:.1f} MiB "
            f"(target <= 64); median of the per-round ratios {median:.2f}x"
        )


if __name__ == "__main__":
    main()
