"""Scrubbing device-CLI secrets that are not at the start of a line."""

from __future__ import annotations

from collections import Counter

import pytest

from agent.scrub import Scrubber


@pytest.mark.parametrize(
    ("line", "secret"),
    [
        (
            " credentials username 4930123456 password 7 01100F175804575D72 realm x.example",
            "01100F175804575D72",
        ),
        (
            "*Dec  1 08:11:19.259 UTC: %PARSER-5-CFGLOG_LOGGEDCMD: User:admin  logged "
            "command:snmp-server community s3cr3tComm RO 10",
            "s3cr3tComm",
        ),
        ("aaa group server tacacs+ T1 server-private 10.0.0.1 key 7 0822455D0A16", "0822455D0A16"),
    ],
)
def test_cli_secrets_later_in_a_line_are_masked(line: str, secret: str) -> None:
    counts: Counter[str] = Counter()
    out = Scrubber().scrub_bytes(line.encode() + b"\n", counts).decode()
    assert secret not in out and "<scrubbed>" in out
    assert sum(counts.values()) >= 1


def test_words_that_only_contain_the_keys_are_left_alone() -> None:
    text = b"service password-encryption\nno service password-recovery\n"
    assert Scrubber().scrub_bytes(text, Counter()) == text
