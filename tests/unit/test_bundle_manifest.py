"""agent.manifest: escaping for the terminal, the member path rules, strict JSON."""

from __future__ import annotations

import pytest

from agent.manifest import ManifestInvalid, member_path_problem, parse_manifest, printable


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("plain text, café, 東京", "plain text, café, 東京"),  # printable Unicode stays
        ("\x1b[2J\x1b]0;title\x07", "\\x1b[2J\\x1b]0;title\\x07"),
        ("a\rb\nc\td", "a\\x0db\\x0ac\\x09d"),
        ("\x9b31m", "\\x9b31m"),  # the one-byte CSI
        ("invoice\u202egnp.exe", "invoice\\u202egnp.exe"),  # right-to-left override
        ("line\u2028break", "line\\u2028break"),
        ("bad\udcffbyte", "bad\\udcffbyte"),  # what surrogateescape makes of a stray byte
    ],
)
def test_printable_escapes_what_a_terminal_acts_on(raw: str, shown: str) -> None:
    assert printable(raw) == shown


@pytest.mark.parametrize(
    ("rel", "why"),
    [
        ("local/hello/output.txt", None),
        ("local/conf/files/root/.bashrc", None),
        ("attachments/my_notes+v2@site=1.txt", None),
        ("", "is empty"),
        ("/etc/passwd", "is absolute"),
        ("a//b", "has an empty component"),
        ("a/b/", "has an empty component"),
        ("a/../b", "has a '..' component"),
        ("./a", "has a '.' component"),
        ("a\\b", "characters outside"),
        ("a\x00b", "characters outside"),
        ("caf\u00e9", "characters outside"),
        ("a b", "characters outside"),
        ("a/" + "x" * 256, "component longer than 255"),
        ("/".join(["abcdefgh"] * 500), "longer than 4096 bytes"),
    ],
)
def test_member_path_rules(rel: str, why: str | None) -> None:
    got = member_path_problem(rel)
    if why is None:
        assert got is None
    else:
        assert got is not None and why in got


def test_manifest_json_is_strict() -> None:
    ok = b'{"format": "fieldtrace.bundle/1", "steps": []}'
    assert parse_manifest(ok)[0].members() == {}
    for raw, why in [
        (b'{"format": "fieldtrace.bundle/1", "steps": [], "steps": []}', "appears twice"),
        (b'{"format": "fieldtrace.bundle/1", "steps": [], "x": NaN}', "NaN is not a JSON"),
        (b"[" * 100_000, "nested too deeply"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b"[]", "expected a JSON object"),
        (b"{" + b" " * (4 * 1024 * 1024) + b"}", "at most 4194304"),
    ]:
        with pytest.raises(ManifestInvalid) as exc:
            parse_manifest(raw)
        assert why in str(exc.value)
