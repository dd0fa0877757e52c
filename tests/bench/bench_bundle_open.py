"""Benchmark: ``fieldtrace bundle open`` vs the stock tools on the same bundle.

Run:  .venv/bin/python tests/bench/bench_bundle_open.py [--size-mib 512] [--rounds 3]
                                                         [--code DIR]

One bundle is made with ``write_bundle`` from half compressible text, half random data (files
of 32 MiB). Each round, into fresh directories, page cache warm for both:
  reference  age -d -i ID B | tar --zstd -x -k --no-same-owner --no-same-permissions -C D
             (the README's stock command: no checks at all)
  fieldtrace bundle open B -i ID -o D  (verify everything, write into a temp dir, rename)
``--code DIR`` runs the fieldtrace side from another source tree (e.g. ``git archive main``
unpacked somewhere) for a before/after comparison. Prints MiB/s of plaintext, the ratio
(fieldtrace / reference) and fieldtrace's peak RSS (GNU time).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def make_bundle(root: Path, size_mib: int) -> tuple[Path, Path, int]:
    from agent.bundle import FORMAT, write_bundle
    from agent.keys import load_identity, load_signing_key

    home, staging = root / "home", root / "staging"
    home.mkdir()
    rnd = random.Random(11)
    line = b"2026-11-25T10:00:00 gw1 sipd[1042]: call from sip:user@10.0.0.1 status=200\n"
    text = line * (32 * 1024 * 1024 // len(line))
    artifacts = []
    for i in range(max(2, size_mib // 32)):
        rel = f"gw1/step{i % 4}/part{i:03d}.{'log' if i % 2 else 'bin'}"
        data = text if i % 2 else rnd.randbytes(32 * 1024 * 1024)
        path = staging / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        artifacts.append(
            {"path": rel, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        )
    manifest = {
        "format": FORMAT,
        "bundle_id": "bench",
        "site": {"slug": "bench"},
        "steps": [{"device": "gw1", "id": "all", "status": "ok", "artifacts": artifacts}],
    }
    ident = load_identity(home)
    dest = root / "bench-gw1-default-20260101T000000Z-bench.tar.zst.age"
    stats = write_bundle(
        dest,
        dest.name[:-12],
        manifest,
        staging,
        load_signing_key(home),
        [ident.to_public()],
        time.time(),  # type: ignore[attr-defined]
    )
    shutil.rmtree(staging)
    return dest, home / "identity.txt", stats.plaintext_bytes


def stock(bundle: Path, identity: Path, out: Path) -> float:
    out.mkdir(mode=0o700)
    t0 = time.perf_counter()
    age = subprocess.Popen(["age", "-d", "-i", str(identity), str(bundle)], stdout=subprocess.PIPE)
    tar = ["tar", "--zstd", "-x", "-k", "--no-same-owner", "--no-same-permissions", "-C", str(out)]
    subprocess.run(tar, stdin=age.stdout, check=True)
    assert age.stdout is not None
    age.stdout.close()
    if age.wait() != 0:
        raise SystemExit("age -d failed")
    return time.perf_counter() - t0


def fieldtrace(bundle: Path, identity: Path, out: Path, code: Path) -> tuple[float, int]:
    out.mkdir(mode=0o700)
    rss = out.parent / "rss.txt"
    argv = ["/usr/bin/time", "-q", "-f", "%M", "-o", str(rss), sys.executable, "-m", "agent"]
    argv += ["bundle", "open", str(bundle), "-i", str(identity), "-o", str(out)]
    env = {**os.environ, "PYTHONPATH": str(code), "FIELDTRACE_NO_LOGFILE": "1"}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    t0 = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if proc.returncode not in (0,):
        raise SystemExit(f"bundle open failed ({proc.returncode}): {proc.stderr[-400:]}")
    return elapsed, int(rss.read_text().split()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--code", type=Path, default=REPO)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-open-", dir="/var/tmp") as tmp:
        root = Path(tmp)
        bundle, identity, plain = make_bundle(root, args.size_mib)
        mib = plain / (1 << 20)
        print(f"bundle: {bundle.stat().st_size / (1 << 20):.1f} MiB, tar stream {mib:.1f} MiB")
        ratios = []
        for r in range(args.rounds):
            ref = stock(bundle, identity, root / f"ref{r}")
            ft, rss = fieldtrace(bundle, identity, root / f"ft{r}", args.code)
            shutil.rmtree(root / f"ref{r}")
            shutil.rmtree(root / f"ft{r}")
            ratios.append(ref / ft)
            print(
                f"round {r + 1}: stock {mib / ref:.0f} MiB/s, fieldtrace {mib / ft:.0f} MiB/s, "
                f"ratio {ref / ft:.2f}x, fieldtrace peak RSS {rss / 1024:.1f} MiB"
            )
        print(f"median ratio {statistics.median(ratios):.2f}x (load {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
