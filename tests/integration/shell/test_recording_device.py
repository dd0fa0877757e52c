"""A hostile, recording SSH device: whatever fieldtrace runs against it, nothing outside
the KB type's read-only allow-list ever reaches it (issue 10 §3), and a device that serves
one shell per connection gets every ssh.shell step over that one shell (§6).

The simulator (tests/fixtures/cli_sim.py) records each line typed at its CLI, each key
typed at a pager prompt and each exec request; in hostile mode it baits the client with a
fake pager prompt after every output, questions like "Proceed with reload? [confirm]" and
prompt-like lines in the output."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from agent import readonly
from agent.kb import KbType, load_kb, load_kb_file
from tests.conftest import Cli
from tests.e2e.helpers import manifest_of, open_with_stock_tools
from tests.fixtures.cli_sim import CliSimulator
from tests.integration.shell.conftest import PASSWORD, USER

pytestmark = [pytest.mark.integration, pytest.mark.e2e]


def site(
    cli: Cli, sim: CliSimulator, ktype: str = "sip-gateway", kbdir: Path | None = None
) -> None:
    secret = cli.cwd / "gw.password"
    secret.write_text(PASSWORD + "\n")
    kb = f'[kb]\npaths = ["{kbdir}"]\n' if kbdir else ""
    (cli.cwd / "fieldtrace.toml").write_text(
        textwrap.dedent(
            f"""\
            [site]
            company = "ACME Telecom"
            contract = "TS-2024-117"
            {kb}
            [[devices]]
            name = "gw1"
            type = "{ktype}"
            address = "127.0.0.1"
            ssh = {{ port = {sim.port}, username = "{USER}", timeout = "5s", PASSWORD }}
            """
        ).replace("PASSWORD", f'password = {{ file = "{secret}" }}')
    )
    (cli.home / "known_hosts").write_text(sim.known_hosts_line() + "\n")


def sent_by_kb(t: KbType, profile: str) -> set[str]:
    """Every line the KB type's profile may type: its on_open and its ssh.shell commands."""
    lines = set(t.ssh.on_open if t.ssh else ())
    for s in t.profiles[profile].steps:
        if s.collector == "ssh.shell":
            lines.update(s.options.command_list())  # type: ignore[attr-defined]
    return lines


def assert_only_allowed_reached(sim: CliSimulator, t: KbType, expected: set[str]) -> None:
    assert sim.received, "the device received nothing: the test proves nothing"
    for kind, text in sim.received:
        if kind == "line":
            assert text in expected, f"the device received {text!r}, which the KB never lists"
            slot = "ssh.on_open" if t.ssh and text in t.ssh.on_open else "ssh.shell"
            t.read_only.check(slot, text)  # raises if it is not on the allow-list
        elif kind == "key":
            readonly.check_pager_answer(text)
        elif kind == "exec":
            t.read_only.check("ssh.command", text)
        else:
            raise AssertionError(f"the device received {kind} data: {text!r}")


@pytest.mark.parametrize("profile", sorted(load_kb().get("sip-gateway").profiles))
def test_shipped_profiles_send_only_allowed_lines_to_a_hostile_device(
    cli: Cli, simulator: object, profile: str, tmp_path: Path
) -> None:
    sim: CliSimulator = simulator(privileged=True, hostile=True)  # type: ignore[operator]
    site(cli, sim)
    proc = cli.run("collect", "gw1", "-p", profile, "--json", "-o", str(tmp_path / "b"))
    assert proc.returncode in (0, 1), proc.stderr  # SNMP steps are skipped, not run
    t = load_kb().get("sip-gateway")
    expected = sent_by_kb(t, profile)
    assert_only_allowed_reached(sim, t, expected)
    typed = [text for kind, text in sim.received if kind == "line"]
    assert set(typed) == expected  # every listed command did reach it, nothing else
    assert ("key", " ") in sim.received  # the bait was answered with the pager answer only
    top = open_with_stock_tools(
        Path(json.loads(proc.stdout)["bundle"]), cli.home / "identity.txt", tmp_path / "o"
    )
    shell_steps = [s for s in manifest_of(top)["steps"] if s["collector"] == "ssh.shell"]
    assert shell_steps and all(s["status"] == "ok" for s in shell_steps), shell_steps


def test_a_site_kb_with_explicit_allows_over_exec_and_shell(
    cli: Cli, simulator: object, tmp_path: Path
) -> None:
    sim: CliSimulator = simulator(privileged=True, hostile=True, exec_ok=True)  # type: ignore[operator]
    kbdir = cli.cwd / "kb"
    kbdir.mkdir()
    (kbdir / "edge.yaml").write_text(
        textwrap.dedent(
            """\
            type: edge
            title: Edge router (Cisco-style CLI, exec channels too)
            read_only: {cli: cisco, allow: ["ping * repeat 2", "| utility egrep ..."]}
            ssh: {mode: shell, prompt: '[\\w.-]+[#>] ?$', on_open: ["term len 0"],
                  failure_strings: ["% Invalid input"]}
            profiles:
              default:
                title: t
                steps:
                  - {id: v, collector: ssh.command, command: "show version"}
                  - {id: c, collector: ssh.shell, commands: ["sh ver", "sh run | i hostname",
                                                            "ping 192.0.2.1 repeat 2"]}
                  - {id: u, collector: ssh.shell, command: "show interfaces | utility egrep up"}
            """
        )
    )
    site(cli, sim, "edge", kbdir)
    proc = cli.run("collect", "gw1", "--json", "-o", str(tmp_path / "b"))
    assert proc.returncode in (0, 1), proc.stderr
    t = load_kb_file(kbdir / "edge.yaml")
    assert_only_allowed_reached(sim, t, sent_by_kb(t, "default"))
    assert ("exec", "show version") in sim.received


def test_several_shell_steps_share_one_shell_on_a_one_shell_device(
    cli: Cli, simulator: object, tmp_path: Path
) -> None:
    sim: CliSimulator = simulator(privileged=True, shells_per_connection=1)  # type: ignore[operator]
    site(cli, sim)
    proc = cli.run("collect", "gw1", "--json", "-o", str(tmp_path / "b"))
    assert proc.returncode in (0, 1), proc.stderr
    top = open_with_stock_tools(
        Path(json.loads(proc.stdout)["bundle"]), cli.home / "identity.txt", tmp_path / "o"
    )
    steps = [s for s in manifest_of(top)["steps"] if s["collector"] == "ssh.shell"]
    assert len(steps) >= 4
    assert all(s["status"] == "ok" for s in steps), [(s["id"], s["error"]) for s in steps]
    assert sim.connections == 1 and sim.shells == 1
    assert not [r for r in sim.received if r[0] == "silent"]
    # on_open ran once, on the one shell
    assert [x for k, x in sim.received if k == "line"].count("terminal length 0") == 1
