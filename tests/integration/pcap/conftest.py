"""Fixtures and helpers for the capture tests: the pcap.capture collector run in-process on
``lo``, UDP senders with sequence numbers, free ports, and sipp."""

from __future__ import annotations

import shutil
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from collectors.base import ArtifactSink, DeviceInfo, StepContext, StepError
from collectors.pcap import PcapCapture

DEVICE = DeviceInfo("local", "linux-host", "localhost")
LO_HEADER = 14 + 20 + 8  # Ethernet + IPv4 + UDP on lo


@dataclass
class Capture:
    """The outcome of one pcap.capture run."""

    facts: dict[str, Any]
    error: StepError | None
    root: Path
    artifacts: list[Path] = field(default_factory=list)
    seconds: float = 0.0

    def files(self, suffix: str = ".pcap") -> list[Path]:
        return [p for p in self.artifacts if p.name.endswith(suffix)]

    def artifact(self, name: str) -> Path:
        (found,) = [p for p in self.artifacts if p.name == name]
        return found


def run_capture(
    root: Path,
    options: dict[str, Any],
    during: Callable[[StepContext], None] | None = None,
    finish: bool = False,
    deadline: float = 60.0,
) -> Capture:
    """Run the collector in a thread; once it records, run ``during``; then optionally
    ask it to finish (as the runner does at the end of a profile) and wait for it."""
    opts = PcapCapture.Options.model_validate(options)
    sink = ArtifactSink(root, "local/cap")
    ctx = StepContext(sink=sink, deadline=time.monotonic() + deadline, cancel=threading.Event())
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["facts"] = PcapCapture().collect(ctx, DEVICE, opts)
        except StepError as exc:
            box["error"] = exc

    t0 = time.monotonic()
    worker = threading.Thread(target=target)
    worker.start()
    while worker.is_alive() and not ctx.ready.wait(0.05):
        pass
    try:
        if during is not None and ctx.ready.is_set():
            during(ctx)
    finally:
        if finish:
            ctx.finish.set()
        worker.join(deadline + 10)
    assert not worker.is_alive(), "the capture did not stop"
    err = box.get("error")
    facts = box.get("facts") or (getattr(err, "facts", {}) if err else {})
    return Capture(facts, err, root, [root / a.path for a in sink.artifacts], time.monotonic() - t0)


class UdpTarget:
    """A bound UDP socket on 127.0.0.1 (so no ICMP errors), and a sender with sequence numbers."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self.tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.seq = 0
        self.sent_at: list[float] = []
        self._drain = threading.Thread(target=self._read, daemon=True)
        self._drain.start()

    def _read(self) -> None:
        try:
            while True:
                self.sock.recv(65536)
        except OSError:
            pass

    def send(self, count: int, size: int = 100) -> None:
        pad = b"\x00" * (size - 8)
        for _ in range(count):
            self.tx.sendto(struct.pack(">Q", self.seq) + pad, ("127.0.0.1", self.port))
            self.sent_at.append(time.time())
            self.seq += 1

    def close(self) -> None:
        self.tx.close()
        self.sock.close()


@pytest.fixture
def udp() -> Iterator[UdpTarget]:
    t = UdpTarget()
    try:
        yield t
    finally:
        t.close()


def read_seqs(path: Path) -> list[tuple[float, int]]:
    """(time stamp, sequence number) of every packet in a pcap/pcapng file (scapy reads it)."""
    from scapy.utils import RawPcapReader

    out = []
    with RawPcapReader(str(path)) as reader:  # type: ignore[no-untyped-call]
        for data, meta in reader:
            if hasattr(meta, "sec"):
                ts = meta.sec + meta.usec / 1e6
            else:  # pcapng
                ts = ((meta.tshigh << 32) | meta.tslow) / meta.tsresol
            (seq,) = struct.unpack(">Q", data[LO_HEADER : LO_HEADER + 8])
            out.append((ts, seq))
    return out


@pytest.fixture(scope="session")
def tools() -> dict[str, str]:
    """The real tools these tests need: a missing one is a failure, never a skip."""
    found = {}
    for name in ("tcpdump", "tshark", "sipp", "setpriv", "capinfos"):
        path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
        assert path, f"{name} is not installed (tests/run.sh installs it)"
        found[name] = path
    return found
