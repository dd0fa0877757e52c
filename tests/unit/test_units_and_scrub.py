"""Durations, sizes and the scrubber on recorded configs and logs."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from agent.scrub import CHUNK, Scrubber
from collectors.base import parse_duration, parse_size


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("5m", 300),
        ("1.5h", 5400),
        ("250ms", 0.25),
        (12, 12),
        ("7", 7),
    ],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("200MB", 200_000_000),
        ("64KiB", 65536),
        ("1G", 10**9),
        ("1GiB", 2**30),
        (512, 512),
        ("10 kb", 10_000),
    ],
)
def test_sizes(text: object, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("bad", ["ninety", "-5s", "0", True, "5 parsecs"])
def test_bad_durations(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


@pytest.mark.parametrize("bad", ["lots", "-1MB", 0, "1.5.2MB", False])
def test_bad_sizes(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_size(bad)


CASES = [
    # (input line, secret that must go, text that must stay)
    ("password = Sup3rS3cret!", "Sup3rS3cret!", "password = "),
    ('db_password: "quoted pass"', "quoted pass", "db_password: "),
    ('{"api_key": "abcd1234", "user": "bob"}', "abcd1234", '"user": "bob"'),
    ("<Password>xmlsecret</Password>", "xmlsecret", "</Password>"),
    ("enable secret 5 $1$mERr$hx5rVt7rPNoS4wqbXKX7m0", "hx5rVt7rPNoS4wqbXKX7m0", "enable secret 5"),
    (" password 7 0822455D0A16", "0822455D0A16", "password 7"),
    ("username admin privilege 15 secret 0 plainpw", "plainpw", "username admin"),
    ("snmp-server community pUbl1cC0mm RO", "pUbl1cC0mm", " RO"),
    ("rocommunity tbpublic 127.0.0.1", "tbpublic", "127.0.0.1"),
    ("com2sec notConfigUser default s3cr3tcomm", "s3cr3tcomm", "com2sec notConfigUser"),
    ("snmpwalk -v2c -c walkcomm 10.0.0.1", "walkcomm", "10.0.0.1"),
    ("url https://bob:urlpass@host.example/x", "urlpass", "https://bob:"),
    ("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.abc.def", "eyJhbGciOiJIUzI1NiJ9", "Authorization"),
    ('["mysql", "--password", "cmdpw"]', "cmdpw", '"mysql"'),
    ("tacacs-server key 7 045802150C2E", "045802150C2E", "tacacs-server key"),
    ("radius-key = rkey123", "rkey123", "radius-key"),
    ("snmpget -v2c -cgluedcomm 10.0.0.1 sysName.0", "gluedcomm", "sysName.0"),
]


@pytest.mark.parametrize(("line", "secret", "kept"), CASES)
def test_scrub_rules(line: str, secret: str, kept: str) -> None:
    s = Scrubber(keywords=["radius-key"])
    counts: Counter[str] = Counter()
    out = s.scrub_bytes(line.encode() + b"\n", counts).decode()
    assert secret not in out
    assert kept in out
    assert "<scrubbed>" in out
    assert sum(counts.values()) >= 1


def test_ordinary_text_is_untouched() -> None:
    text = (
        b"10353 root /usr/sbin/snmpd -f -Lo -C -c /etc/snmp/snmpd.conf -I -smux\n"
        b"Nov 25 10:00:01 gw1 sipd[12]: INVITE sip:100@pbx from 10.0.0.1 status=200\n"
        b"interface eth0 mtu 1500 rx 1234 tx 5678\nsee http://example.com/path?a=b\n"
    )
    counts: Counter[str] = Counter()
    assert Scrubber().scrub_bytes(text, counts) == text
    assert sum(counts.values()) == 0


def test_literal_values_and_counts() -> None:
    s = Scrubber(literals=["s1te-specific-secret", "abc"])  # too short literals are ignored
    counts: Counter[str] = Counter()
    out = s.scrub_bytes(b"x s1te-specific-secret y s1te-specific-secret abc\n", counts)
    assert out == b"x <scrubbed> y <scrubbed> abc\n"
    assert counts == {"value": 2}


def test_pem_block_across_chunk_boundary_and_binary_files(tmp_path: Path) -> None:
    f = tmp_path / "big.txt"
    pem_body = "".join(f"KEYLINE{i:04d}abcdefghijklmnopqrstuvwxyz0123456789\n" for i in range(200))
    filler = "x" * 99 + "\n"
    head = filler * ((CHUNK - 3000) // 100)
    f.write_text(
        head
        + "-----BEGIN RSA PRIVATE KEY-----\n"
        + pem_body
        + "-----END RSA PRIVATE KEY-----\nafter\n"
    )
    counts = Scrubber().scrub_file(f)
    text = f.read_text()
    assert "KEYLINE" not in text and text.endswith("-----END RSA PRIVATE KEY-----\nafter\n")
    assert counts == {"private_key": 1}
    assert text.startswith(filler)
    binary = tmp_path / "trace.pcap"
    payload = b"\xd4\xc3\xb2\xa1\x00\x00password = visible-in-binary\n"
    binary.write_bytes(payload)
    assert Scrubber().scrub_file(binary) is None
    assert binary.read_bytes() == payload


def test_sink_scrubs_text_on_the_way_in_and_hashes_what_it_keeps(tmp_path: Path) -> None:
    """Text written through the sink is scrubbed as it streams (even across 1 MiB pieces and
    with a PEM key cut into many writes); binary is left alone; digests match the files."""
    import hashlib

    from collectors.base import ArtifactSink

    sink = ArtifactSink(tmp_path, "dev/step", scrubber=Scrubber())
    pcap = b"\xd4\xc3\xb2\xa1\x02\x00\x04\x00" + b"\x00" * 9000 + b"password = in-binary\n"
    sink.write_bytes("trace.pcap", pcap)
    filler = ("2026-11-25 gw1 sipd: call 1 ok\n" * 40000).encode()
    pem = (
        b"-----BEGIN OPENSSH PRIVATE KEY-----\nAAAAsecretbody\n-----END OPENSSH PRIVATE KEY-----\n"
    )
    text = filler + b"enable secret 5 $1$abc$XYZ\n" + filler[:5000] + pem + b"tail\n"
    with sink.open("big.log") as w:
        for i in range(0, len(text), 7):  # many small writes, PEM block split everywhere
            w.write(text[i : i + 7])
    sink.write_text("short.cfg", "snmp-server community s3cr3tComm RO\n")
    by_name = {a.path.rsplit("/", 1)[1]: a for a in sink.artifacts}
    for name, art in by_name.items():
        data = (tmp_path / art.path).read_bytes()
        assert art.written_sha256 == hashlib.sha256(data).hexdigest(), name
        assert art.size == len(data)
    assert by_name["trace.pcap"].binary and not by_name["trace.pcap"].scrubbed_on_write
    assert (tmp_path / by_name["trace.pcap"].path).read_bytes() == pcap
    big = (tmp_path / by_name["big.log"].path).read_bytes()
    assert b"$1$abc$XYZ" not in big and b"AAAAsecretbody" not in big
    assert big.endswith(b"-----END OPENSSH PRIVATE KEY-----\ntail\n")
    assert by_name["big.log"].scrubbed == {"password": 1, "private_key": 1}
    assert by_name["short.cfg"].scrubbed == {"community": 1}
    assert b"s3cr3tComm" not in (tmp_path / by_name["short.cfg"].path).read_bytes()
