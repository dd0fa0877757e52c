"""The CLI end to end with real captures: a background capture in a KB profile covers the
packets a later step sends and is stopped before bundling; `fieldtrace capture` shows a live
counter, and Ctrl-C ends it early and still delivers the bundle."""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import Cli
from tests.e2e.helpers import collect_json, manifest_of, open_with_stock_tools, step, write_site
from tests.integration.pcap.conftest import UdpTarget, read_seqs

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

SENDER = """\
import socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(int(sys.argv[2])):
    s.sendto(struct.pack(">Q", i) + bytes(92), ("127.0.0.1", int(sys.argv[1])))
print("sent", sys.argv[2])
"""


@pytest.mark.parametrize("until", ["end-of-profile", "duration"])
def test_background_capture_covers_the_next_steps_and_stops_before_bundling(
    cli: Cli, udp: UdpTarget, until: str
) -> None:
    sender = cli.cwd / "send.py"
    sender.write_text(SENDER)
    duration = "30s" if until == "end-of-profile" else "3s"
    write_site(
        cli,
        [
            f"{{id: trace, collector: pcap.capture, background: true, until: {until}, "
            f'interface: lo, filter: "udp dst port {udp.port}", duration: {duration}}}',
            f'{{id: send, collector: local.command, command: "{sys.executable} {sender} '
            f'{udp.port} 100"}}',
            '{id: after, collector: local.command, command: "sleep 0.3"}',
        ],
        allow=[f"{sys.executable} {sender} * *"],  # not a read-only default: listed
    )
    out = collect_json(cli, check=0)
    top = open_with_stock_tools(Path(out["bundle"]), cli.home / "identity.txt", cli.cwd / "x")
    m = manifest_of(top)
    trace, send, after = step(m, "trace"), step(m, "send"), step(m, "after")
    assert [s["id"] for s in m["steps"]] == ["trace", "send", "after"]
    assert trace["status"] == send["status"] == after["status"] == "ok"
    assert trace["started"] <= send["started"] and trace["finished"] >= after["finished"]
    facts = trace["facts"]
    seqs = [s for _, s in read_seqs(top / "local" / "trace" / "capture.pcap")]
    assert seqs == list(range(100)) and facts["packets"] == 100
    if until == "end-of-profile":
        assert facts["stop_reason"] == "end-of-profile"
        assert facts["seconds"] < 10  # stopped with the profile, not at its 30 s duration
    else:
        assert facts["stop_reason"] == "duration" and facts["seconds"] == 3.0
    assert [a["path"] for a in trace["artifacts"]] == [
        "local/trace/capture.pcap",
        "local/trace/capture.log",
    ]


def test_kb_refuses_background_on_a_collector_that_cannot(cli: Cli) -> None:
    write_site(cli, ['{id: x, collector: local.command, command: "true", background: true}'])
    proc = cli.run("collect", check=2)
    assert "steps[0].background: local.command cannot run in the background" in proc.stderr


def _staged_capture(home: Path) -> Path | None:
    found = list((home / "staging").glob("*/local/capture/tcpdump.raw.pcap"))
    return found[0] if found and found[0].stat().st_size >= 24 else None


def test_capture_command_counts_live_and_ctrl_c_still_delivers(cli: Cli, udp: UdpTarget) -> None:
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agent",
            "capture",
            "-i",
            "lo",
            "-f",
            f"udp dst port {udp.port}",
            "-d",
            "60s",
            "-t",
            "T-42",
            "--json",
        ],
        cwd=cli.cwd,
        env=cli.env,
        stdout=subprocess.PIPE,
        stderr=slave,
        text=True,
    )
    os.close(slave)
    screen: list[bytes] = []

    def read_terminal() -> None:
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:
                return
            if not data:
                return
            screen.append(data)

    reader = threading.Thread(target=read_terminal, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 20
        while _staged_capture(cli.home) is None:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the capture did not start"
            time.sleep(0.05)
        udp.send(50)
        while b"50 packets" not in b"".join(screen):  # the live counter on the terminal
            assert time.monotonic() < deadline, b"".join(screen)
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
        stdout, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(5)
        os.close(master)
    assert proc.returncode == 0, stdout
    out = json.loads(stdout)
    assert out["interrupted"] is True
    assert out["capture"]["stop_reason"] == "interrupted by user"
    assert out["capture"]["packets"] == 50
    assert b"capturing on lo (Ctrl-C to stop early)" in b"".join(screen)
    top = open_with_stock_tools(Path(out["bundle"]), cli.home / "identity.txt", cli.cwd / "x")
    m = manifest_of(top)
    assert m["job"]["ticket"] == "T-42" and m["job"]["interrupted"] is True
    cap = step(m, "capture")
    assert cap["status"] == "ok" and cap["facts"]["stop_reason"] == "cancelled"
    assert [s for _, s in read_seqs(top / "local" / "capture" / "capture.pcap")] == list(range(50))
