"""SSH: the device session (``SshSession``) and the ``ssh.command``, ``ssh.file`` and
``ssh.capture`` collectors.

``SshSession`` wraps a connected ``paramiko.SSHClient`` whose host key the agent verified
(``agent/ssh_session.py`` opens it). Every call has a timeout; output is read from stdout and
stderr together (one ``select`` on the channel, so neither can fill up and deadlock the
other); a command is stopped with an SSH ``signal`` request (OpenSSH sends it to the
command's whole process group), then by closing the channel if the server ignores it.
paramiko is imported lazily: importing this module stays cheap.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import logging
import posixpath
import re
import select
import shlex
import stat
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import Field, field_validator

from collectors.base import (
    CappedWriter,
    Collector,
    DeviceInfo,
    Duration,
    Facts,
    Options,
    Size,
    StepContext,
    StepFailed,
    StepPartial,
    StepSkipped,
    StepTimeout,
)
from collectors.common import (
    STDERR_CAP,
    CommandOptions,
    FileOptions,
    file_artifact,
    files_outcome,
    last_line,
)

if TYPE_CHECKING:
    import paramiko

log = logging.getLogger(__name__)

CHUNK = 256 * 1024
MAX_RECONNECTS = 2
# channel window and packet size: paramiko's cost is per packet, so a wide window and big
# packets roughly double SFTP throughput on fast links
SFTP_WINDOW = 8 * 1024**2
SFTP_PACKET = 256 * 1024
_STOP_GRACE = 1.5  # seconds between TERM, KILL and giving up on the channel


# () -> (a connected, host-key-verified client, things to close with it)
Reopen = Callable[[], "tuple[paramiko.SSHClient, list[Any]]"]


@dataclass(frozen=True)
class CommandResult:
    exit_status: int | None  # None when killed/timed out
    stdout: bytes
    stderr: bytes
    truncated: bool  # stdout hit max_bytes
    timed_out: bool


@dataclass(frozen=True)
class StreamResult:
    """What ``SshSession.stream`` saw; stdout went to the caller's callback."""

    exit_status: int | None
    stderr: bytes
    stdout_bytes: int
    timed_out: bool
    cancelled: bool
    stopped: bool  # the callback asked to stop
    seconds: float


class SessionLost(StepFailed):
    """The SSH connection is gone (the device dropped it or the network did)."""


class SshSession:
    """One device's SSH connection, shared by its steps in a job; thread-safe."""

    def __init__(
        self,
        device_name: str,
        client: paramiko.SSHClient,
        timeout: float = 10.0,
        reopen: Reopen | None = None,
    ):
        self.device_name = device_name
        self.client = client
        self.timeout = timeout  # for opening channels and SFTP round trips
        self._sftp: paramiko.SFTPClient | None = None
        self._lock = threading.RLock()
        self._extra: list[Any] = []  # e.g. the jump host's session, closed with this one
        self._reopen = reopen
        self.reconnects = 0
        # ssh.shell's logged-in CLI, kept for the device's next ssh.shell steps: many devices
        # serve one shell per connection (netmiko keeps one too); see take_shell()
        self._shell: Any = None
        self.shells_opened = 0

    # --- channels ---------------------------------------------------------------------

    def _transport(self) -> paramiko.Transport:
        """The live transport; a connection that died between operations (a device's idle
        timeout, a network blip) is re-established up to MAX_RECONNECTS times."""
        with self._lock:
            t = self.client.get_transport()
            if t is not None and t.is_active():
                return t
            why = t.get_exception() if t is not None else None
            lost = f"{self.device_name}: the SSH connection was lost"
            if why is not None and str(why):
                lost += f" ({why})"
            if self._reopen is None or self.reconnects >= MAX_RECONNECTS:
                raise SessionLost(lost)
            self.reconnects += 1
            log.warning("%s; reconnecting (%d/%d)", lost, self.reconnects, MAX_RECONNECTS)
            self._close_quietly()
            self.client, self._extra = self._reopen()
            t = self.client.get_transport()
            assert t is not None
            return t

    def take_shell(self) -> Any:
        """The kept shell (ssh.shell's driver) if its channel is still usable, else None;
        the caller owns it until it hands it back with ``keep_shell``."""
        with self._lock:
            shell, self._shell = self._shell, None
        if shell is None:
            return None
        chan = getattr(shell, "channel", None)
        alive = (
            chan is not None
            and not getattr(chan, "closed", False)
            and not getattr(chan, "eof_received", False)
            and self._transport_alive()
        )
        if not alive:
            with contextlib.suppress(Exception):
                shell.channel.close()
            return None
        return shell

    def keep_shell(self, shell: Any) -> None:
        """Keep a shell whose CLI is at its prompt, for the next ssh.shell step."""
        with self._lock:
            old, self._shell = self._shell, shell
        if old is not None and old is not shell:
            with contextlib.suppress(Exception):
                old.channel.close()

    def _close_quietly(self) -> None:
        shell, self._shell = self._shell, None
        if shell is not None:
            with contextlib.suppress(Exception):
                shell.channel.close()
        sftp, self._sftp = self._sftp, None
        for thing in (sftp, self.client, *self._extra):
            if thing is not None:
                with contextlib.suppress(Exception):
                    thing.close()
        self._extra = []

    def _channel(self) -> paramiko.Channel:
        import paramiko

        for attempt in (1, 2):
            transport = self._transport()
            try:
                return transport.open_session(
                    window_size=SFTP_WINDOW, max_packet_size=SFTP_PACKET, timeout=self.timeout
                )
            except (paramiko.SSHException, OSError, EOFError) as exc:
                # the connection may have just died without paramiko noticing yet: give it
                # a moment, and if it is gone, _transport() reconnects on the second attempt
                deadline = time.monotonic() + 1.0
                while transport.is_active() and time.monotonic() < deadline:
                    time.sleep(0.05)
                if attempt == 2 or transport.is_active() or self._reopen is None:
                    raise SessionLost(
                        f"{self.device_name}: cannot open an SSH channel: "
                        f"{str(exc) or type(exc).__name__}"
                    ) from exc
        raise AssertionError("unreachable")

    def run(
        self,
        command: str,
        *,
        timeout: float,
        max_bytes: int = 64 * 1024**2,
        cancel: threading.Event | None = None,
    ) -> CommandResult:
        """Run ``command`` (exec channel), keeping up to ``max_bytes`` of stdout in memory."""
        out = bytearray()

        def keep(data: bytes) -> bool:
            room = max_bytes - len(out)
            out.extend(data[: max(room, 0)])
            return len(data) <= room

        res = self.stream(command, keep, timeout=timeout, cancel=cancel)
        return CommandResult(
            exit_status=res.exit_status,
            stdout=bytes(out),
            stderr=res.stderr,
            truncated=res.stopped,
            timed_out=res.timed_out,
        )

    def stream(
        self,
        command: str,
        on_stdout: Callable[[bytes], bool],
        *,
        timeout: float,
        cancel: threading.Event | None = None,
        stderr_max: int = STDERR_CAP,
        stop_signal: str = "TERM",
        on_stop: Callable[[bytes], None] | None = None,
    ) -> StreamResult:
        """Run ``command``, handing stdout to ``on_stdout`` as it arrives.

        ``on_stdout`` returns False to stop the command (a cap was reached): it gets a TERM
        signal and the channel is closed. At ``timeout`` or when ``cancel`` is set the
        command gets TERM, then KILL, and ``on_stdout`` keeps being called with what it
        still writes until it ends (tcpdump writes its last packets on SIGTERM). stderr is
        kept up to ``stderr_max`` bytes and drained past it. ``on_stop(stderr_so_far)`` is
        called once when stopping starts, for a caller that knows a better way to stop the
        command (OpenSSH ignores signal requests on root logins, which have no privilege
        separation).
        """
        chan = self._channel()
        started = time.monotonic()
        limit = started + timeout
        stderr = bytearray()
        total = 0
        timed_out = cancelled = stopped = False
        stop_at: float | None = None
        signals = [stop_signal, "KILL"]
        try:
            self._request(chan, "exec", command)
            chan.settimeout(0.0)
            fd = chan.fileno()
            while True:
                while chan.recv_ready():
                    data = chan.recv(CHUNK)
                    if not data:
                        break
                    total += len(data)
                    if not on_stdout(data) and not stopped:
                        stopped = True
                while chan.recv_stderr_ready():
                    data = chan.recv_stderr(CHUNK)
                    if len(stderr) < stderr_max:
                        stderr += data[: stderr_max - len(stderr)]
                if chan.eof_received and not chan.recv_ready() and not chan.recv_stderr_ready():
                    break
                if chan.closed or not self._transport_alive():
                    break
                now = time.monotonic()
                if stop_at is None:
                    if cancel is not None and cancel.is_set():
                        cancelled = True
                    elif now >= limit:
                        timed_out = True
                    if stopped or cancelled or timed_out:
                        stop_at = now
                        self._signal(chan, signals.pop(0))
                        if on_stop is not None:
                            on_stop(bytes(stderr))
                        if stopped:
                            break  # the caller has what it wants: closing the channel also
                            # ends a command still writing (EPIPE) where signals are ignored
                elif now - stop_at > _STOP_GRACE:
                    if not signals:
                        break  # the server ignores signals: closing the channel ends it
                    stop_at = now
                    self._signal(chan, signals.pop(0))
                select.select([fd], [], [], 0.1 if stop_at is None else 0.05)
            exit_status: int | None = None
            if chan.eof_received and not (timed_out or cancelled or stopped):
                chan.status_event.wait(min(self.timeout, max(limit - time.monotonic(), 1.0)))
            if chan.status_event.is_set() and chan.exit_status >= 0:
                exit_status = chan.exit_status
            if not self._transport_alive() and not chan.eof_received:
                raise SessionLost(
                    f"{self.device_name}: the SSH connection was lost during the command"
                )
        except TimeoutError as exc:
            raise StepFailed(
                f"{self.device_name}: the device did not start the command within {self.timeout:g}s"
            ) from exc
        except BaseException:
            # e.g. SinkClosed: the step's deadline passed while we wrote; stop the command
            if stop_at is None and not chan.closed and not chan.eof_received:
                self._signal(chan, stop_signal)
                if on_stop is not None:
                    with contextlib.suppress(Exception):
                        on_stop(bytes(stderr))
            raise
        finally:
            chan.close()
        return StreamResult(
            exit_status=None if (timed_out or cancelled) and exit_status is None else exit_status,
            stderr=bytes(stderr),
            stdout_bytes=total,
            timed_out=timed_out,
            cancelled=cancelled,
            stopped=stopped,
            seconds=time.monotonic() - started,
        )

    def _transport_alive(self) -> bool:
        t = self.client.get_transport()
        return t is not None and t.is_active()

    def _request(self, chan: paramiko.Channel, kind: str, *fields: str | int | bytes) -> None:
        """A channel request (exec, subsystem, shell, pty-req) that waits for the device's
        answer at most ``self.timeout`` (paramiko's own methods wait forever)."""
        import paramiko
        from paramiko.common import cMSG_CHANNEL_REQUEST

        m = paramiko.Message()
        m.add_byte(cMSG_CHANNEL_REQUEST)
        m.add_int(chan.remote_chanid)
        m.add_string(kind)
        m.add_boolean(True)
        for f in fields:
            if isinstance(f, int):
                m.add_int(f)
            else:
                m.add_string(f)
        chan._event_pending()  # type: ignore[attr-defined]
        self._transport()._send_user_message(m)  # type: ignore[attr-defined]
        if not chan.event.wait(self.timeout):
            raise StepFailed(
                f"{self.device_name}: no answer to the SSH {kind} request within {self.timeout:g}s"
            )
        if not chan.event_ready:
            if not self._transport_alive():
                raise SessionLost(f"{self.device_name}: the SSH connection was lost")
            raise StepFailed(f"{self.device_name}: the device refused the SSH {kind} request")

    @staticmethod
    def _signal(chan: paramiko.Channel, name: str) -> None:
        """Send an SSH ``signal`` channel request (RFC 4254 6.9); best effort."""
        import paramiko
        from paramiko.common import cMSG_CHANNEL_REQUEST

        if chan.closed:
            return
        m = paramiko.Message()
        m.add_byte(cMSG_CHANNEL_REQUEST)
        m.add_int(chan.remote_chanid)
        m.add_string("signal")
        m.add_boolean(False)
        m.add_string(name)
        with contextlib.suppress(Exception):
            chan.transport._send_user_message(m)  # type: ignore[union-attr]

    def open_shell(
        self, *, width: int = 200, height: int = 50, timeout: float = 10.0
    ) -> paramiko.Channel:
        """An interactive shell channel with a pty (``timeout`` set on the channel)."""
        chan = self._channel()
        self.shells_opened += 1
        try:
            chan.settimeout(timeout)
            self._request(chan, "pty-req", "vt100", width, height, 0, 0, b"")
            self._request(chan, "shell")
        except Exception:
            chan.close()
            raise
        return chan

    def sftp(self) -> paramiko.SFTPClient:
        """The session's SFTP client, opened on first use and reused."""
        import paramiko

        with self._lock:
            if self._sftp is not None and not self._sftp.sock.closed:
                return self._sftp
            chan = self._channel()  # wide window, big packets: see SFTP_WINDOW
            chan.settimeout(max(self.timeout, 5.0))
            try:
                self._request(chan, "subsystem", "sftp")
                self._sftp = paramiko.SFTPClient(chan)
            except (StepFailed, paramiko.SSHException, OSError, EOFError) as exc:
                chan.close()
                raise StepFailed(
                    f"{self.device_name}: cannot start SFTP: {str(exc) or type(exc).__name__} "
                    "(is the sftp subsystem enabled on the device?)"
                ) from exc
            return self._sftp

    def close(self) -> None:
        with self._lock:
            self._reopen = None
            self._close_quietly()


_OUTPUT_NAME = re.compile(r"^[A-Za-z0-9_+@=-][A-Za-z0-9._+@=-]{0,99}$")


def _output_name(value: str | None) -> str | None:
    if value is not None and not _OUTPUT_NAME.match(value):
        raise ValueError(f"expected a file name like 'version.txt' (no '/'), got {value!r}")
    return value


def _session(ctx: StepContext) -> SshSession:
    session = ctx.session("ssh")
    if not isinstance(session, SshSession):  # pragma: no cover - wiring error
        raise StepFailed(f"the ssh session is a {type(session).__name__}, not an SshSession")
    return session


def _last_line(data: bytes) -> str:
    return last_line(data, 300)


# --- ssh.command ---------------------------------------------------------------------------


class SshCommandOptions(CommandOptions):
    @field_validator("command")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("command is empty")
        return value

    _output = field_validator("output")(lambda v: _output_name(v))


class SshCommand(Collector):
    """Run a command on the device (exec channel); stdout streamed to output.txt."""

    name = "ssh.command"
    transport = "ssh"
    Options = SshCommandOptions
    summary = "run a command on the device over SSH, keep stdout/stderr and exit status"

    def collect(self, ctx: StepContext, device: DeviceInfo, options: SshCommandOptions) -> Facts:
        session = _session(ctx)
        timeout = max(0.1, min(options.timeout, ctx.remaining()))
        with ctx.sink.open(options.output or "output.txt", options.max_bytes) as out:

            def write(data: bytes) -> bool:
                if not out.full:
                    out.write(data)
                return not out.full

            res = session.stream(options.command, write, timeout=timeout, cancel=ctx.cancel)
        if res.stderr:
            ctx.sink.write_bytes("stderr.txt", res.stderr)
        facts: Facts = {
            "command": options.command,
            "exit_status": res.exit_status,
            "seconds": round(res.seconds, 3),
            "stdout_bytes": out.artifact.size,
            "truncated": out.artifact.truncated,
        }
        if res.cancelled:
            raise StepTimeout("cancelled")
        if res.timed_out:
            raise StepTimeout(f"still running after {res.seconds:.1f}s; stopped")
        if res.stopped:  # output cap: the command was stopped, its status means little
            return facts
        if res.exit_status == 127 and options.missing_ok:
            raise StepSkipped(f"not available on {device.name}: {_last_line(res.stderr)}")
        if res.exit_status not in options.ok_exit_codes:
            detail = _last_line(res.stderr)
            status = (
                "no exit status" if res.exit_status is None else f"exit status {res.exit_status}"
            )
            raise StepFailed(f"{status}{': ' + detail if detail else ''}")
        return facts


# --- ssh.file ------------------------------------------------------------------------------


class SshFileOptions(FileOptions):
    since: Duration | None = None


_GLOB = re.compile(r"[*?\[]")


def remote_glob(sftp: paramiko.SFTPClient, pattern: str) -> list[tuple[str, Any]]:
    """Regular files matching an absolute glob on the device, as (path, SFTPAttributes)."""
    parts = [p for p in pattern.split("/") if p]
    found: list[str] = ["/"]
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        nxt: list[str] = []
        for base in found:
            if _GLOB.search(part):
                try:
                    names = sorted(a.filename for a in sftp.listdir_attr(base))
                except OSError:
                    continue
                nxt += [
                    posixpath.join(base, n)
                    for n in names
                    if fnmatch.fnmatchcase(n, part) and (part.startswith(".") or n[0] != ".")
                ]
            else:
                nxt.append(posixpath.join(base, part))
        found = nxt
        if not last:
            found = [p for p in found if _is_dir(sftp, p)]
    out = []
    for p in found:
        try:
            attr = sftp.stat(p)  # follows symlinks
        except OSError:
            continue
        if attr.st_mode is not None and stat.S_ISREG(attr.st_mode):
            out.append((p, attr))
    return out


def _is_dir(sftp: paramiko.SFTPClient, path: str) -> bool:
    try:
        mode = sftp.stat(path).st_mode
    except OSError:
        return False
    return mode is not None and stat.S_ISDIR(mode)


def _connection_lost(exc: BaseException, sftp: paramiko.SFTPClient) -> bool:
    """Whether an SFTP error means the connection (not just this file) is gone."""
    import paramiko

    if isinstance(exc, TimeoutError | EOFError | paramiko.SSHException):
        return True
    channel = sftp.get_channel()
    return channel is None or channel.closed


class SshFile(Collector):
    """Fetch files (remote globs) over SFTP, each capped, optionally the tail, by mtime."""

    name = "ssh.file"
    transport = "ssh"
    Options = SshFileOptions
    default_deadline = 300.0
    summary = "fetch files matching globs from the device over SFTP, with caps, tail and since"

    def collect(self, ctx: StepContext, device: DeviceInfo, options: SshFileOptions) -> Facts:
        import paramiko

        session = _session(ctx)
        sftp = session.sftp()
        patterns = options.patterns
        matches: dict[str, Any] = {}
        try:
            for pat in patterns:
                matches.update(remote_glob(sftp, pat))
        except (TimeoutError, paramiko.SSHException, EOFError) as exc:
            raise SessionLost(f"{device.name}: SFTP failed while listing files: {exc}") from exc
        old = 0
        if options.since is not None:
            cutoff = time.time() - options.since
            keep = {p: a for p, a in matches.items() if (a.st_mtime or 0) >= cutoff}
            old = len(matches) - len(keep)
            matches = keep
        if not matches:
            extra = f" modified in the last {options.since:g}s" if options.since else ""
            msg = f"no file matches {', '.join(patterns)}{extra} on {device.name}"
            raise StepSkipped(msg) if options.missing_ok else StepFailed(msg)
        total = 0
        copied: list[str] = []
        errors: list[str] = []
        lost: str | None = None
        for path in sorted(matches):
            ctx.check()
            if lost is not None:
                errors.append(f"{path}: not fetched, the connection was lost")
                continue
            room = options.total_max_bytes - total
            if room <= 0:
                errors.append(f"{path}: not fetched, total_max_bytes reached")
                continue
            size = matches[path].st_size or 0
            with ctx.sink.open(file_artifact(path), min(options.max_bytes, room)) as out:
                try:
                    self._fetch(ctx, sftp, path, size, out, options.tail)
                    copied.append(path)
                except (OSError, paramiko.SSHException, EOFError) as exc:
                    if not _connection_lost(exc, sftp):  # permission denied, vanished ...
                        errors.append(f"{path}: {getattr(exc, 'strerror', None) or exc}")
                        total += out.artifact.size
                        continue
                    out.artifact.truncated = True
                    lost = (
                        f"no data from the device for {session.timeout:g}s or more"
                        if isinstance(exc, TimeoutError)
                        else str(exc).rstrip(": ") or type(exc).__name__
                    )
                    errors.append(
                        f"{path}: connection lost after {out.artifact.size} bytes ({lost}); "
                        "the part fetched is kept"
                    )
                    if out.artifact.size:
                        copied.append(path)
                total += out.artifact.size
        facts: Facts = {"files": copied, "bytes": total, "matched": len(matches)}
        if old:
            facts["older_than_since"] = old
        return files_outcome(facts, copied, errors)

    @staticmethod
    def _fetch(
        ctx: StepContext,
        sftp: paramiko.SFTPClient,
        path: str,
        size: int,
        out: CappedWriter,
        tail: bool,
    ) -> None:
        cap = out.max_bytes
        skip = size - cap if tail and size > cap else 0
        import paramiko

        fh = sftp.open(path, "rb")
        try:
            if not size:  # /proc-like files report size 0: plain reads up to EOF or the cap
                while not out.full and (chunk := fh.read(min(CHUNK, cap - out.artifact.size))):
                    ctx.check()
                    out.write(chunk)
                if out.full and fh.read(1):
                    out.artifact.truncated = True
                return
            write: Callable[[bytes], int] = out.write
            if skip:
                out.artifact.truncated = True
                write = _from_next_line(out.write)
            sftp_read(sftp, fh, skip, min(size - skip, cap), write, ctx.check)
            if size - skip > cap:
                out.artifact.truncated = True
        except (OSError, paramiko.SSHException, EOFError) as exc:
            if _connection_lost(exc, sftp):
                # a dead link: close the channel so closing the file does not wait for an
                # answer that will never come (the session opens a new SFTP channel)
                channel = sftp.get_channel()
                if channel is not None:
                    channel.close()
            raise
        finally:
            fh.close()


def _from_next_line(write: Callable[[bytes], int]) -> Callable[[bytes], int]:
    """A writer that drops bytes up to the first newline (within 64 KiB): a tail starts on
    a whole line."""
    state = {"dropped": 0, "found": False}

    def inner(data: bytes) -> int:
        if not state["found"]:
            cut = data.find(b"\n")
            if cut < 0 and state["dropped"] + len(data) < 64 * 1024:
                state["dropped"] += len(data)
                return 0
            state["found"] = True
            data = data[cut + 1 :] if cut >= 0 else data
        return write(data)

    return inner


class _Responses:
    """Collects the answers to our pipelined SFTP reads; paramiko's SFTPClient calls
    ``_async_response`` for each response to a request registered with this object."""

    def __init__(self, sftp: paramiko.SFTPClient) -> None:
        self.sftp = sftp
        self.done: dict[int, bytes | BaseException] = {}

    def _async_response(self, t: int, msg: paramiko.Message, num: int) -> None:
        from paramiko.sftp import CMD_DATA, CMD_STATUS

        if t == CMD_DATA:
            self.done[num] = msg.get_string()
        elif t == CMD_STATUS:
            try:
                self.sftp._convert_status(msg)  # type: ignore[attr-defined]
                self.done[num] = b""
            except EOFError:
                self.done[num] = b""  # SFTP "end of file" status, not a lost connection
            except OSError as exc:
                self.done[num] = exc
        else:
            self.done[num] = OSError(f"unexpected SFTP response type {t}")


def sftp_read(
    sftp: paramiko.SFTPClient,
    fh: paramiko.SFTPFile,
    start: int,
    length: int,
    write: Callable[[bytes], object],
    check: Callable[[], None],
    request_size: int = 128 * 1024,
    window: int = 64,
) -> int:
    """Read ``length`` bytes from ``start`` of an open remote file with up to ``window``
    read requests in flight, handing data to ``write`` in order; returns bytes read.

    paramiko's own ``prefetch`` keeps the whole rest of the file in memory and can stall
    (see TESTBED.md), so this keeps a bounded window of requests (``window * request_size``
    bytes) using SFTPClient's request/response primitives. When sending fails (the
    connection is going down), the answers already in flight are still written. A dropped
    connection raises ``paramiko.SSHException``; a stalled one ``TimeoutError`` (the
    channel's timeout).
    """
    import paramiko
    from paramiko.sftp import CMD_READ, int64

    replies = _Responses(sftp)
    ask = sftp._async_request  # type: ignore[attr-defined]
    wait = sftp._read_response  # type: ignore[attr-defined]
    handle = fh.handle
    pending: deque[tuple[int, int, int]] = deque()
    end = start + length
    offset = start
    got = 0
    eof = False
    broken: BaseException | None = None  # sending failed: drain what is in flight, then raise

    def request(at: int, n: int) -> tuple[int, int, int] | None:
        nonlocal broken
        if broken is None:
            try:
                return ask(replies, CMD_READ, handle, int64(at), n), at, n
            except (OSError, EOFError, paramiko.SSHException) as exc:
                broken = exc
        return None

    while pending or (offset < end and not eof and broken is None):
        while not eof and broken is None and len(pending) < window and offset < end:
            n = min(request_size, end - offset)
            if (req := request(offset, n)) is not None:
                pending.append(req)
                offset += n
        if not pending:
            break
        num, at, n = pending.popleft()
        while num not in replies.done:
            wait()
        data = replies.done.pop(num)
        if isinstance(data, BaseException):
            raise data
        if eof:
            continue  # answers past the end of a file that shrank
        if not data:
            eof = True
            continue
        check()
        write(data)
        got += len(data)
        if len(data) < n:  # a short read: ask for the rest before anything else
            if (req := request(at + len(data), n - len(data))) is not None:
                pending.appendleft(req)
            else:
                break
    if broken is not None:
        raise paramiko.SSHException(f"connection lost: {broken}")
    return got


# --- ssh.capture ---------------------------------------------------------------------------


class SshCaptureOptions(Options):
    filter: str = ""
    interface: str = Field("any", pattern=r"^[A-Za-z0-9_.:@-]{1,64}$")
    duration: Duration = 60.0
    max_packets: int | None = Field(None, ge=1)
    max_bytes: Size = 200 * 1000**2
    snaplen: int = Field(262144, ge=64, le=262144)
    sudo: bool = False
    output: str = "capture.pcap"

    _output = field_validator("output")(lambda v: _output_name(v))


_PCAP_MAGIC = {
    b"\xd4\xc3\xb2\xa1": "<",
    b"\xa1\xb2\xc3\xd4": ">",
    b"\x4d\x3c\xb2\xa1": "<",  # nanosecond variants
    b"\xa1\xb2\x3c\x4d": ">",
}


class PcapStream:
    """Cuts a pcap byte stream into whole records, keeping at most ``max_bytes``."""

    def __init__(self, writer: CappedWriter, max_bytes: int, max_packets: int | None) -> None:
        self.writer = writer
        self.max_bytes = max_bytes
        self.max_packets = max_packets
        self.buf = bytearray()
        self.endian: str | None = None
        self.packets = 0
        self.bytes = 0
        self.full: str | None = None  # why no more records are kept

    def feed(self, data: bytes) -> bool:
        """Take stream bytes; False once a cap is reached (the capture should stop)."""
        if self.full:
            return False
        self.buf += data
        if self.endian is None:
            if len(self.buf) < 24:
                return True
            self.endian = _PCAP_MAGIC.get(bytes(self.buf[:4]))
            if self.endian is None:
                raise StepFailed("the device's tcpdump did not write a pcap stream")
            self._keep(24)
        while len(self.buf) >= 16:
            (incl,) = struct.unpack_from(self.endian + "I", self.buf, 8)
            if len(self.buf) < 16 + incl:
                break
            if self.bytes + 16 + incl > self.max_bytes:
                self.full = "max_bytes"
                return False
            self._keep(16 + incl)
            self.packets += 1
            if self.max_packets is not None and self.packets >= self.max_packets:
                self.full = "max_packets"
                return False
        return True

    def _keep(self, n: int) -> None:
        self.writer.write(bytes(self.buf[:n]))
        self.bytes += n
        del self.buf[:n]


_PID_TAG = "fieldtrace-pid:"
_PID_LINE = re.compile(rb"^" + _PID_TAG.encode() + rb"(\d+)\n?", re.MULTILINE)


class SshCapture(Collector):
    """Remote ``tcpdump -U -w -`` streamed into a pcap artifact, stopped at any cap."""

    name = "ssh.capture"
    transport = "ssh"
    Options = SshCaptureOptions
    summary = "packet capture on the device (remote tcpdump) into a pcap, with time/size caps"

    def deadline_for(self, options: Any) -> float:
        return float(options.duration) + 20.0

    @staticmethod
    def command(options: SshCaptureOptions) -> str:
        argv = ["tcpdump", "-U", "-n", "-w", "-", "-i", options.interface]
        argv += ["-s", str(options.snaplen)]
        if options.max_packets:
            argv += ["-c", str(options.max_packets)]
        if options.sudo:
            argv = ["sudo", "-n", *argv]
        if options.filter:
            argv += ["--", options.filter]
        # the shell tells its PID (which tcpdump inherits with exec), so the capture can be
        # stopped with kill(1) where the server ignores SSH signal requests
        return f"echo {_PID_TAG}$$ >&2; exec " + " ".join(shlex.quote(a) for a in argv)

    def collect(self, ctx: StepContext, device: DeviceInfo, options: SshCaptureOptions) -> Facts:
        session = _session(ctx)
        duration = max(0.5, min(options.duration, ctx.remaining() - 5.0))
        with ctx.sink.open(options.output, options.max_bytes) as out:
            pcap = PcapStream(out, options.max_bytes, options.max_packets)

            def kill(stderr: bytes) -> None:
                m = _PID_LINE.search(stderr)
                if m:
                    with contextlib.suppress(StepFailed):
                        session.run(f"kill -TERM {int(m.group(1))}", timeout=5)

            res = session.stream(
                self.command(options),
                pcap.feed,
                timeout=duration,
                cancel=ctx.cancel,
                on_stop=kill,
            )
        res = dataclasses.replace(res, stderr=_PID_LINE.sub(b"", res.stderr))
        stderr = res.stderr.decode("utf-8", "replace")
        if pcap.endian is None:
            self._no_capture(device, options, res, stderr)
        if pcap.full:
            reason = pcap.full
        elif res.cancelled:
            reason = "cancelled"
        elif res.timed_out:
            reason = "duration" if duration >= options.duration else "deadline"
        else:
            reason = "ended"
        facts: Facts = {
            "packets": pcap.packets,
            "bytes": pcap.bytes,
            "stop_reason": reason,
            "seconds": round(res.seconds, 3),
            "interface": options.interface,
            "filter": options.filter,
        }
        dropped = re.search(r"(\d+) packets? dropped by kernel", stderr)
        if dropped:
            facts["dropped_by_kernel"] = int(dropped.group(1))
        if res.cancelled:
            raise StepPartial("capture interrupted; the packets captured so far are kept", facts)
        if reason == "ended" and res.exit_status not in (0, None):
            raise StepPartial(
                f"tcpdump exited with status {res.exit_status}: {_last_line(res.stderr)}", facts
            )
        return facts

    @staticmethod
    def _no_capture(device: DeviceInfo, options: SshCaptureOptions, res: Any, err: str) -> None:
        last = " ".join(err.split())[:300]
        low = err.lower()
        if res.exit_status == 127 or ("not found" in low and "tcpdump" in low):
            raise StepFailed(
                f"tcpdump is not installed on {device.name} (or not on the login user's PATH): "
                f"{last}"
            )
        if "permission" in low or "not permitted" in low or "password is required" in low:
            raise StepFailed(
                f"no permission to capture on {options.interface} on {device.name}: {last} "
                "(log in as a user allowed to capture, give tcpdump CAP_NET_RAW, or set "
                "sudo: true with a sudoers rule for tcpdump)"
            )
        if res.timed_out or res.cancelled:
            return  # tcpdump ran but saw no packet before the stop: an empty capture
        raise StepFailed(f"tcpdump failed on {device.name} (exit status {res.exit_status}): {last}")
