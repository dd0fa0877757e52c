"""The read-only allow-list from the command line: `kb show` says what a type may send,
and a KB (shipped name or new, in a site KB directory) that would change a device is
refused before anything runs."""

from __future__ import annotations

import json

import pytest

from tests.conftest import Cli
from tests.e2e.helpers import write_site

pytestmark = pytest.mark.e2e


def test_kb_show_displays_the_allow_list(cli: Cli) -> None:
    shown = json.loads(cli.run("kb", "show", "sip-gateway", "--json", check=0).stdout)
    ro = shown["read_only"]
    assert ro["cli"] == "cisco" and ro["allow"] == []
    assert ro["slots"]["ssh.shell"]["defaults"] == ["show ..."]
    assert "terminal length|len 0" in ro["slots"]["ssh.on_open"]["defaults"]
    assert ro["slots"]["local.command"]["cli"] == "linux"
    text = cli.run("kb", "show", "sip-gateway", check=0).stdout
    assert "read-only allow-list (read_only.cli: cisco" in text
    assert "refused in any case" in text and "redirect" in text


def test_a_site_kb_lists_what_it_needs_and_kb_show_says_so(cli: Cli) -> None:
    write_site(cli, ['{id: a, collector: local.command, command: "lldpctl -f json"}'],
               allow=["lldpctl -f json"])  # fmt: skip
    shown = json.loads(cli.run("kb", "show", "box", "--json", check=0).stdout)
    assert shown["read_only"]["allow"] == ["lldpctl -f json"]
    assert "lldpctl -f json" in cli.run("kb", "show", "box", check=0).stdout


@pytest.mark.parametrize(
    ("step", "expect"),
    [
        ('{id: a, collector: local.command, command: "ip link set lo down"}', "allow-list"),
        ('{id: a, collector: ssh.command, command: "cat /etc/issue; reboot"}', "';'"),
        ('{id: a, collector: ssh.shell, command: "wri mem"}', "allow-list"),
        ('{id: a, collector: ssh.shell, command: "sh run | redirect flash:x"}', "redirect"),
    ],
)
def test_a_changing_site_kb_stops_collect_before_anything_runs(
    cli: Cli, step: str, expect: str
) -> None:
    write_site(cli, [step])
    proc = cli.run("collect", check=2)
    assert "box.yaml: profiles.default.steps[0]" in proc.stderr and expect in proc.stderr
    assert not (cli.home / "outbox").exists() or not any((cli.home / "outbox").rglob("*.age"))
    assert expect in cli.run("kb", "validate", check=2).stderr


def test_a_site_type_replacing_a_shipped_one_is_checked_too(cli: Cli) -> None:
    write_site(
        cli,
        ['{id: v, collector: ssh.shell, command: "show version"}'],
        ktype="sip-gateway",
    )
    kb = cli.cwd / "kb" / "sip-gateway.yaml"
    kb.write_text(
        kb.read_text().replace("title: Test box", 'title: Test box\nssh: {on_open: ["conf t"]}')
    )
    proc = cli.run("kb", "validate", check=2)
    assert "sip-gateway.yaml: ssh.on_open[0]: 'conf t'" in proc.stderr
