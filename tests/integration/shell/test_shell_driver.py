"""ShellDriver against the device-CLI simulator: prompts, pagers, echo, failures, hangs."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import paramiko
import pytest

from collectors.ssh_shell import DEFAULT_PROMPT, ShellDriver
from tests.fixtures.cli_sim import MOCKED, CliSimulator

pytestmark = pytest.mark.integration
Sim = Callable[..., CliSimulator]
Shell = Callable[[CliSimulator], paramiko.Channel]
RECORDED = MOCKED / "sip-gateway" / "isr4321-cube"
PROMPT = r"[\w.-]+[#>] ?$"  # the shipped sip-gateway KB's prompt


def recorded(command: str) -> str:
    """The recorded output: the driver returns it exactly as the device printed it."""
    return (RECORDED / (command.replace(" ", "_") + ".txt")).read_text()


def logged_in(sim: CliSimulator, shell: Shell, prompt: str = PROMPT) -> ShellDriver:
    driver = ShellDriver(shell(sim), prompt=prompt)
    banner = driver.read_until_prompt(5)
    assert banner.prompt in ("gw1>", "gw1#")
    return driver


def test_banner_ends_at_the_prompt(simulator: Sim, shell: Shell) -> None:
    driver = ShellDriver(shell(simulator()), prompt=DEFAULT_PROMPT)
    reply = driver.read_until_prompt(5)
    assert reply.complete and not reply.timed_out
    assert reply.prompt == "gw1>"
    assert "Authorized access only" in reply.text


@pytest.mark.parametrize("style", ["cisco", "ansi", "bracket"])
def test_pager_prompts_are_answered_and_leave_no_trace(
    simulator: Sim, shell: Shell, style: str
) -> None:
    sim = simulator(pager_style=style)
    driver = logged_in(sim, shell)
    reply = driver.run("show interfaces", 5)
    assert reply.complete
    assert reply.pages == 4 == sim.pager_answers  # 104 lines, 23 per page
    assert reply.text == recorded("show interfaces")  # byte for byte: no junk, no echo


def test_terminal_length_0_turns_paging_off(simulator: Sim, shell: Shell) -> None:
    sim = simulator()
    driver = logged_in(sim, shell)
    assert driver.run("terminal length 0", 5).text == ""
    reply = driver.run("show interfaces", 5)
    assert reply.pages == 0 and sim.pager_answers == 0
    assert reply.text == recorded("show interfaces")


def test_echo_and_trailing_prompt_are_stripped(simulator: Sim, shell: Shell) -> None:
    driver = logged_in(simulator(), shell)
    reply = driver.run("show version", 5)
    assert reply.text.splitlines()[0] == "Cisco IOS XE Software, Version 17.09.04a"
    assert "gw1>" not in reply.text and "show version" not in reply.text.splitlines()[0]
    assert reply.text == recorded("show version")


def test_invalid_input_and_privilege(simulator: Sim, shell: Shell) -> None:
    driver = logged_in(simulator(), shell)
    unknown = driver.run("show sip-ua bogus", 5)
    assert unknown.complete and "% Invalid input detected at '^' marker." in unknown.text
    # user EXEC: the running config is refused; after enable the prompt changes and it works
    refused = driver.run("show running-config", 5)
    assert "% Invalid input" in refused.text
    assert driver.run("enable", 5).prompt == "gw1#"
    config = driver.run("show running-config", 5)
    assert config.prompt == "gw1#"
    assert config.text == recorded("show running-config")


def test_a_hanging_command_times_out_on_time(simulator: Sim, shell: Shell) -> None:
    driver = logged_in(simulator(), shell)
    t0 = time.monotonic()
    reply = driver.run("hang", 1.0)
    took = time.monotonic() - t0
    assert reply.timed_out and not reply.complete
    assert 0.9 <= took < 1.6


def test_cancel_stops_a_read(simulator: Sim, shell: Shell) -> None:
    driver = logged_in(simulator(), shell)
    driver.cancel.set()
    t0 = time.monotonic()
    assert driver.run("hang", 30).timed_out
    assert time.monotonic() - t0 < 0.5


def test_max_bytes_caps_the_output_and_keeps_the_cli_in_step(simulator: Sim, shell: Shell) -> None:
    driver = logged_in(simulator(privileged=True), shell)
    capped = driver.run("show running-config", 5, max_bytes=1000)
    assert capped.truncated and capped.complete
    assert len(capped.text.encode()) <= 1000
    assert capped.text.startswith("Building configuration...")
    # the rest of the output was read and dropped: the next command gets its own answer
    assert driver.run("show sip-ua register status", 5).text == recorded(
        "show sip-ua register status"
    )


def test_the_device_closing_the_session_is_reported(simulator: Sim, shell: Shell) -> None:
    driver = logged_in(simulator(), shell)
    reply = driver.run("exit", 5)
    assert reply.closed and not reply.complete and not reply.timed_out


def test_a_wrong_prompt_pattern_times_out_instead_of_hanging(simulator: Sim, shell: Shell) -> None:
    driver = ShellDriver(shell(simulator()), prompt=r"^router\(config\)#$")
    reply = driver.read_until_prompt(0.5)
    assert reply.timed_out and driver.last_line == "gw1>"


def test_recorded_outputs_are_long_enough_to_page() -> None:
    # the simulator pages at 23 lines: these must span pages for the tests above to mean much
    for name in ("show_interfaces.txt", "show_running-config.txt", "show_logging.txt"):
        assert len((RECORDED / name).read_text().splitlines()) > 50, name
    assert Path(RECORDED / "_banner.txt").is_file()
