"""ssh.shell's pure parts: terminal rendering, echo stripping, artifact names, options."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from collectors.ssh_shell import (
    ShellDriver,
    SshShellOptions,
    _strip_echo,
    artifact_name,
    render,
    render_line,
)


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("plain line  ", "plain line  "),  # trailing spaces the device printed are kept
        (
            " --More-- " + "\b" * 10 + " " * 10 + "\b" * 10 + "interface Gi0/0/1",
            "interface Gi0/0/1",
        ),
        ("--More--\r\x1b[Kinterface Gi0/0/1", "interface Gi0/0/1"),
        ("<--- More --->\r" + " " * 14 + "\rinterface Gi0/0/1", "interface Gi0/0/1"),
        ("\x1b[7m--More--\x1b[m", "--More--"),
        ("abcdef\x1b[3Dxyz", "abcxyz"),
        ("abc\x07def", "abcdef"),
        # the pager's erasing blanks are not output, spaces printed after them are
        (" --More-- " + "\b" * 10 + " " * 10 + "\b" * 10 + "end", "end"),
        (" --More-- " + "\b" * 10 + " " * 10 + "\b" * 10 + "end   ", "end   "),
        ("<--- More --->\r" + " " * 14 + "\rend  ", "end  "),
        ("12345\r\x1b[K", ""),
        ("a\x1b[5Gb ", "a   b "),
    ],
)
def test_render_line_applies_what_a_terminal_would(raw: str, shown: str) -> None:
    assert render_line(raw) == shown


def test_render_normalises_line_ends() -> None:
    assert render("a\r\nb\r\r\nc\n") == "a\nb\nc\n"


def test_strip_echo_drops_the_typed_command_only() -> None:
    # blank lines before, inside and after the output are the device's: kept
    assert _strip_echo("show version\n\nCisco IOS  \n\n", "show version") == "\nCisco IOS  \n\n"
    assert _strip_echo("gw1#show version\nline\n", "show version") == "line\n"
    assert _strip_echo("no echo here\n", "show version") == "no echo here\n"
    assert _strip_echo("show version\n", "show version") == ""
    assert _strip_echo("show version", "show version") == ""


def test_artifact_names_are_safe_and_unique() -> None:
    taken: set[str] = set()
    assert artifact_name("show running-config", taken) == "show_running-config.txt"
    assert artifact_name("show running-config", taken) == "show_running-config-2.txt"
    assert artifact_name("show ip route | include 0.0.0.0/0", taken) == (
        "show_ip_route_include_0.0.0.0_0.txt"
    )
    assert artifact_name("../../etc", taken) == "etc.txt"
    assert artifact_name("???", taken) == "command.txt"


def test_options_take_one_command_or_a_list() -> None:
    assert SshShellOptions(command="show version").command_list() == ("show version",)
    both = SshShellOptions.model_validate({"command": "show a", "commands": ["show b"]})
    assert both.command_list() == ("show a", "show b")


@pytest.mark.parametrize(
    ("opts", "reason"),
    [
        ({}, "give command"),
        ({"command": "show version\nreload"}, "one line"),
        ({"command": "  "}, "empty"),
        ({"command": "show version", "timeout": "ninety"}, "duration"),
        ({"command": "show version", "bogus": 1}, "Extra inputs"),
    ],
)
def test_bad_options_are_refused(opts: dict[str, object], reason: str) -> None:
    with pytest.raises(ValidationError, match=reason):
        SshShellOptions.model_validate(opts)


class ScriptedChannel:
    """A channel-like object replaying chunks, recording what is sent."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = list(chunks)
        self.sent: list[bytes] = []

    def settimeout(self, timeout: float | None) -> None:
        pass

    def recv(self, nbytes: int) -> bytes:
        if not self.chunks:
            raise TimeoutError
        return self.chunks.pop(0)

    def sendall(self, data: bytes) -> None:
        self.sent.append(data)

    def close(self) -> None:
        pass


def test_prompt_like_output_cut_at_a_packet_boundary_does_not_end_the_read() -> None:
    chan = ScriptedChannel(
        [b"show log\r\nFrom: <sip:100@10.0.0.1>", b"\r\nTo: <sip:200@gw1>", b"\r\ngw1# "]
    )
    reply = ShellDriver(chan, prompt=r"[\w.-]+[#>] ?$").run("show log", 1)
    assert reply.prompt == "gw1#"
    assert reply.text == "From: <sip:100@10.0.0.1>\nTo: <sip:200@gw1>\n"
    assert chan.sent == [b"show log\n"]


def test_pager_prompt_is_answered_with_the_configured_answer() -> None:
    chan = ScriptedChannel([b"x\r\na\r\n -- More -- ", b"\r          \rb\r\nsbc1> "])
    reply = ShellDriver(chan, pager_answer="\n").run("x", 1)
    assert reply.text == "a\nb\n" and reply.pages == 1
    assert chan.sent == [b"x\n", b"\n"]


class _Transport:
    def __init__(self, active: bool) -> None:
        self.active = active

    def is_active(self) -> bool:
        return self.active


class _Client:
    def __init__(self, transport: _Transport) -> None:
        self.transport = transport

    def get_transport(self) -> _Transport:
        return self.transport


class _Chan(ScriptedChannel):
    closed = False
    eof_received = False

    def close(self) -> None:
        self.closed = True


def test_a_kept_shell_is_handed_back_only_while_it_is_usable() -> None:
    from collectors.ssh import SshSession

    transport = _Transport(active=True)
    session = SshSession("gw1", _Client(transport))  # type: ignore[arg-type]
    assert session.take_shell() is None
    driver = ShellDriver(_Chan([]))
    session.keep_shell(driver)
    assert session.take_shell() is driver and session.take_shell() is None  # taken once
    session.keep_shell(driver)
    driver.channel.eof_received = True  # type: ignore[attr-defined]  # the device hung up
    assert session.take_shell() is None and driver.channel.closed  # type: ignore[attr-defined]
    fresh = ShellDriver(_Chan([]))
    session.keep_shell(fresh)
    transport.active = False  # the connection died between steps
    assert session.take_shell() is None and fresh.channel.closed  # type: ignore[attr-defined]
    last = ShellDriver(_Chan([]))
    transport.active = True
    session.keep_shell(last)
    session.close()  # closing the session closes the kept shell
    assert last.channel.closed  # type: ignore[attr-defined]
