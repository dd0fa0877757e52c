"""Benchmark: the ``email`` backend mailing a split bundle vs ``curl smtp://`` sending the same
number of ready-made messages of the same size, to the same SMTP server, in the same run.

Run:  .venv/bin/python tests/bench/bench_email.py [--size-mib 100] [--part-mib 10] [--rounds 2]

The server is aiosmtpd on 127.0.0.1 (plain, its own process, ``aiosmtpd.handlers.Sink``
drops each message). Each client runs in its own process, its peak RSS measured by GNU time:
  reference   curl smtp://... --mail-from --mail-rcpt -T part.eml, once per part (the .eml
              files are built beforehand: curl only sends)
  fieldtrace  EmailBackend.deliver(): reads each part, MIME/base64-encodes it, sends it
Prints MiB/s of bundle bytes for each, the ratio (fieldtrace / curl), and fieldtrace's peak
RSS idle, for a bundle of one part and for the full size: flat, since each part is streamed
in ~1 MiB pieces (neither the bundle nor a part is held in memory).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

CLIENT = """
import sys
from pathlib import Path
from uploader.base import DeliveryMeta
from uploader.email import EmailBackend, SmtpConfig
path = Path(sys.argv[2])
meta = DeliveryMeta("b" * 32, path.name, path.stat().st_size, "0" * 64, ticket="4711",
                    company="ACME Telecom", contract="TS-2024-117", devices=("gw1",),
                    profile="default", summary="bench")
cfg = SmtpConfig("127.0.0.1", int(sys.argv[1]), "noc@acme.example", ("support@vendor.example",),
                 tls="none", max_attachment_bytes=int(sys.argv[3]), timeout=120)
EmailBackend(cfg).deliver(path, meta)
"""


MAKE_EMLS = """
import sys
from email import policy
from email.message import EmailMessage
from pathlib import Path
tmp, part, n = Path(sys.argv[1]), int(sys.argv[2]), 0
with open(tmp / "bundle.tar.zst.age", "rb") as fh:
    while data := fh.read(part):
        m = EmailMessage()
        m["From"], m["To"], m["Subject"] = "noc@acme.example", "s@v.example", "x"
        m.set_content("bench")
        m.add_attachment(data, maintype="application", subtype="octet-stream")
        (tmp / f"{n}.eml").write_bytes(m.as_bytes(policy=policy.SMTP))
        n += 1
"""


def start_server(port: int) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "aiosmtpd", "-n", "-c", "aiosmtpd.handlers.Sink"]
    proc = subprocess.Popen([*argv, "-l", f"127.0.0.1:{port}"])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("aiosmtpd did not start")


def main() -> None:
    from tests.bench.timing import timed_run as run
    from tests.fixtures.ports import free_port

    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=100)
    ap.add_argument("--part-mib", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    part = args.part_mib * 1024 * 1024
    port = free_port()
    server = start_server(port)
    try:
        with tempfile.TemporaryDirectory(prefix="ft-bench-mail-") as tmp:
            bundle = Path(tmp) / "bundle.tar.zst.age"
            one = Path(tmp) / "one.tar.zst.age"
            with open(bundle, "wb") as fh:
                for _ in range(args.size_mib):
                    fh.write(os.urandom(1024 * 1024))
            one.write_bytes(os.urandom(part))
            subprocess.run([sys.executable, "-c", MAKE_EMLS, tmp, str(part)], check=True)
            emls = sorted(Path(tmp).glob("*.eml"), key=lambda p: int(p.stem))
            url = f"smtp://127.0.0.1:{port}"
            base = ["curl", "-sS", url, "--mail-from", "noc@acme.example"]
            base += ["--mail-rcpt", "support@vendor.example"]
            ours = [sys.executable, "-c", CLIENT, str(port), str(bundle), str(part)]
            best_ref = best_ours = float("inf")
            rss_ref = rss_ours = 0
            for _ in range(args.rounds):
                t0 = time.perf_counter()
                for eml in emls:
                    _, rss = run([*base, "-T", str(eml)])
                    rss_ref = max(rss_ref, rss)
                best_ref = min(best_ref, time.perf_counter() - t0)
                t, rss = run(ours)
                best_ours, rss_ours = min(best_ours, t), max(rss_ours, rss)
            _, rss_one = run([sys.executable, "-c", CLIENT, str(port), str(one), str(part)])
            _, rss_base = run([sys.executable, "-c", "import uploader.email"])
    finally:
        server.terminate()
        server.wait(10)
    mib = args.size_mib
    print(f"{mib} MiB bundle in {len(emls)} parts of {args.part_mib} MiB over SMTP on loopback,")
    print(f"best of {args.rounds}:")
    print(f"  curl smtp://  {mib / best_ref:7.1f} MiB/s   peak RSS {rss_ref / 1024:6.1f} MiB")
    print(f"  fieldtrace    {mib / best_ours:7.1f} MiB/s   peak RSS {rss_ours / 1024:6.1f} MiB")
    print(f"  ratio fieldtrace/curl: {best_ref / best_ours:.2f}x")
    print(
        f"  fieldtrace peak RSS: {rss_base / 1024:.1f} MiB idle (interpreter + imports), "
        f"{rss_one / 1024:.1f} MiB for one {args.part_mib} MiB part, "
        f"{rss_ours / 1024:.1f} MiB for {mib} MiB"
    )


if __name__ == "__main__":
    main()
