"""pcap.capture on lo with real tcpdump: every cap stops or rotates exactly as configured,
nothing sent before the stop is lost, tshark opens the files, and a missing CAP_NET_RAW
says how to grant it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from collectors.base import StepContext, StepFailed
from tests.conftest import REPO
from tests.fixtures.tshark import tshark_count
from tests.integration.pcap.conftest import UdpTarget, read_seqs, run_capture

pytestmark = pytest.mark.integration


def _tshark_count(tools: dict[str, str], path: Path) -> int:
    return tshark_count(path, tools["tshark"])


def test_duration_covers_exactly_the_window_and_keeps_the_last_packets(
    tmp_path: Path, udp: UdpTarget, tools: dict[str, str]
) -> None:
    def during(ctx: StepContext) -> None:
        end = time.monotonic() + 2.5  # keeps sending past the 1.5 s duration
        while time.monotonic() < end:
            udp.send(5)
            time.sleep(0.02)

    cap = run_capture(
        tmp_path,
        {"interface": "lo", "filter": f"udp dst port {udp.port}", "duration": "1.5s"},
        during,
    )
    assert cap.error is None, cap.error
    f = cap.facts
    assert f["stop_reason"] == "duration"
    assert f["seconds"] == 1.5
    (pcap,) = cap.files()
    got = read_seqs(pcap)
    start = time.mktime(time.strptime(f["started"][:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
    start += int(f["started"][20:23]) / 1000
    stop = start + 1.5
    # "started" is given to the millisecond (truncated), so the real window may end up to
    # 1 ms after ``stop``; a packet past that was kept wrongly
    assert all(ts <= stop + 0.001 for ts, _ in got), "packets after the duration were kept"
    seqs = {s for _, s in got}
    # every packet sent inside the window is there, including those in its last 100 ms
    # (they are still in libpcap's kernel buffer when the duration ends)
    inside = [i for i, t in enumerate(udp.sent_at) if start + 0.05 < t < stop - 0.01]
    late = [i for i in inside if udp.sent_at[i] > stop - 0.1]
    assert inside and late
    assert set(inside) <= seqs, sorted(set(inside) - seqs)[:10]
    assert f["packets"] == len(got) == _tshark_count(tools, pcap)
    assert f["kernel_drops"] == 0


def test_max_packets_stops_at_exactly_that_many(
    tmp_path: Path, udp: UdpTarget, tools: dict[str, str]
) -> None:
    cap = run_capture(
        tmp_path,
        {
            "interface": "lo",
            "filter": f"udp dst port {udp.port}",
            "max_packets": 1234,
            "duration": "20s",
        },
        lambda ctx: udp.send(3000),
    )
    assert cap.error is None, cap.error
    assert cap.facts["stop_reason"] == "max_packets"
    assert cap.seconds < 10
    (pcap,) = cap.files()
    assert [s for _, s in read_seqs(pcap)] == list(range(1234))
    assert cap.facts["packets"] == 1234 == _tshark_count(tools, pcap)


def test_max_bytes_cuts_at_the_last_whole_packet_under_the_cap(
    tmp_path: Path, udp: UdpTarget, tools: dict[str, str]
) -> None:
    cap = run_capture(
        tmp_path,
        {
            "interface": "lo",
            "filter": f"udp dst port {udp.port}",
            "max_bytes": "100KB",
            "duration": "20s",
        },
        lambda ctx: udp.send(3000, size=100),
    )
    assert cap.error is None, cap.error
    assert cap.facts["stop_reason"] == "max_bytes"
    (pcap,) = cap.files()
    size = pcap.stat().st_size
    record = 16 + 42 + 100
    assert 100_000 - record < size <= 100_000
    assert (size - 24) % record == 0
    n = (size - 24) // record
    assert [s for _, s in read_seqs(pcap)] == list(range(n))
    assert cap.facts["packets"] == n == _tshark_count(tools, pcap)
    assert cap.facts["bytes"] == size


def test_ring_keeps_the_newest_files_of_the_configured_size(
    tmp_path: Path, udp: UdpTarget, tools: dict[str, str]
) -> None:
    def during(ctx: StepContext) -> None:
        for _ in range(60):  # 6000 x 1 KB: about 6.3 MB through a ring of 3 x 1 MB
            udp.send(100, size=1000)
            time.sleep(0.002)
        time.sleep(0.3)

    cap = run_capture(
        tmp_path,
        {
            "interface": "lo",
            "filter": f"udp dst port {udp.port}",
            "ring": 3,
            "ring_file_bytes": "1MB",
            "duration": "30s",
            "format": "pcapng",
        },
        during,
        finish=True,
    )
    assert cap.error is None, cap.error
    assert cap.facts["stop_reason"] == "end-of-profile"
    files = cap.files(".pcapng")
    assert [p.name for p in files] == [
        "capture-001.pcapng",
        "capture-002.pcapng",
        "capture-003.pcapng",
    ]
    seqs = [s for p in files for _, s in read_seqs(p)]
    # the newest files, oldest first, with nothing missing in between
    assert seqs == list(range(seqs[0], 6000)), (seqs[0], seqs[-1], len(seqs))
    assert seqs[0] > 0  # older files were rotated out
    assert cap.facts["packets"] == len(seqs)
    assert cap.facts["packets_rotated_out"] == 6000 - len(seqs)
    per_file = [len(read_seqs(p)) for p in files]
    record = 16 + 42 + 1000  # tcpdump rotates once a file is past 1,000,000 bytes
    for n in per_file[:2]:
        assert 1_000_000 < 24 + n * record <= 1_000_000 + record
    for p in files:
        assert p.read_bytes()[:4] == b"\n\r\r\n"  # pcapng section header
        assert _tshark_count(tools, p) == len(read_seqs(p))


def test_bad_filter_and_options_are_refused_when_the_kb_loads() -> None:
    from collectors.pcap import PcapCapture

    for bad, msg in [
        ({"filter": "udp prot 5060"}, "not a valid BPF expression"),
        ({"ring": 3}, "ring and ring_file_bytes go together"),
        ({"ring": 3, "ring_file_bytes": "1MB", "max_bytes": "5MB"}, "give one of them"),
        ({"ring": 3, "ring_file_bytes": "1500KB"}, "whole MB"),
        ({"interface": "eth0; rm -rf /"}, "interface name"),
    ]:
        with pytest.raises(ValueError, match=msg):
            PcapCapture.Options.model_validate(bad)


def test_missing_interface_fails_with_the_interfaces_that_exist(tmp_path: Path) -> None:
    cap = run_capture(tmp_path, {"interface": "nosuch0", "duration": "1s"})
    assert isinstance(cap.error, StepFailed)
    assert "'nosuch0' does not exist" in str(cap.error) and "lo" in str(cap.error)


def test_without_cap_net_raw_the_message_says_how_to_grant_it(
    tmp_path: Path, tools: dict[str, str]
) -> None:
    """The CLI run with CAP_NET_RAW/CAP_NET_ADMIN dropped from its bounding set."""
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FIELDTRACE_")}
    env.update(FIELDTRACE_HOME=str(home), PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [
            tools["setpriv"],
            "--inh-caps=-all",
            "--bounding-set=-net_raw,-net_admin",
            "--",
            sys.executable,
            "-m",
            "agent",
            "capture",
            "-i",
            "lo",
            "-d",
            "2s",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 1, proc.stderr
    out = json.loads(proc.stdout)
    (step,) = out["steps"]
    assert step["status"] == "failed"
    assert "setcap cap_net_raw,cap_net_admin+eip" in step["error"]
    assert "AmbientCapabilities=CAP_NET_RAW" in step["error"]
    assert "permission" in step["error"].lower()
    assert out["bundle"] and Path(out["bundle"]).exists()  # the failure is still reported


KILLED_AGENT = """\
import sys, threading, time
from pathlib import Path
from collectors.base import ArtifactSink, DeviceInfo, StepContext
from collectors.pcap import PcapCapture
opts = PcapCapture.Options.model_validate({"interface": "lo", "duration": "10m"})
ctx = StepContext(sink=ArtifactSink(Path(sys.argv[1]), "cap"), deadline=time.monotonic() + 900,
                  cancel=threading.Event())
threading.Thread(target=PcapCapture().collect, args=(ctx, DeviceInfo("l", "t", "a"), opts),
                 daemon=True).start()
ctx.ready.wait(15)
print("ready", flush=True)
time.sleep(600)
"""


def test_a_killed_agent_leaves_no_capture_running(tmp_path: Path) -> None:
    import psutil

    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_AGENT, str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        (td,) = [c for c in psutil.Process(proc.pid).children() if c.name() == "tcpdump"]
        proc.kill()  # SIGKILL: no cleanup code runs in the agent
        proc.wait(10)
        assert td.wait(10) is not None or not td.is_running()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for p in psutil.process_iter(["name", "cmdline"]):
            if p.info["name"] == "tcpdump" and str(tmp_path) in " ".join(p.info["cmdline"] or []):
                p.kill()


@pytest.mark.parametrize("how", ["deadline", "cancelled"])
def test_a_step_deadline_or_a_cancel_stops_it_and_keeps_the_trace(
    tmp_path: Path, udp: UdpTarget, how: str
) -> None:
    def during(ctx: StepContext) -> None:
        udp.send(20)
        if how == "cancelled":
            ctx.cancel.set()  # what the runner does on Ctrl-C

    # a KB deadline of 18 s leaves the capture ~2 s (the rest is kept to drain and summarise)
    cap = run_capture(
        tmp_path,
        {"interface": "lo", "filter": f"udp dst port {udp.port}", "duration": "60s"},
        during,
        deadline=18.0,
    )
    assert cap.error is None, cap.error
    assert cap.facts["stop_reason"] == how
    assert cap.facts["packets"] == 20
    assert cap.seconds < 8


def test_a_cap_larger_than_the_free_space_is_refused_before_capturing(tmp_path: Path) -> None:
    cap = run_capture(tmp_path, {"interface": "lo", "duration": "1s", "max_bytes": "900TB"})
    assert isinstance(cap.error, StepFailed)
    assert "the capture may write 900000000 MB but only" in str(cap.error)
    assert "lower max_bytes" in str(cap.error)
    assert not cap.artifacts
