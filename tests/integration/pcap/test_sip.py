"""SIP calls from sipp (uac -> uas on loopback) while pcap.capture runs: the trace holds every
INVITE/180/200/ACK/BYE sipp counted, tshark reads it the same way, and the SIP summary's call
count and outcomes match sipp's statistics."""

from __future__ import annotations

import csv
import json
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from collectors.base import StepContext
from tests.fixtures.ports import free_udp_port
from tests.integration.pcap.conftest import run_capture

pytestmark = pytest.mark.integration
CALLS = 25


def _bound(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


@pytest.fixture
def sipp_uas(tmp_path: Path, tools: dict[str, str]) -> Iterator[int]:
    """sipp's built-in UAS on a free port of 127.0.0.1 (INVITE -> 180, 200; BYE -> 200)."""
    port = free_udp_port()
    wd = tmp_path / "uas"
    wd.mkdir()
    proc = subprocess.Popen(
        [
            tools["sipp"],
            "-sn",
            "uas",
            "-i",
            "127.0.0.1",
            "-p",
            str(port),
            "-mi",
            "127.0.0.1",
            "-mp",
            str(free_udp_port()),
            "-nostdin",
        ],
        cwd=wd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not _bound(port):
            assert proc.poll() is None, "sipp uas exited"
            assert time.monotonic() < deadline, "sipp uas did not bind its port"
            time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _last_row(path: Path) -> dict[str, str]:
    rows = list(csv.reader(path.read_text().splitlines(), delimiter=";"))
    return dict(zip(rows[0], rows[-1], strict=False))


def _sipp_messages(counts: dict[str, str]) -> Counter[str]:
    """INVITE/ACK/BYE sent and 1xx/2xx received, retransmissions included."""
    out: Counter[str] = Counter()
    for col, value in counts.items():
        parts = col.split("_")
        if len(parts) == 3 and parts[2] in ("Sent", "Recv", "Retrans") and value.isdigit():
            out[parts[1]] += int(value)
    return +out


def test_trace_holds_every_message_sipp_counted_and_the_summary_matches(
    tmp_path: Path, sipp_uas: int, tools: dict[str, str]
) -> None:
    uac_dir = tmp_path / "uac"
    uac_dir.mkdir()
    uac: dict[str, subprocess.CompletedProcess[str]] = {}

    def calls(ctx: StepContext) -> None:
        uac["proc"] = subprocess.run(
            [
                tools["sipp"],
                "-sn",
                "uac",
                f"127.0.0.1:{sipp_uas}",
                "-i",
                "127.0.0.1",
                "-p",
                str(free_udp_port()),
                "-mi",
                "127.0.0.1",
                "-mp",
                str(free_udp_port()),
                "-m",
                str(CALLS),
                "-r",
                "50",
                "-d",
                "200",
                "-nostdin",
                "-timeout",
                "20",
                "-trace_counts",
                "-trace_stat",
            ],
            cwd=uac_dir,
            capture_output=True,
            text=True,
            timeout=60,
        )

    cap = run_capture(
        tmp_path / "stage",
        {"interface": "lo", "filter": f"udp port {sipp_uas}", "duration": "30s"},
        calls,
        finish=True,
    )
    assert uac["proc"].returncode == 0, uac["proc"].stdout[-2000:]
    assert cap.error is None, cap.error
    (counts_csv,) = uac_dir.glob("*_counts.csv")
    (stat_csv,) = [p for p in uac_dir.glob("uac_*_.csv")]
    expected = _sipp_messages(_last_row(counts_csv))
    stats = _last_row(stat_csv)
    assert expected["INVITE"] == CALLS and expected["BYE"] == CALLS
    assert int(stats["SuccessfulCall(C)"]) == CALLS

    # the collector's own counts
    sip = cap.facts["sip"]
    assert sip["messages"] == dict(expected)
    assert sip["calls"] == int(stats["TotalCallCreated"]) == CALLS
    assert sip["completed"] == int(stats["SuccessfulCall(C)"])
    assert sip["failed"] == int(stats["FailedCall(C)"]) == 0
    assert sip["by_final_code"] == {"200": CALLS}

    # tshark reads the trace and sees the same messages
    (pcap,) = cap.files()
    proc = subprocess.run(
        [
            tools["tshark"],
            "-r",
            str(pcap),
            "-d",
            f"udp.port=={sipp_uas},sip",
            "-Y",
            "sip",
            "-T",
            "fields",
            "-e",
            "sip.Method",
            "-e",
            "sip.Status-Code",
            "-e",
            "sip.CSeq.method",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    seen: Counter[str] = Counter()
    for line in proc.stdout.splitlines():
        method, code, _ = [*line.split("\t"), "", "", ""][:3]
        seen[method or code] += 1
    assert seen == expected

    # the summary artifacts: one entry per call with its ladder and timings
    summary = json.loads(cap.artifact("sip-summary.json").read_text())
    text = cap.artifact("sip-summary.txt").read_text()
    assert summary["counts"]["calls"] == CALLS
    assert len({c["call_id"] for c in summary["calls"]}) == CALLS
    for call in summary["calls"]:
        assert [m["msg"].split()[0] for m in call["messages"]] == [
            "INVITE",
            "180",
            "200",
            "ACK",
            "BYE",
            "200",
        ]
        assert call["state"] == "completed" and call["final_code"] == 200
        assert 0 <= call["setup_s"] < 1
        assert 0.15 < call["duration_s"] < 3  # sipp -d 200 ms between ACK and BYE
        assert call["call_id"] in text
        assert call["from"].startswith("sipp <sip:sipp@127.0.0.1")
    assert f"{CALLS} call(s): {CALLS} completed, 0 failed" in text
