"""Benchmark: packet capture on `lo` at increasing rates, every method in the same run.

Run:  .venv/bin/python tests/bench/bench_capture.py [--rates 10000,50000,100000,200000,0]
          [--seconds 1.0] [--settle 1.2]
          [--methods fieldtrace,tcpdump,tcpdump-immediate,dumpcap,scapy,scapy-pcap]

Needs root (or CAP_NET_RAW) and tcpdump; dumpcap and scapy methods run when available.
For each rate (0 = as fast as the sender goes) a sender in a separate process sends
``rate * seconds`` UDP datagrams of 172 bytes (a G.711 RTP packet) with a sequence number to
a bound socket on 127.0.0.1; each method captures ``udp dst port P`` on ``lo`` into a file,
is stopped 0.2 s after the last packet was sent, and the file is read back: captured = unique
sequence numbers found. Methods:

  fieldtrace         the pcap.capture collector (drives tcpdump --immediate-mode -U)
  tcpdump            plain `tcpdump -i lo -U -w F` stopped by SIGINT (the reference)
  tcpdump-immediate  the same with --immediate-mode
  dumpcap            `dumpcap -i lo -P -w F` stopped by SIGINT
  scapy              scapy sniff(prn=PcapWriter.write) (Linux packet socket, dissects)
  scapy-pcap         the same with conf.use_pcap = True (libpcap)

A method that loses more than 50% at a rate is not run at higher rates. Prints
captured/sent per method and rate, the highest rate each holds with zero loss, the ratio
fieldtrace/tcpdump, and peak RSS of the capturing processes.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
SIZE = 172


def send(port: int, rate: int, count: int) -> None:
    """Child process: send ``count`` datagrams at ``rate`` pps (0 = flat out)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    dst = ("127.0.0.1", port)
    pad = b"\x00" * (SIZE - 8)
    pack = struct.Struct(">Q").pack
    t0 = time.perf_counter()
    batch = max(1, rate // 2000) if rate else 512
    n = 0
    while n < count:
        if rate and n > (time.perf_counter() - t0) * rate:
            continue
        for _ in range(min(batch, count - n)):
            s.sendto(pack(n) + pad, dst)
            n += 1
    el = time.perf_counter() - t0
    print(f"{n} {el:.4f}", flush=True)


def unique_seqs(path: Path) -> tuple[int, int]:
    """(records, unique sequence numbers) in a classic pcap (Ethernet or Linux SLL)."""
    records = 0
    seqs: set[bytes] = set()
    files = sorted(path.parent.glob(path.name + "*"))
    for f in files:
        data = f.read_bytes()
        if len(data) < 24:
            continue
        e = "<" if data[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
        (linktype,) = struct.unpack(e + "I", data[20:24])
        l2 = {1: 14, 113: 16, 276: 20}.get(linktype, 14)
        rec = struct.Struct(e + "IIII")
        off = 24
        while off + 16 <= len(data):
            _, _, incl, _ = rec.unpack_from(data, off)
            pkt = data[off + 16 : off + 16 + incl]
            off += 16 + incl
            records += 1
            if len(pkt) >= l2 + 20 + 8 + 8:
                ihl = (pkt[l2] & 0x0F) * 4
                seqs.add(pkt[l2 + ihl + 8 : l2 + ihl + 16])
    return records, len(seqs)


def _children(pid: int) -> list[int]:
    pids: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            pids += [int(p) for p in (task / "children").read_text().split()]
    return pids


PEAK: dict[str, float] = {}  # method -> peak RSS (MiB) of its capture process(es)
ACHIEVED: dict[str, float] = {}  # method -> pps the sender reached in its last run


def vm_hwm_mib(pid: int) -> float:
    """Peak RSS of a running process (VmHWM), MiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class Proc:
    """A capture method run as a child process and stopped by SIGINT."""

    def __init__(
        self, method: str, argv: list[str], ready: str, env: dict[str, str] | None = None
    ) -> None:
        self.method = method
        self.p = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
            env=env,
        )
        assert self.p.stderr is not None and self.p.stdout is not None
        stream = self.p.stdout if ready == "READY" else self.p.stderr
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            line = stream.readline()
            if not line or ready in line:
                break
        time.sleep(0.3)  # let the capture socket settle (applies to all methods alike)

    def stop(self) -> str:
        # the process and its children (fieldtrace: the collector and its tcpdump)
        pids = [self.p.pid, *_children(self.p.pid)]
        PEAK[self.method] = max(PEAK.get(self.method, 0.0), sum(vm_hwm_mib(p) for p in pids))
        self.p.send_signal(signal.SIGINT)
        _, err = self.p.communicate(timeout=60)
        return err


SCAPY = r"""
import signal, sys
from scapy.all import conf, AsyncSniffer, PcapWriter
if sys.argv[1] == "scapy-pcap":
    conf.use_pcap = True
w = PcapWriter(sys.argv[3], sync=False)
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
s = AsyncSniffer(iface="lo", filter=f"udp dst port {sys.argv[2]}", prn=w.write, store=False,
                 started_callback=lambda: print("READY", flush=True))
s.start()
signal.sigwait({signal.SIGINT})
s.stop()
w.close()
"""


def run_method(
    method: str, port: int, out: Path, sender: list[str], seconds: float, settle: float
) -> int:
    """Start the capture, run the sender, stop; return packets sent."""
    if method == "fieldtrace":
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        proc = Proc(method, [sys.executable, "-c", FIELDTRACE, str(port), str(out)], "READY", env)
    elif method in ("tcpdump", "tcpdump-immediate", "tcpdump-buffered"):
        argv = ["tcpdump", "-i", "lo", "-n", "-B", "4096", "-w", str(out)]
        argv += [] if method == "tcpdump-buffered" else ["-U"]
        argv += ["--immediate-mode"] if method == "tcpdump-immediate" else []
        argv += ["-Z", "root"] if os.geteuid() == 0 else []
        proc = Proc(method, [*argv, f"udp dst port {port}"], "listening on")
    elif method == "dumpcap":
        proc = Proc(
            method,
            [
                "dumpcap",
                "-q",
                "-i",
                "lo",
                "-P",
                "-B",
                "4",
                "-w",
                str(out),
                "-f",
                f"udp dst port {port}",
            ],
            "Capturing on",
        )
    else:
        code = SCAPY
        proc = Proc(
            method,
            [sys.executable, "-c", code, method, str(port), str(out)],
            "READY",
        )
    n, took = subprocess.run(sender, capture_output=True, text=True, check=True).stdout.split()
    sent = int(n)
    ACHIEVED[method] = sent / float(took)
    time.sleep(settle)
    proc.stop()
    return sent


FIELDTRACE = r"""
import signal, sys, threading, time
from pathlib import Path
from collectors.base import ArtifactSink, DeviceInfo, StepContext, StepError
from collectors.pcap import PcapCapture
out = Path(sys.argv[2])
sink = ArtifactSink(out.parent, "ft-" + out.stem)
ctx = StepContext(sink=sink, deadline=time.monotonic() + 600, cancel=threading.Event())
opts = PcapCapture.Options.model_validate(
    {"interface": "lo", "filter": f"udp dst port {sys.argv[1]}", "duration": "10m",
     "sip_summary": False})
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
def run():
    try:
        PcapCapture().collect(ctx, DeviceInfo("local", "linux-host", "localhost"), opts)
    except StepError as exc:  # kernel drops make the step "partial": the trace is kept
        print(exc, file=sys.stderr)
t = threading.Thread(target=run)
t.start()
ctx.ready.wait(15)
print("READY", flush=True)
signal.sigwait({signal.SIGINT})
ctx.finish.set()  # what the runner does at the end of the profile
t.join()
(pcap,) = [out.parent / a.path for a in sink.artifacts if a.path.endswith(".pcap")]
pcap.rename(out)
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rates", default="10000,50000,100000,200000,0")
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument(
        "--methods", default="fieldtrace,tcpdump,tcpdump-immediate,dumpcap,scapy,scapy-pcap"
    )
    ap.add_argument(
        "--settle", type=float, default=1.2, help="seconds between the last packet and the stop"
    )
    ap.add_argument("--send", nargs=3, type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.send:
        send(*args.send)
        return 0
    methods = args.methods.split(",")
    rates = [int(r) for r in args.rates.split(",")]
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))  # bound, never read: no ICMP back, full buffer just drops
    port = sink.getsockname()[1]
    results: dict[str, dict[int, tuple[int, int, float]]] = {m: {} for m in methods}
    given_up: set[str] = set()
    with tempfile.TemporaryDirectory(prefix="ftbench-") as tmp:
        for rate in rates:
            count = int(rate * args.seconds) if rate else 300_000
            for m in methods:
                if m in given_up:
                    continue
                out = Path(tmp) / f"{m}-{rate}.pcap"
                sender = [sys.executable, __file__, "--send", str(port), str(rate), str(count)]
                t0 = time.monotonic()
                sent = run_method(m, port, out, sender, args.seconds, args.settle)
                _, uniq = unique_seqs(out)
                took = time.monotonic() - t0
                results[m][rate] = (sent, uniq, took)
                label = f"{rate}" if rate else "max"
                print(
                    f"{m:18s} rate={label:>7} sent={sent:>7} captured={uniq:>7} "
                    f"ratio={uniq / sent:6.4f} loss={100 * (sent - uniq) / sent:5.1f}% "
                    f"(sender reached {ACHIEVED[m] / 1000:.0f} kpps)",
                    flush=True,
                )
                for f in Path(tmp).glob("*"):
                    if f.is_file():
                        f.unlink()
                if uniq < sent / 2:
                    given_up.add(m)
    print(
        "\nhighest rate held with zero loss at it and every lower rate ('max' = sender flat out):"
    )
    for m in methods:
        held = None
        for r in rates:
            if r not in results[m] or results[m][r][1] != results[m][r][0]:
                break
            held = r
        lbl = "none" if held is None else ("max" if held == 0 else str(held))
        print(f"  {m:18s} {lbl}")
    if "fieldtrace" in results and "tcpdump" in results:
        both = [r for r in rates if r in results["fieldtrace"] and r in results["tcpdump"]]
        worse = [
            r
            for r in both
            if results["tcpdump"][r][1] == results["tcpdump"][r][0]
            and results["fieldtrace"][r][1] < results["fieldtrace"][r][0]
        ]
        ft = sum(results["fieldtrace"][r][1] for r in both)
        td = sum(results["tcpdump"][r][1] for r in both)
        print(
            f"fieldtrace/tcpdump captured ratio over all rates: {ft / max(td, 1):.4f}; "
            f"rates where tcpdump lost nothing but fieldtrace lost: {worse or 'none'}"
        )
    print("peak RSS of the capturing processes (fieldtrace: the collector + its tcpdump):")
    for m in methods:
        print(f"  {m:18s} {PEAK.get(m, 0.0):6.1f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
