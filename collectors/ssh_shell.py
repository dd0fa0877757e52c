"""``ssh.shell``: commands typed into an interactive device CLI, one artifact per command.

For devices whose SSH server offers a CLI rather than exec channels (routers, gateways,
switches). The KB type's ``ssh`` hints say what the CLI looks like: the prompt (a regex
matched against the last, unfinished line), paging-off commands sent once after login
(``on_open``), failure strings (``% Invalid input``) and the pager prompt. The terminal
handling lives in ``ShellDriver``, which works on any paramiko-Channel-like object.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import Field, field_validator, model_validator

from collectors.base import (
    Collector,
    DeviceInfo,
    Duration,
    Facts,
    Options,
    Size,
    StepContext,
    StepFailed,
    StepPartial,
    StepTimeout,
)

log = logging.getLogger(__name__)

DEFAULT_PROMPT = r"[\w.@()/:-]+[#>$%] ?$"
# --More--, " --More-- ", -- More --, ---- More ----, <--- More --->, --More-- (q to quit)
DEFAULT_PAGER = r"(?i)(?:-+ ?more ?-+|<-+ ?more ?-+>)[^\n]{0,40}$"
OPEN_TIMEOUT = 15.0  # login banner to first prompt
_LINE_CAP = 64 * 1024  # an unfinished line longer than this is flushed as output


class ChannelLike(Protocol):
    """The part of ``paramiko.Channel`` the driver uses."""

    def settimeout(self, timeout: float | None) -> None: ...
    def recv(self, nbytes: int) -> bytes: ...
    def sendall(self, data: bytes) -> None: ...
    def close(self) -> None: ...


# --- terminal output -> text -------------------------------------------------------------

_CONTROL = re.compile(r"[\r\x08\x1b]")
_TOKENS = re.compile(r"(\x1b\[[0-9;?]*[A-Za-z]|\x1b[^\[]?|\r|\x08)")
_NEWLINES = re.compile(r"\r*\n")
_JUNK = re.compile(r"[\x00-\x07\x0b\x0c\x0e-\x1a\x1c-\x1f\x7f]")


def render_line(line: str) -> str:
    """What a terminal shows for one line: carriage returns, backspaces and erase-line
    sequences applied (pagers erase their prompt with them), other escapes dropped.

    Spaces the device printed are kept, trailing ones too: the output is kept as printed.
    Only blanks that *erased* something are dropped at the end of the line: a space the
    cursor later moved back over (`` --More-- `` erased by backspace, space, backspace, or
    by carriage return and spaces) is an erased cell, not text."""
    if not _CONTROL.search(line):
        return _JUNK.sub("", line)
    buf: list[str] = []
    erased: list[bool] = []  # per cell: a space the cursor moved back over
    cur = 0

    def back_to(col: int) -> None:
        nonlocal cur
        col = max(0, col)
        for i in range(col, min(cur, len(buf))):
            if buf[i] == " ":
                erased[i] = True
        cur = col

    for tok in _TOKENS.split(line):
        if not tok:
            continue
        if tok == "\r":
            back_to(0)
        elif tok == "\x08":
            back_to(cur - 1)
        elif tok.startswith("\x1b"):
            if tok.endswith("K"):  # erase in line: 0/none = to the end, 1 = to the cursor
                arg = tok[2:-1]
                if arg == "1":
                    buf[:cur] = [" "] * min(cur, len(buf))
                    erased[:cur] = [True] * min(cur, len(erased))
                elif arg == "2":
                    buf = [" "] * min(cur, len(buf))
                    erased = [True] * len(buf)
                else:
                    del buf[cur:]
                    del erased[cur:]
            elif tok.endswith("D") and tok.startswith("\x1b["):  # cursor back N
                back_to(cur - int(tok[2:-1] or 1))
            elif tok.endswith("G") and tok.startswith("\x1b["):  # cursor to column N
                col = int(tok[2:-1] or 1) - 1
                if col < cur:
                    back_to(col)
                else:
                    cur = col
        else:
            for ch in _JUNK.sub("", tok):
                if cur < len(buf):
                    buf[cur] = ch
                    erased[cur] = False
                else:
                    buf.extend(" " * (cur - len(buf)))
                    erased.extend([True] * (cur - len(erased)))  # skipped over, never printed
                    buf.append(ch)
                    erased.append(False)
                cur += 1
    end = len(buf)
    while end and erased[end - 1]:
        end -= 1
    return "".join(buf[:end])


def render(text: str) -> str:
    """Terminal output (``\\r\\n`` line ends, pager junk) -> plain text lines."""
    return "\n".join(render_line(line) for line in _NEWLINES.split(text))


# --- the driver ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """The device's answer to one command (or the login banner)."""

    text: str  # rendered output: echo, pager prompts and the final prompt removed
    prompt: str | None  # the prompt line that ended it; None on timeout or close
    raw_bytes: int
    pages: int  # pager prompts answered
    truncated: bool  # output beyond max_bytes was read and dropped
    timed_out: bool
    closed: bool  # the device closed the channel

    @property
    def complete(self) -> bool:
        return self.prompt is not None


class ShellDriver:
    """Talks to an interactive CLI on an open channel: waits for prompts, answers pagers.

    ``read_until_prompt`` reads until the last, unfinished line is a prompt: ``prompt``
    matches it from its first character (only that line is tested, so finished output lines
    that look like prompts do not end the read). A last line matching ``pager`` is removed
    and answered. Reads are bounded by a timeout, ``max_bytes`` (output past it is read and
    dropped, so the CLI stays in step) and the ``cancel`` event.
    """

    def __init__(
        self,
        channel: ChannelLike,
        *,
        prompt: str = DEFAULT_PROMPT,
        pager: str | None = DEFAULT_PAGER,
        pager_answer: str = " ",
        newline: str = "\n",
        cancel: threading.Event | None = None,
    ) -> None:
        self.channel = channel
        self.prompt = re.compile(prompt)
        self.pager = re.compile(pager) if pager else None
        self.pager_answer = pager_answer.encode()
        self.newline = newline
        self.cancel = cancel or threading.Event()
        self.last_line = ""  # the unfinished line when a read ended (for error messages)

    def read_until_prompt(self, timeout: float, max_bytes: int = 16 * 1024**2) -> Reply:
        deadline = time.monotonic() + timeout
        head = bytearray()
        line = bytearray()
        total = pages = 0
        truncated = timed_out = closed = False
        prompt: str | None = None

        def keep(data: bytes | bytearray) -> None:
            nonlocal truncated
            room = max_bytes - len(head)
            if len(data) > room:
                truncated = True
                data = data[: max(room, 0)]
            head.extend(data)

        while True:
            left = deadline - time.monotonic()
            if left <= 0 or self.cancel.is_set():
                timed_out = True
                break
            self.channel.settimeout(min(left, 0.2))
            try:
                chunk = self.channel.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                closed = True
                break
            total += len(chunk)
            line.extend(chunk)
            nl = line.rfind(b"\n")
            if nl >= 0:
                keep(line[: nl + 1])
                del line[: nl + 1]
            if len(line) > _LINE_CAP:
                keep(line[:-4096])
                del line[:-4096]
            last = render_line(line.decode("utf-8", "replace"))
            if self.pager is not None and last and self.pager.search(last):
                line.clear()
                pages += 1
                self.channel.sendall(self.pager_answer)
                continue
            if last and self.is_prompt(last):
                prompt = last.rstrip()
                break
        self.last_line = render_line(line.decode("utf-8", "replace"))
        if prompt is None:
            keep(line)  # what arrived before the timeout is output too
        text = render(head.decode("utf-8", "replace"))
        return Reply(text, prompt, total, pages, truncated, timed_out, closed)

    def is_prompt(self, line: str) -> bool:
        """The whole line is a prompt: a match that starts where the line does, so output
        like ``From: <sip:100@10.0.0.1>`` cut at a packet boundary does not end the read."""
        m = self.prompt.search(line)
        return m is not None and m.start() == 0

    def run(self, command: str, timeout: float, max_bytes: int = 16 * 1024**2) -> Reply:
        """Type ``command``, read its output up to the next prompt, drop the echo."""
        self.channel.sendall((command + self.newline).encode())
        reply = self.read_until_prompt(timeout, max_bytes)
        return Reply(
            _strip_echo(reply.text, command),
            reply.prompt,
            reply.raw_bytes,
            reply.pages,
            reply.truncated,
            reply.timed_out,
            reply.closed,
        )


def _strip_echo(text: str, command: str) -> str:
    """The output without the echoed command line; everything else as printed (blank
    lines and trailing spaces included)."""
    first, nl, rest = text.partition("\n")
    if nl and first.rstrip().endswith(command.strip()):
        return rest
    if not nl and first.rstrip().endswith(command.strip()):
        return ""
    return text


# --- the collector ------------------------------------------------------------------------


def _take_shell(session: Any, ctx: StepContext, options: Any) -> ShellDriver | None:
    """The shell an earlier step of this device left at its prompt, set up for this step."""
    take = getattr(session, "take_shell", None)
    driver = take() if take is not None else None
    if not isinstance(driver, ShellDriver):
        return None
    driver.newline = options.newline
    driver.cancel = ctx.cancel
    return driver


@dataclass(frozen=True)
class ShellHints:
    """The KB type's ``ssh`` hints as the shell needs them (defaults for a plain CLI)."""

    prompt: str = DEFAULT_PROMPT
    pager: str = DEFAULT_PAGER
    pager_answer: str = " "
    on_open: tuple[str, ...] = ()
    failure_strings: tuple[str, ...] = ()

    @classmethod
    def from_kb(cls, ssh: dict[str, Any] | None) -> ShellHints:
        ssh = ssh or {}
        return cls(
            prompt=ssh.get("prompt") or DEFAULT_PROMPT,
            pager=ssh.get("pager") or DEFAULT_PAGER,
            pager_answer=ssh.get("pager_answer") or " ",
            on_open=tuple(ssh.get("on_open") or ()),
            failure_strings=tuple(ssh.get("failure_strings") or ()),
        )


def _check_command(cmd: str) -> str:
    if not cmd.strip():
        raise ValueError("a command is empty")
    if any(ord(c) < 32 or ord(c) == 127 for c in cmd):
        raise ValueError(f"a command is one line without control characters, got {cmd!r}")
    # what may be typed at all is the KB type's read-only allow-list, checked when the KB
    # loads (agent/readonly.py); this model only checks the shape
    return cmd.strip()


class SshShellOptions(Options):
    command: str | None = None
    commands: tuple[str, ...] = ()
    timeout: Duration = 30.0
    max_bytes: Size = 16 * 1024**2
    newline: str = Field("\n", pattern=r"^(\n|\r|\r\n)$")

    @field_validator("command")
    @classmethod
    def _one(cls, value: str | None) -> str | None:
        return None if value is None else _check_command(value)

    @field_validator("commands")
    @classmethod
    def _many(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_check_command(c) for c in value)

    @model_validator(mode="after")
    def _some(self) -> SshShellOptions:
        if not self.command and not self.commands:
            raise ValueError('give command: "show version" or commands: [...]')
        return self

    def command_list(self) -> tuple[str, ...]:
        return ((self.command,) if self.command else ()) + self.commands


_UNSAFE = re.compile(r"[^A-Za-z0-9._+@=-]+")


def artifact_name(command: str, taken: set[str]) -> str:
    """``show running-config`` -> ``show_running-config.txt``, unique within the step."""
    stem = _UNSAFE.sub("_", command.strip()).strip("_.")[:100] or "command"
    name, n = f"{stem}.txt", 1
    while name in taken:
        n += 1
        name = f"{stem}-{n}.txt"
    taken.add(name)
    return name


class SshShell(Collector):
    """Type commands into a device's interactive CLI; one artifact per command."""

    name = "ssh.shell"
    transport = "ssh"
    Options = SshShellOptions
    summary = "type commands into an interactive device CLI (prompt, paging), one file each"

    def deadline_for(self, options: Any) -> float:
        return OPEN_TIMEOUT + float(options.timeout) * len(options.command_list()) + 5.0

    def collect(self, ctx: StepContext, device: DeviceInfo, options: SshShellOptions) -> Facts:
        hints = ShellHints.from_kb(device.kb.get("ssh"))
        session = ctx.session("ssh")
        results: list[dict[str, Any]] = []
        taken: set[str] = set()
        # one shell per device connection, shared by the device's ssh.shell steps: devices
        # that serve one shell per connection never see a second one
        driver: ShellDriver | None = _take_shell(session, ctx, options)
        try:
            for cmd in options.command_list():
                entry: dict[str, Any] = {"command": cmd, "status": "not run"}
                results.append(entry)
                if ctx.remaining() <= 0:
                    entry["error"] = "not run: the step's deadline was reached"
                    continue
                if ctx.cancel.is_set():
                    entry["error"] = "not run: the job was interrupted"
                    continue
                if driver is None:
                    try:
                        driver = self._open(ctx, session, hints, options)
                    except StepFailed as exc:
                        if len(results) == 1:
                            raise
                        entry.update(status="failed", error=f"not run: {exc}")
                        continue
                t0 = time.monotonic()
                limit = min(options.timeout, ctx.remaining())
                reply = driver.run(cmd, limit, options.max_bytes)
                entry["artifact"] = artifact_name(cmd, taken)
                art = ctx.sink.write_text(entry["artifact"], reply.text)
                art.truncated = reply.truncated
                entry.update(
                    bytes=len(reply.text.encode()),
                    seconds=round(time.monotonic() - t0, 3),
                    pages=reply.pages,
                    truncated=reply.truncated,
                )
                entry.update(self._judge(reply, hints, limit < options.timeout))
                if not reply.complete:  # the CLI is in an unknown state: start afresh
                    driver.channel.close()
                    driver = None
        except BaseException:
            if driver is not None:
                driver.channel.close()
                driver = None
            raise
        finally:
            if driver is not None:  # at its prompt: kept for the device's next step
                keep = getattr(session, "keep_shell", None)
                if keep is not None:
                    keep(driver)
                else:
                    driver.channel.close()
        return self._outcome(results)

    @staticmethod
    def _judge(reply: Reply, hints: ShellHints, by_deadline: bool) -> dict[str, Any]:
        if reply.timed_out:
            limit = "the step's deadline" if by_deadline else "the command's timeout"
            return {
                "status": "timeout",
                "error": f"no prompt back within {limit}; the channel was closed",
            }
        if reply.closed:
            return {"status": "failed", "error": "the device closed the session"}
        for s in hints.failure_strings:
            if s in reply.text:
                line = next((ln for ln in reply.text.splitlines() if s in ln), s)
                return {"status": "failed", "error": f"device said: {line.strip()[:200]}"}
        return {"status": "ok", "prompt": reply.prompt}

    def _open(
        self, ctx: StepContext, session: Any, hints: ShellHints, options: SshShellOptions
    ) -> ShellDriver:
        try:
            channel = session.open_shell(width=511, height=50, timeout=min(10.0, ctx.remaining()))
        except StepFailed:
            raise
        except Exception as exc:
            raise StepFailed(f"{session.device_name}: cannot open a shell: {exc}") from exc
        driver = ShellDriver(
            channel,
            prompt=hints.prompt,
            pager=hints.pager,
            pager_answer=hints.pager_answer,
            newline=options.newline,
            cancel=ctx.cancel,
        )
        banner = driver.read_until_prompt(min(OPEN_TIMEOUT, ctx.remaining()), 1024**2)
        if not banner.complete:
            channel.close()
            why = "the device closed the session" if banner.closed else "timed out"
            if not banner.raw_bytes and getattr(session, "shells_opened", 1) > 1:
                raise StepFailed(
                    f"the device sent nothing on a new shell ({why}); it may serve only one "
                    f"shell per SSH connection (this connection has opened "
                    f"{session.shells_opened}; an earlier one was closed after a command that "
                    "did not come back to the prompt)"
                )
            raise StepFailed(
                f"no CLI prompt matching {hints.prompt!r} after login ({why}); last line "
                f"received: {driver.last_line[-80:]!r}. Check the KB type's ssh.prompt"
            )
        for cmd in hints.on_open:
            reply = driver.run(cmd, min(options.timeout, ctx.remaining()), 1024**2)
            if not reply.complete:
                channel.close()
                raise StepFailed(f"session setup command {cmd!r} got no prompt back")
            bad = [s for s in hints.failure_strings if s in reply.text]
            if bad:
                log.warning("%s: setup command %r failed: %s", session.device_name, cmd, bad[0])
        return driver

    @staticmethod
    def _outcome(results: list[dict[str, Any]]) -> Facts:
        facts: Facts = {"commands": results}
        bad = [r for r in results if r["status"] != "ok"]
        if not bad:
            return facts
        msg = "; ".join(f"{r['command']!r}: {r['status']}: {r.get('error', '')}" for r in bad)
        n = len(results)
        if len(bad) < n:
            raise StepPartial(f"{len(bad)} of {n} commands did not succeed: {msg}", facts)
        if all(r["status"] in ("timeout", "not run") for r in bad):
            raise CommandsTimedOut(msg, facts)
        raise CommandsFailed(msg, facts)


class CommandsFailed(StepFailed):
    """No command succeeded; ``facts`` still lists each one (the runner records them)."""

    def __init__(self, message: str, facts: Facts) -> None:
        super().__init__(message)
        self.facts = facts


class CommandsTimedOut(StepTimeout):
    def __init__(self, message: str, facts: Facts) -> None:
        super().__init__(message)
        self.facts = facts
