"""The ssh.shell collector through the agent's real SSH session against the CLI simulator."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.kb import load_kb
from agent.sessions import DeviceSessions
from agent.settings import Device, SecretRef, Ssh
from collectors.base import ArtifactSink, DeviceInfo, StepContext, StepError, StepPartial
from collectors.ssh_shell import SshShell, SshShellOptions
from tests.fixtures.cli_sim import MOCKED, CliSimulator
from tests.integration.shell.conftest import PASSWORD, USER

pytestmark = pytest.mark.integration
Sim = Callable[..., CliSimulator]
RECORDED = MOCKED / "sip-gateway" / "isr4321-cube"


@dataclass
class Outcome:
    facts: dict[str, Any]
    error: StepError | None
    files: dict[str, str]
    sink: ArtifactSink
    seconds: float

    def statuses(self) -> list[str]:
        return [c["status"] for c in self.facts["commands"]]


@pytest.fixture
def run_step(tmp_path: Path) -> Iterator[Callable[..., Outcome]]:
    """``run_step(sim, options, deadline=30, ssh_hints=None)`` -> what the step produced."""
    opened: list[DeviceSessions] = []
    hints = load_kb().get("sip-gateway").hints()
    secret = tmp_path / "gw.password"
    secret.write_text(PASSWORD + "\n")
    home = tmp_path / "home"
    home.mkdir()

    def run(
        sim: CliSimulator,
        options: dict[str, Any],
        deadline: float = 30.0,
        ssh_hints: dict[str, Any] | None = None,
    ) -> Outcome:
        (home / "known_hosts").write_text(sim.known_hosts_line() + "\n")
        device = Device(
            name=sim.hostname,
            type="sip-gateway",
            address="127.0.0.1",
            ssh=Ssh(port=sim.port, username=USER, password=SecretRef(file=secret), timeout=5),
        )
        sessions = DeviceSessions(device, home)
        opened.append(sessions)
        staging = tmp_path / f"staging-{len(opened)}"
        sink = ArtifactSink(staging, f"{sim.hostname}/step")
        ctx = StepContext(sink, time.monotonic() + deadline, threading.Event(), sessions.get)
        info = DeviceInfo(
            sim.hostname, "sip-gateway", "127.0.0.1", {**hints, "ssh": ssh_hints or hints["ssh"]}
        )
        opts = SshShellOptions.model_validate(options)
        t0 = time.monotonic()
        facts: dict[str, Any] = {}
        error: StepError | None = None
        try:
            facts = SshShell().collect(ctx, info, opts)
        except StepPartial as exc:
            facts, error = exc.facts, exc
        except StepError as exc:
            facts, error = getattr(exc, "facts", {}), exc
        took = time.monotonic() - t0
        files = {a.path.rsplit("/", 1)[1]: (staging / a.path).read_text() for a in sink.artifacts}
        return Outcome(facts, error, files, sink, took)

    try:
        yield run
    finally:
        for s in opened:
            s.close()


def recorded(name: str) -> str:
    return (RECORDED / name).read_text()  # kept as printed: blank lines, trailing spaces


def test_commands_become_one_artifact_each_with_paging_off(
    simulator: Sim, run_step: Callable[..., Outcome]
) -> None:
    sim = simulator(privileged=True)
    out = run_step(sim, {"commands": ["show version", "show running-config", "show interfaces"]})
    assert out.error is None
    assert out.statuses() == ["ok", "ok", "ok"]
    assert sorted(out.files) == [
        "show_interfaces.txt",
        "show_running-config.txt",
        "show_version.txt",
    ]
    assert out.files["show_running-config.txt"] == recorded("show_running-config.txt")
    assert out.files["show_interfaces.txt"] == recorded("show_interfaces.txt")
    # the KB's on_open ("terminal length 0") ran first: no pager prompt had to be answered
    assert sim.pager_answers == 0
    assert [c["pages"] for c in out.facts["commands"]] == [0, 0, 0]
    assert out.facts["commands"][0]["prompt"] == "gw1#"


def test_pager_is_answered_when_the_device_keeps_paging(
    simulator: Sim, run_step: Callable[..., Outcome]
) -> None:
    sim = simulator(pager_style="bracket")
    kb_without_paging_off = {
        "mode": "shell",
        "prompt": r"[\w.-]+[#>] ?$",
        "failure_strings": ["% Invalid input"],
    }
    out = run_step(sim, {"command": "show logging"}, ssh_hints=kb_without_paging_off)
    assert out.error is None
    assert out.facts["commands"][0]["pages"] == 3 == sim.pager_answers
    assert out.files["show_logging.txt"] == recorded("show_logging.txt")


@pytest.mark.parametrize("pager_style", ["cisco", "ansi", "bracket", None])
def test_output_is_kept_as_printed_blank_lines_and_trailing_spaces_included(
    simulator: Sim, run_step: Callable[..., Outcome], pager_style: str | None
) -> None:
    # a recorded output with a leading blank line, column padding and blank lines at the
    # end: the artifact is byte for byte what the device printed, whether the pager was
    # off (None: the KB's terminal length 0) or answered in each style
    sim = simulator(pager_style=pager_style or "cisco")
    hints = None
    if pager_style is not None:
        hints = {"mode": "shell", "prompt": r"[\w.-]+[#>] ?$", "failure_strings": ["% Invalid"]}
    out = run_step(sim, {"command": "show voice port summary"}, ssh_hints=hints)
    assert out.error is None
    text = out.files["show_voice_port_summary.txt"]
    assert text == recorded("show_voice_port_summary.txt")
    assert text.startswith("\n") and text.endswith("   \n\n") and "  y \n" in text
    assert (out.facts["commands"][0]["pages"] > 0) == (pager_style is not None)


def test_a_failure_string_fails_that_command_only(
    simulator: Sim, run_step: Callable[..., Outcome]
) -> None:
    out = run_step(simulator(), {"commands": ["show version", "show running-config"]})
    assert isinstance(out.error, StepPartial)
    assert out.statuses() == ["ok", "failed"]
    failed = out.facts["commands"][1]
    assert "% Invalid input detected" in failed["error"]
    assert "'show running-config': failed" in str(out.error)
    # what the device said is kept as evidence
    assert "% Invalid input" in out.files["show_running-config.txt"]


def test_all_commands_failing_fails_the_step(
    simulator: Sim, run_step: Callable[..., Outcome]
) -> None:
    out = run_step(simulator(), {"commands": ["show sip-ua bogus", "show nothing"]})
    assert out.error is not None and out.error.status == "failed"
    assert "show sip-ua bogus" in str(out.error) and "show nothing" in str(out.error)
    assert out.statuses() == ["failed", "failed"]  # still recorded per command


def test_a_hanging_command_times_out_and_the_rest_still_run(
    simulator: Sim, run_step: Callable[..., Outcome]
) -> None:
    sim = simulator()
    out = run_step(sim, {"commands": ["show version", "hang", "show sip-ua status"], "timeout": 1})
    assert isinstance(out.error, StepPartial)
    assert out.statuses() == ["ok", "timeout", "ok"]
    assert "channel was closed" in out.facts["commands"][1]["error"]
    assert out.files["show_sip-ua_status.txt"] == recorded("show_sip-ua_status.txt")
    assert sim.shells == 2  # the hung shell was closed and a fresh one opened
    assert sim.connections == 1  # ... on the same SSH connection
    assert out.seconds < 5


def test_the_step_deadline_bounds_everything(
    simulator: Sim, run_step: Callable[..., Outcome]
) -> None:
    out = run_step(simulator(), {"commands": ["hang", "show version"]}, deadline=2.0)
    assert out.error is not None and out.error.status == "timeout"
    assert "'hang': timeout: no prompt back within the step's deadline" in str(out.error)
    assert "'show version': not run" in str(out.error)
    assert out.statuses() == ["timeout", "not run"]
    assert out.seconds < 3


def test_a_prompt_that_never_comes_fails_with_what_was_seen(
    simulator: Sim, run_step: Callable[..., Outcome]
) -> None:
    out = run_step(
        simulator(), {"command": "show version"}, deadline=1.5, ssh_hints={"prompt": "^sbc01> $"}
    )
    assert out.error is not None and out.error.status == "failed"
    assert "no CLI prompt matching" in str(out.error) and "'gw1>'" in str(out.error)
    assert out.seconds < 2.5


def test_max_bytes_truncates_and_flags_the_artifact(
    simulator: Sim, run_step: Callable[..., Outcome]
) -> None:
    out = run_step(
        simulator(privileged=True), {"command": "show running-config", "max_bytes": 2000}
    )
    assert out.error is None
    assert out.facts["commands"][0]["truncated"] is True
    assert [a.truncated for a in out.sink.artifacts] == [True]
    assert len(out.files["show_running-config.txt"].encode()) <= 2000
