"""``pcap.capture``: a bounded packet capture on the agent host, written by tcpdump.

Design, measured with ``tests/bench/bench_capture.py`` (UDP on ``lo``, 172-byte packets, all
methods in the same run, 2-core VM shared with other work; captured/sent):

* scapy's ``sniff`` dissects every packet in Python: 0.18 at 5 kpps (0.28 with libpcap,
  ``conf.use_pcap``), 85 MiB RSS. scapy is kept for what it does well here: reading the
  finished trace (the SIP summary) and nothing on the hot path.
* ``tcpdump -U -w`` and ``dumpcap -w``: 1.0000 at every rate up to the sender's maximum
  (~200 kpps here) when stopped 1.2 s after the last packet; tcpdump ``--immediate-mode``
  (a wakeup per packet): 0.93 at 5 kpps, 0.29 at 200 kpps.
* What loses packets is the stop: libpcap hands packets over a block at a time, a block is
  released when full or after the buffer timeout (1 s in tcpdump, 250 ms in dumpcap), and
  SIGINT ends the process without reading the unreleased block. tcpdump stopped 0.2 s after
  the last packet: 0.9906 at 10 kpps, 0.9986 at max; a burst of 10 packets stopped 0.1 s
  later was lost entirely (both tools). This collector, asked to stop 0.2 s after the last
  packet: 1.0000 at every rate.

So the collector drives tcpdump (a small, universal dependency; dumpcap needs Wireshark's
libraries) with ``-U`` and stops it in two phases: when asked to stop at time T it waits
``DRAIN`` (longer than the buffer timeout) so every packet up to T has been handed over, then
sends SIGINT (tcpdump flushes the file and prints its kernel statistics). A ``duration``
capture is then cut back to exactly [start, start + duration] by packet time stamps;
``max_bytes`` is enforced by cutting the file at the last whole packet under the cap;
``max_packets`` is tcpdump's own ``-c``; a ring is tcpdump's ``-C``/``-W``.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import mmap
import os
import pwd
import re
import shutil
import signal
import struct
import subprocess
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from collectors.base import (
    Collector,
    DeviceInfo,
    Duration,
    Facts,
    Options,
    Size,
    StepContext,
    StepFailed,
    StepPartial,
)

DRAIN = 1.2  # > tcpdump's 1 s libpcap buffer timeout
DEFAULT_MAX_BYTES = 200 * 1000**2
MB = 1000**2  # tcpdump -C counts in millions of bytes
SPARE = 64 * MB  # left free besides the capture's cap
_IFACE = re.compile(r"^(any|[A-Za-z0-9_.:@-]{1,15})$")
NO_CAP_HELP = (
    "capturing needs the CAP_NET_RAW capability: run fieldtrace as root, or grant it to the "
    "capture program with 'setcap cap_net_raw,cap_net_admin+eip {tool}', or run the service "
    "with AmbientCapabilities=CAP_NET_RAW CAP_NET_ADMIN (the packaged fieldtrace.service has it)"
)


# --- BPF filter check at KB load: libpcap's compiler through ctypes (no root, ~1 ms) -------
# (the pcap_open_dead + pcap_compile that scapy's compile_filter does, without importing
# scapy, which costs ~0.9 s: every KB load validates every capture step's filter)


class _BpfProgram(ctypes.Structure):
    _fields_ = [("bf_len", ctypes.c_uint), ("bf_insns", ctypes.c_void_p)]


_libpcap: Any = None
_libpcap_lock = threading.Lock()


def _load_libpcap() -> Any:
    global _libpcap
    with _libpcap_lock:
        if _libpcap is None:
            name = ctypes.util.find_library("pcap")
            try:
                lib = ctypes.CDLL(name or "libpcap.so.0.8")
            except OSError:
                _libpcap = False
                return None
            lib.pcap_open_dead.restype = ctypes.c_void_p
            lib.pcap_open_dead.argtypes = [ctypes.c_int, ctypes.c_int]
            lib.pcap_compile.argtypes = [
                ctypes.c_void_p,
                ctypes.POINTER(_BpfProgram),
                ctypes.c_char_p,
                ctypes.c_int,
                ctypes.c_uint32,
            ]
            lib.pcap_geterr.restype = ctypes.c_char_p
            lib.pcap_geterr.argtypes = [ctypes.c_void_p]
            lib.pcap_freecode.argtypes = [ctypes.POINTER(_BpfProgram)]
            lib.pcap_close.argtypes = [ctypes.c_void_p]
            _libpcap = lib
        return _libpcap or None


def bpf_error(expression: str, linktype: int = 1) -> str | None:
    """libpcap's complaint about a filter expression, or None if it compiles (or no libpcap)."""
    lib = _load_libpcap()
    if lib is None:
        return None  # tcpdump checks it when the step starts
    handle = lib.pcap_open_dead(linktype, 262144)
    if not handle:
        return None
    try:
        prog = _BpfProgram()
        if lib.pcap_compile(handle, ctypes.byref(prog), expression.encode(), 1, 0xFFFFFFFF) != 0:
            return str(lib.pcap_geterr(handle).decode("utf-8", "replace"))
        lib.pcap_freecode(ctypes.byref(prog))
        return None
    finally:
        lib.pcap_close(handle)


# --- options -------------------------------------------------------------------------------


class PcapCaptureOptions(Options):
    interface: str = "any"
    filter: str = ""
    duration: Duration = 60.0
    max_packets: int | None = Field(None, ge=1)
    max_bytes: Size | None = None
    snaplen: int = Field(262144, ge=64, le=262144)
    ring: int | None = Field(None, ge=2, le=1000)
    ring_file_bytes: Size | None = None
    format: Literal["pcap", "pcapng"] = "pcap"
    buffer: Size = 8 * 1024**2
    sip_summary: bool = True

    @field_validator("interface")
    @classmethod
    def _iface(cls, value: str) -> str:
        if not _IFACE.match(value):
            raise ValueError(f'expected an interface name like "eth0" or "any", got {value!r}')
        return value

    @model_validator(mode="after")
    def _consistent(self) -> PcapCaptureOptions:
        if (self.ring is None) != (self.ring_file_bytes is None):
            raise ValueError(
                'ring and ring_file_bytes go together, e.g. ring: 10, ring_file_bytes: "100MB"'
            )
        if self.ring is not None and self.max_bytes is not None:
            raise ValueError(
                "max_bytes stops the capture, a ring keeps the newest ring x ring_file_bytes: "
                "give one of them"
            )
        if self.ring_file_bytes is not None and self.ring_file_bytes % MB:
            raise ValueError(
                'ring_file_bytes is counted in whole MB (1,000,000 bytes), e.g. "10MB"'
            )
        if self.filter:
            err = bpf_error(self.filter, 113 if self.interface == "any" else 1)
            if err:
                raise ValueError(f"filter {self.filter!r} is not a valid BPF expression: {err}")
        return self

    @property
    def byte_cap(self) -> int | None:
        return None if self.ring else (self.max_bytes or DEFAULT_MAX_BYTES)


# --- pcap files --------------------------------------------------------------------------

_MAGIC = {
    b"\xd4\xc3\xb2\xa1": ("<", 1e-6),
    b"\xa1\xb2\xc3\xd4": (">", 1e-6),
    b"\x4d\x3c\xb2\xa1": ("<", 1e-9),
    b"\xa1\xb2\x3c\x4d": (">", 1e-9),
}


def scan_pcap(path: Path, max_bytes: int | None = None, until: float | None = None) -> int:
    """Count whole records in a pcap file, cutting it before the first record that would end
    past ``max_bytes``, has a time stamp after ``until``, or is incomplete. -> records kept."""
    size = path.stat().st_size
    if size < 24:
        return 0
    records = 0
    with open(path, "r+b") as fh:
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            endian, unit = _MAGIC.get(mm[:4], ("<", 1e-6))
            rec = struct.Struct(endian + "IIII")
            limit = min(size, max_bytes) if max_bytes else size
            off = 24
            while off + 16 <= limit:
                sec, frac, incl, _ = rec.unpack_from(mm, off)
                end = off + 16 + incl
                if end > limit or (until is not None and sec + frac * unit > until):
                    break
                off = end
                records += 1
        if off < size:
            fh.truncate(off)
    return records


# --- the collector -------------------------------------------------------------------------

_STATS = {
    "captured": re.compile(r"(\d+) packets? captured"),
    "received": re.compile(r"(\d+) packets? received by filter"),
    "kernel_drops": re.compile(r"(\d+) packets? dropped by kernel"),
    "interface_drops": re.compile(r"(\d+) packets? dropped by interface"),
}
RAW = "tcpdump.raw.pcap"


class _Tcpdump:
    """A running tcpdump: its stderr is read by a thread (readiness, statistics)."""

    def __init__(self, argv: list[str]) -> None:
        self.argv = argv
        self.lines: list[str] = []
        self.stats: dict[str, int] = {}
        self.ready = threading.Event()
        # if the agent dies (SIGKILL, OOM), tcpdump must not run on unbounded: parent-death
        # signal through util-linux setpriv (no preexec_fn in a threaded program)
        setpriv = shutil.which("setpriv")
        launcher = [setpriv, "--pdeathsig", "TERM", "--"] if setpriv else []
        self.proc = subprocess.Popen(
            [*launcher, *argv],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,  # the terminal's Ctrl-C is ours to forward, after draining
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip()
            if len(self.lines) < 1000:
                self.lines.append(line)
            if "listening on" in line:
                self.ready.set()
            for key, rx in _STATS.items():
                m = rx.search(line)
                if m:
                    self.stats[key] = int(m.group(1))
        self.ready.set()

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(sig)

    def stop(self) -> None:
        """SIGINT (tcpdump flushes and prints its statistics); SIGKILL if it hangs."""
        self.signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(5)

    def error(self) -> str:
        lines = [ln for ln in self.lines if ln and "listening on" not in ln]
        return "; ".join(ln.removeprefix("tcpdump: ") for ln in lines[-3:])[:500]


def _permission_problem(text: str) -> bool:
    low = text.lower()
    return "permission" in low or "operation not permitted" in low


class PcapCapture(Collector):
    """Capture packets on this host with tcpdump: bounded, loss-checked, SIP-summarised."""

    name = "pcap.capture"
    transport = "local"
    Options = PcapCaptureOptions
    background_ok = True
    summary = (
        "capture packets on this host (tcpdump) into pcap/pcapng files, with caps and a SIP summary"
    )

    def deadline_for(self, options: Any) -> float:
        return float(options.duration) + DRAIN + 60.0

    def collect(self, ctx: StepContext, device: DeviceInfo, options: PcapCaptureOptions) -> Facts:
        tool = shutil.which("tcpdump") or shutil.which("tcpdump", path="/usr/sbin:/sbin")
        if tool is None:
            raise StepFailed("tcpdump is not installed (Debian: apt-get install tcpdump)")
        editcap = shutil.which("editcap")
        if options.format == "pcapng" and editcap is None:
            raise StepFailed(
                "format pcapng needs editcap (Debian: apt-get install wireshark-common), "
                "or use format: pcap"
            )
        if options.interface != "any" and not Path("/sys/class/net", options.interface).exists():
            known = ", ".join(sorted(os.listdir("/sys/class/net")))
            raise StepFailed(f"interface {options.interface!r} does not exist (here: any, {known})")
        workdir = ctx.sink.root / ctx.sink.prefix
        workdir.mkdir(parents=True, exist_ok=True, mode=0o700)
        need = options.byte_cap or (options.ring or 0) * (options.ring_file_bytes or 0)
        free = shutil.disk_usage(workdir).free
        if free < need + SPARE:
            raise StepFailed(
                f"the capture may write {need / MB:.0f} MB but only {free / MB:.0f} MB are free "
                f"under {ctx.sink.root} (with {SPARE // MB} MB spare for the bundle); lower "
                "max_bytes (or ring x ring_file_bytes) or free some space"
            )
        argv = self._argv(tool, options, workdir / RAW)
        started_wall = time.time()
        t0 = time.monotonic()
        try:
            td = _Tcpdump(argv)
        except OSError as exc:
            raise StepFailed(f"cannot run {tool}: {exc.strerror or exc}") from exc
        if not td.ready.wait(min(15.0, max(ctx.remaining(), 1.0))) or td.proc.poll() is not None:
            td.stop()
            err = td.error() or f"exit status {td.proc.returncode}"
            if _permission_problem(err):
                raise StepFailed(f"{err}. {NO_CAP_HELP.format(tool=tool)}")
            raise StepFailed(f"tcpdump did not start: {err}")
        ctx.ready.set()
        try:
            reason, stop_at = self._wait(ctx, options, td, workdir, t0, started_wall)
            if reason in ("duration", "end-of-profile", "cancelled", "deadline"):
                self._drain(td)
        finally:
            td.stop()
        ended_wall = time.time()
        exited_early = reason == "exited"
        if exited_early:
            if options.max_packets and td.stats.get("captured", -1) >= options.max_packets:
                reason = "max_packets"
            else:
                err = td.error() or f"exit status {td.proc.returncode}"
                if _permission_problem(err):
                    raise StepFailed(f"{err}. {NO_CAP_HELP.format(tool=tool)}")
                raise StepFailed(f"tcpdump stopped by itself: {err}")
        raw_files = self._raw_files(workdir, options)
        kept = 0
        for i, raw in enumerate(raw_files):
            newest = i == len(raw_files) - 1
            kept += scan_pcap(
                raw,
                max_bytes=options.byte_cap if newest else None,
                until=stop_at if newest and reason == "duration" else None,
            )
        facts: Facts = {
            "interface": options.interface,
            "filter": options.filter,
            "engine": "tcpdump",
            "stop_reason": reason,
            "started": _iso(started_wall),
            "stopped": _iso(ended_wall if stop_at is None else stop_at),
            "seconds": round((stop_at or ended_wall) - started_wall, 3),
            "packets": kept,
            "packets_captured": td.stats.get("captured"),
            "kernel_drops": td.stats.get("kernel_drops", 0),
            "interface_drops": td.stats.get("interface_drops", 0),
            "bytes": 0,
            "files": [],
        }
        if options.ring and td.stats.get("captured") is not None:
            facts["packets_rotated_out"] = max(0, td.stats["captured"] - kept)
        if options.sip_summary:
            self._sip(ctx, raw_files, facts)
        for i, raw in enumerate(raw_files):
            name = f"capture-{i + 1:03d}" if options.ring else "capture"
            dest = self._finalise(ctx, raw, f"{name}.{options.format}", editcap)
            facts["files"].append(dest.name)
            facts["bytes"] += dest.stat().st_size
        ctx.sink.write_text("capture.log", " ".join(argv) + "\n" + "\n".join(td.lines) + "\n")
        drops = facts["kernel_drops"] + facts["interface_drops"]
        if drops:
            raise StepPartial(
                f"the kernel dropped {drops} packet(s) the capture could not keep up with; "
                "narrow the filter, lower snaplen or raise buffer",
                facts,
            )
        return facts

    @staticmethod
    def _argv(tool: str, options: PcapCaptureOptions, out: Path) -> list[str]:
        argv = [tool, "-i", options.interface, "-n", "-U", "-s", str(options.snaplen)]
        argv += ["-B", str(max(1, options.buffer // 1024)), "-w", str(out)]
        if os.geteuid() == 0:  # tcpdump would switch to user tcpdump, who cannot write here
            argv += ["-Z", pwd.getpwuid(0).pw_name]
        if options.max_packets:
            argv += ["-c", str(options.max_packets)]
        if options.ring and options.ring_file_bytes:
            argv += ["-C", str(options.ring_file_bytes // MB), "-W", str(options.ring)]
        if options.filter:
            argv += ["--", options.filter]
        return argv

    @staticmethod
    def _wait(
        ctx: StepContext,
        options: PcapCaptureOptions,
        td: _Tcpdump,
        workdir: Path,
        t0: float,
        started_wall: float,
    ) -> tuple[str, float | None]:
        """Poll until a stop condition; -> (reason, wall-clock stop time or None)."""
        end = t0 + options.duration
        hard = max(t0 + 1.0, ctx.deadline - DRAIN - 15.0)  # leave time to drain and summarise
        cap = options.byte_cap
        raw = workdir / RAW
        next_ask = next_report = 0.0
        while True:
            now = time.monotonic()
            if td.proc.poll() is not None:
                return "exited", None
            if ctx.cancel.is_set():
                return "cancelled", time.time()
            if ctx.finish.is_set():
                return "end-of-profile", time.time()
            if now >= end:
                return "duration", started_wall + options.duration
            if now >= hard:
                return "deadline", time.time()
            if cap is not None:
                with contextlib.suppress(OSError):
                    if raw.stat().st_size >= cap:
                        return "max_bytes", None
            if now >= next_ask:  # tcpdump prints its counters on SIGUSR1: the live count
                td.signal(signal.SIGUSR1)
                next_ask, next_report = now + 1.0, now + 0.2
            if now >= next_report:
                next_report = next_ask + 1.0
                with contextlib.suppress(OSError):
                    ctx.progress({"packets": td.stats.get("captured", 0), "bytes": _size(workdir)})
            time.sleep(min(0.05, max(0.0, end - now)))

    @staticmethod
    def _drain(td: _Tcpdump) -> None:
        """Give libpcap time to hand over the packets still in its kernel buffer."""
        limit = time.monotonic() + DRAIN
        while time.monotonic() < limit and td.proc.poll() is None:
            time.sleep(0.05)

    @staticmethod
    def _raw_files(workdir: Path, options: PcapCaptureOptions) -> list[Path]:
        if not options.ring:
            raw = workdir / RAW
            return [raw] if raw.exists() else []
        files = [p for p in workdir.glob(RAW + "*") if p.name[len(RAW) :].isdigit()]
        return sorted(files, key=lambda p: (p.stat().st_mtime_ns, p.name))

    @staticmethod
    def _finalise(ctx: StepContext, raw: Path, name: str, editcap: str | None) -> Path:
        dest = ctx.sink.reserve(name)
        if name.endswith(".pcapng"):
            assert editcap is not None
            proc = subprocess.run(
                [editcap, "-F", "pcapng", str(raw), str(dest)],
                capture_output=True,
                timeout=max(30.0, ctx.remaining()),
            )
            if proc.returncode != 0:
                raise StepFailed(f"editcap could not write pcapng: {proc.stderr.decode()[:300]}")
            raw.unlink()
        else:
            os.replace(raw, dest)
        return dest

    @staticmethod
    def _sip(ctx: StepContext, files: list[Path], facts: Facts) -> None:
        import json

        from collectors.sip import read_sip, render_text, summarise

        messages, complete = read_sip(files, deadline=ctx.deadline - 5.0)
        if not messages:
            return
        summary = summarise(messages, complete)
        ctx.sink.write_text("sip-summary.json", json.dumps(summary, indent=1) + "\n")
        ctx.sink.write_text("sip-summary.txt", render_text(summary))
        c = summary["counts"]
        facts["sip"] = {
            k: c[k]
            for k in ("calls", "completed", "failed", "answered_no_bye", "no_final_response")
        } | {"by_final_code": c["by_final_code"], "messages": c["messages"]}


def _size(workdir: Path) -> int:
    return sum(p.stat().st_size for p in workdir.glob(RAW + "*"))


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
