"""KB step keys for background captures: `background` and `until`, checked at load."""

from __future__ import annotations

import pytest

from agent.errors import ValidationFailed
from agent.kb import parse_kb

HEAD = "type: box\ntitle: t\nprofiles:\n  p:\n    title: t\n    steps:\n"


def _kb(step: str) -> str:
    return HEAD + f"      - {step}\n      - {{id: b, collector: local.command, command: 'true'}}\n"


def test_background_capture_defaults_to_end_of_profile() -> None:
    t = parse_kb(_kb("{id: a, collector: pcap.capture, background: true, filter: 'udp'}"), "k")
    a, b = t.profiles["p"].steps
    assert (a.background, a.until) == (True, "end-of-profile")
    assert (b.background, b.until) == (False, None)
    assert "background" not in a.options_dict()  # a runner key, not a collector option


@pytest.mark.parametrize(
    ("step", "problem"),
    [
        ("{id: a, collector: pcap.capture, background: yes please}", "expected true or false"),
        ("{id: a, collector: pcap.capture, until: duration}", "only for background steps"),
        ("{id: a, collector: pcap.capture, background: true, until: forever}", "expected one of"),
        ("{id: a, collector: local.file, path: /x, background: true}", "cannot run in the"),
        ("{id: a, collector: pcap.capture, filter: 'udp prot 53'}", "not a valid BPF"),
    ],
)
def test_bad_background_keys_are_refused(step: str, problem: str) -> None:
    with pytest.raises(ValidationFailed) as exc:
        parse_kb(_kb(step), "kb/box.yaml")
    assert "kb/box.yaml: profiles.p.steps[0]" in str(exc.value)
    assert problem in str(exc.value)
