"""ssh.* option validation as the KB loader sees it, and the pcap stream cutter."""

from __future__ import annotations

import random
import struct
from pathlib import Path

import pytest

from agent.errors import ValidationFailed
from agent.kb import parse_kb
from collectors.base import ArtifactSink, StepFailed
from collectors.ssh import PcapStream, SshCapture, SshCaptureOptions


def _kb(step: str) -> None:
    parse_kb(
        f"type: t\ntitle: t\nprofiles:\n  p:\n    title: p\n    steps:\n      - {step}\n", "t.yaml"
    )


@pytest.mark.parametrize(
    ("step", "expect"),
    [
        ("{id: f, collector: ssh.file, path: var/log/x}", "steps[0].path: expected an absolute"),
        ("{id: f, collector: ssh.file, path: /x, since: yesterday}", "steps[0].since"),
        ("{id: c, collector: ssh.command, command: '  '}", "command is empty"),
        ("{id: c, collector: ssh.command, command: x, timout: 5s}", "timout: unknown key"),
        ("{id: t, collector: ssh.capture, interface: 'eth0; reboot'}", "steps[0].interface"),
        ("{id: t, collector: ssh.capture, duration: ninety}", "steps[0].duration"),
        ("{id: t, collector: ssh.capture, max_packets: 0}", "steps[0].max_packets"),
        ("{id: c, collector: ssh.command, command: x, output: ../x}", "steps[0].output"),
        ("{id: t, collector: ssh.capture, output: a/b.pcap}", "steps[0].output"),
    ],
)
def test_bad_ssh_options_are_refused_when_the_kb_loads(step: str, expect: str) -> None:
    with pytest.raises(ValidationFailed) as e:
        _kb(step)
    assert expect in str(e.value)


def test_capture_command_quotes_the_filter() -> None:
    opts = SshCaptureOptions.model_validate(
        {
            "filter": "udp port 5060 and host 10.0.0.1'; rm -rf /",
            "interface": "eth0",
            "max_packets": 5,
        }
    )
    cmd = SshCapture.command(opts)
    assert "exec tcpdump -U -n -w - -i eth0 -s 262144 -c 5 -- " in cmd
    assert cmd.endswith("""'udp port 5060 and host 10.0.0.1'"'"'; rm -rf /'""")


def _pcap(n: int, endian: str = "<") -> tuple[bytes, list[int]]:
    rnd = random.Random(n)
    head = struct.pack(endian + "IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    recs, sizes = [], []
    for i in range(n):
        size = rnd.randint(40, 1500)
        recs.append(struct.pack(endian + "IIII", i, 0, size, size) + bytes(size))
        sizes.append(16 + size)
    return head + b"".join(recs), sizes


@pytest.mark.parametrize("endian", ["<", ">"])
def test_pcap_stream_keeps_whole_records_up_to_the_caps(tmp_path: Path, endian: str) -> None:
    data, sizes = _pcap(200, endian)
    cap = 24 + sum(sizes[:57]) + 10  # room for 57 records and a bit of the 58th
    sink = ArtifactSink(tmp_path, "d/s")
    with sink.open("c.pcap", cap) as w:
        stream = PcapStream(w, cap, None)
        rnd = random.Random(1)
        pos = 0
        while pos < len(data) and stream.feed(data[pos : pos + (k := rnd.randint(1, 5000))]):
            pos += k
    assert stream.full == "max_bytes" and stream.packets == 57
    assert (tmp_path / "d/s/c.pcap").read_bytes() == data[: 24 + sum(sizes[:57])]
    with sink.open("p.pcap", 10**9) as w:
        stream = PcapStream(w, 10**9, 3)
        assert stream.feed(data[:100]) is True
        assert stream.feed(data[100:]) is False
    assert stream.full == "max_packets" and stream.packets == 3
    assert (tmp_path / "d/s/p.pcap").read_bytes() == data[: 24 + sum(sizes[:3])]


def test_pcap_stream_refuses_what_is_not_a_pcap(tmp_path: Path) -> None:
    sink = ArtifactSink(tmp_path, "d/s")
    with sink.open("c.pcap") as w, pytest.raises(StepFailed, match="pcap"):
        PcapStream(w, 1000, None).feed(b"tcpdump: some text on stdout instead\n")
