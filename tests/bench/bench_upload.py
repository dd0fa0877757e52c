"""Benchmark: uploading a bundle to Redmine with the ``redmine`` backend vs ``curl``.

Run:  .venv/bin/python tests/bench/bench_upload.py [--sizes 256,1024] [--rounds 3]

Starts a throwaway local Redmine (tests/fixtures/redmine.py; attachment_max_size raised
to 4 GiB), writes a random bundle-like file of each size, and uploads it to
``POST /uploads.json`` in the same run (who goes first alternates; Redmine's stored files
are removed and synced before each upload):
  reference  curl -X POST --upload-file FILE -H 'Expect:'
                  -H 'Content-Type: application/octet-stream' -H 'X-Redmine-API-Key: ...'
                  URL/uploads.json?filename=...
             (--upload-file streams from the file; ``--data-binary @FILE`` reads the whole
             file into memory first and refuses files of 1 GiB and more: curl exits 2)
  fieldtrace RedmineBackend's upload step (streamed from the file, 1 MiB blocks), in a
             child process so its peak RSS is its own
Both go to the same server, which is the bottleneck, so the ratio says whether our client
costs anything. Prints MiB/s (best of the rounds), the ratio fieldtrace / curl (target
>= 0.8) and the child's peak RSS per size (target: flat, the same for 256 MiB and 1 GiB).
Redmine's token ends with the sha256 it computed: both uploads are checked against it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def child(path: str, url: str, key: str, sha: str) -> None:
    from uploader.base import DeliveryMeta
    from uploader.redmine import RedmineBackend, RedmineOptions

    size = os.path.getsize(path)
    meta = DeliveryMeta(bundle_id="bench", name=Path(path).name, size=size, sha256=sha)
    backend = RedmineBackend(RedmineOptions(url=url, api_key=key, project="diag", timeout=900))
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    with backend._session() as s:
        token = backend._upload(s, Path(path), meta)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"seconds": seconds, "token": token, "rss_kib": peak, "base_kib": base_rss}))


def curl(path: Path, url: str, key: str) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(
        ["curl", "-sS", "--fail", "-X", "POST", "--upload-file", str(path), "-H", "Expect:",
         "-H", "Content-Type: application/octet-stream", "-H", f"X-Redmine-API-Key: {key}",
         f"{url}/uploads.json?filename={path.name}"],
        capture_output=True, timeout=1800, check=True,
    )  # fmt: skip
    seconds = time.perf_counter() - t0
    return seconds, str(json.loads(proc.stdout)["upload"]["token"])


def ours(path: Path, url: str, key: str, sha: str) -> dict[str, float | str]:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", str(path), url, key, sha],
        capture_output=True, text=True, timeout=1800, check=True,
    )  # fmt: skip
    data: dict[str, float | str] = json.loads(proc.stdout)
    return data


def make_file(d: Path, mib: int) -> tuple[Path, str]:
    path = d / f"bench-{mib}MiB.tar.zst.age"
    h = hashlib.sha256()
    with open(path, "wb") as fh:
        for _ in range(mib):
            block = os.urandom(1 << 20)
            h.update(block)
            fh.write(block)
    return path, h.hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="256,1024", help="MiB, comma-separated")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    assert shutil.which("curl"), "curl is missing"
    from tests.fixtures.redmine import redmine_instance

    cache = REPO / ".pytest_cache" / "d" / "fieldtrace-redmine"
    work = Path(tempfile.mkdtemp(prefix="ft-bench-upload-", dir="/var/tmp"))
    try:
        with redmine_instance(cache) as rm:
            rm.set_setting("attachment_max_size", str(4 * 1024 * 1024))  # KB
            print(f"redmine {rm.url}; rounds {args.rounds}; best-of shown")
            print(f"{'size':>9} {'curl MiB/s':>11} {'ours MiB/s':>11} {'ratio':>6} "
                  f"{'our peak RSS':>13}")  # fmt: skip
            for mib in (int(x) for x in args.sizes.split(",")):
                path, sha = make_file(work, mib)
                best_curl = best_ours = float("inf")
                rss = 0
                for rnd in range(args.rounds):
                    # alternate who goes first; flush the stored uploads before each one so
                    # neither pays for the other's writeback
                    for who in ("curl", "ours") if rnd % 2 == 0 else ("ours", "curl"):
                        shutil.rmtree(rm.dir / "files", ignore_errors=True)
                        (rm.dir / "files").mkdir()
                        os.sync()
                        if who == "curl":
                            sec, token = curl(path, rm.url, rm.api_key)
                            assert token.endswith(sha), "curl: Redmine stored other bytes"
                            best_curl = min(best_curl, sec)
                        else:
                            r = ours(path, rm.url, rm.api_key, sha)
                            assert str(r["token"]).endswith(sha), "ours: Redmine stored other bytes"
                            best_ours = min(best_ours, float(r["seconds"]))
                            rss = max(rss, int(r["rss_kib"]))
                c, o = mib / best_curl, mib / best_ours
                print(f"{mib:>5} MiB {c:>11.0f} {o:>11.0f} {o / c:>5.2f}x {rss / 1024:>9.1f} MiB")
                path.unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(*sys.argv[2:6])
    else:
        main()
