"""Benchmark: the ``http`` backend's streamed multipart upload vs ``curl -F`` to the same server.

Run:  .venv/bin/python tests/bench/bench_http_upload.py [--size-mib 512] [--rounds 3]

A stdlib ThreadingHTTPServer on 127.0.0.1 (in this process) reads each request body in 1 MiB
blocks and counts it. In the same run, best of ``rounds``, each client in its own process,
its peak RSS measured by GNU time (/usr/bin/time, Debian package ``time``):
  reference   curl -sS -F file=@BUNDLE -H 'Authorization: ...' URL
  fieldtrace  HttpBackend.deliver() (requests + requests-toolbelt MultipartEncoder)
Prints MiB/s of each, the ratio (fieldtrace / curl), and fieldtrace's peak RSS for a small
(16 MiB) and the full-size bundle: flat means streamed, not read into memory.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

CLIENT = """
import sys
from pathlib import Path
from uploader.base import DeliveryMeta
from uploader.http import HttpBackend, HttpConfig
path = Path(sys.argv[2])
meta = DeliveryMeta("b" * 32, path.name, path.stat().st_size, "0" * 64, ticket="4711",
                    company="ACME Telecom", contract="TS-2024-117", summary="bench")
HttpBackend(HttpConfig(url=sys.argv[1], auth_value="Bearer bench")).deliver(path, meta)
"""


class Sink(BaseHTTPRequestHandler):
    received: list[int] = []

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        left = int(self.headers.get("Content-Length", "0"))
        total = 0
        while left:
            block = self.rfile.read(min(left, 1024 * 1024))
            if not block:
                break
            total += len(block)
            left -= len(block)
        Sink.received.append(total)
        self.send_response(201)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")


def main() -> None:
    from tests.bench.timing import timed_run as run

    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/upload"
    with tempfile.TemporaryDirectory(prefix="ft-bench-http-") as tmp:
        small, big = Path(tmp) / "small.tar.zst.age", Path(tmp) / "big.tar.zst.age"
        for path, mib in ((small, 16), (big, args.size_mib)):
            with open(path, "wb") as fh:
                for _ in range(mib):
                    fh.write(os.urandom(1024 * 1024))
        curl = [
            "curl", "-sS", "-o", "/dev/null", "-H", "Authorization: Bearer bench",
            "-H", "Expect:", "-F", f"file=@{big};type=application/octet-stream", url,
        ]  # fmt: skip
        ours = [sys.executable, "-c", CLIENT, url, str(big)]
        best_ref = best_ours = float("inf")
        rss_ref = rss_ours = 0
        for _ in range(args.rounds):
            t, rss = run(curl)
            best_ref, rss_ref = min(best_ref, t), max(rss_ref, rss)
            t, rss = run(ours)
            best_ours, rss_ours = min(best_ours, t), max(rss_ours, rss)
        _, rss_small = run([sys.executable, "-c", CLIENT, url, str(small)])
        assert all(n >= args.size_mib * 1024 * 1024 for n in Sink.received[:-1]), Sink.received
    server.shutdown()
    mib = args.size_mib
    print(f"upload of {mib} MiB over HTTP on loopback, best of {args.rounds}:")
    print(f"  curl -F     {mib / best_ref:8.1f} MiB/s   peak RSS {rss_ref / 1024:6.1f} MiB")
    print(f"  fieldtrace  {mib / best_ours:8.1f} MiB/s   peak RSS {rss_ours / 1024:6.1f} MiB")
    print(f"  ratio fieldtrace/curl: {best_ref / best_ours:.2f}x")
    print(
        f"  fieldtrace peak RSS: {rss_small / 1024:.1f} MiB for 16 MiB, "
        f"{rss_ours / 1024:.1f} MiB for {mib} MiB"
    )


if __name__ == "__main__":
    main()
