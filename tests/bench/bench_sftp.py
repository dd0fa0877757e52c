"""Benchmark: a 200 MB SFTP fetch with ssh.file vs OpenSSH ``sftp`` on the same file.

Run:  .venv/bin/python tests/bench/bench_sftp.py [--size-mb 200] [--rounds 3]

A real OpenSSH sshd on 127.0.0.1 (the test fixture); a file of random bytes "on the
device". Each round, in the same run, page cache warm:
  reference   sftp -b - (OpenSSH client, default ciphers) "get FILE DEST"
  fieldtrace  the ssh.file collector (paramiko SFTP with prefetch, artifact sink with caps),
              session opened by agent.ssh_session.open_ssh, in a child process so its peak
              RSS is its own
Prints MB/s of each (best of the rounds), the ratio fieldtrace / sftp (target >= 0.5) and
the peak RSS of the fieldtrace child.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.fixtures.sshd import running_sshd  # noqa: E402

CHILD = r"""
import json, resource, sys, threading, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from agent.settings import Device
from agent.ssh_session import open_ssh
from collectors.base import ArtifactSink, DeviceInfo, StepContext
from collectors.ssh import SshFile
port, key, home, src, out = sys.argv[2:7]
dev = Device.model_validate({"name": "gw1", "type": "t", "address": "127.0.0.1",
    "ssh": {"port": int(port), "username": "root", "key": {"file": key}}})
session = open_ssh(dev, Path(home))
sink = ArtifactSink(Path(out), "gw1/big")
ctx = StepContext(sink=sink, deadline=time.monotonic() + 600, cancel=threading.Event(),
                  opener=lambda kind: session)
c = SshFile()
t0 = time.monotonic()
facts = c.collect(ctx, DeviceInfo("gw1", "t", "127.0.0.1"),
                  c.Options.model_validate({"path": src, "max_bytes": "1GB"}))
secs = time.monotonic() - t0
session.close()
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"seconds": secs, "bytes": facts["bytes"], "rss_mib": rss}))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mb", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    size = args.size_mb * 1000**2
    work = Path(tempfile.mkdtemp(prefix="ft-bench-sftp-"))
    try:
        src = work / "big.bin"
        with open(src, "wb") as fh:
            left = size
            while left:
                n = min(left, 8 << 20)
                fh.write(os.urandom(n))
                left -= n
        with running_sshd() as server:
            home = work / "home"
            home.mkdir()
            (home / "known_hosts").write_text(server.known_hosts_line() + "\n")
            ours: list[float] = []
            ref: list[float] = []
            rss = 0.0
            for _ in range(args.rounds):
                dest = work / "sftp-out.bin"
                t0 = time.monotonic()
                subprocess.run(
                    [
                        "sftp", "-q", "-b", "-", "-i", str(server.client_key), "-P",
                        str(server.port), "-o", f"UserKnownHostsFile={home / 'known_hosts'}",
                        "-o", "BatchMode=yes", f"root@{server.host}",
                    ],
                    input=f"get {src} {dest}\n".encode(),
                    check=True,
                    capture_output=True,
                    timeout=600,
                )  # fmt: skip
                ref.append(size / (time.monotonic() - t0) / 1e6)
                assert dest.stat().st_size == size
                dest.unlink()
                out = work / "stage"
                proc = subprocess.run(
                    [sys.executable, "-c", CHILD, str(REPO), str(server.port),
                     str(server.client_key), str(home), str(src), str(out)],
                    check=True, capture_output=True, text=True, timeout=600,
                )  # fmt: skip
                r = json.loads(proc.stdout)
                assert r["bytes"] == size, r
                ours.append(size / r["seconds"] / 1e6)
                rss = max(rss, r["rss_mib"])
                shutil.rmtree(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"file: {args.size_mb} MB, {args.rounds} rounds (MB/s per round)")
    print(f"OpenSSH sftp get:   best {max(ref):.0f} MB/s  ({' '.join(f'{x:.0f}' for x in ref)})")
    print(f"fieldtrace ssh.file: best {max(ours):.0f} MB/s  ({' '.join(f'{x:.0f}' for x in ours)})")
    print(f"ratio ssh.file / sftp (best of each): {max(ours) / max(ref):.2f} (target >= 0.5)")
    print(f"peak RSS of the ssh.file process: {rss:.0f} MiB")


if __name__ == "__main__":
    main()
