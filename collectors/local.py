"""Collectors that run on the agent's own host: ``local.command`` and ``local.file``."""

from __future__ import annotations

import contextlib
import glob
import os
import shlex
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import IO

from pydantic import field_validator

from collectors.base import (
    CappedWriter,
    Collector,
    DeviceInfo,
    Facts,
    SinkClosed,
    StepContext,
    StepFailed,
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


def _pump(src: IO[bytes], dst: CappedWriter | bytearray, cap: int) -> None:
    """Copy a pipe into a capped writer (or a bytearray), draining past the cap."""
    while chunk := src.read1(65536):  # type: ignore[attr-defined]
        if isinstance(dst, bytearray):
            room = cap - len(dst)
            if room > 0:
                dst += chunk[:room]
        elif not dst.full:
            with contextlib.suppress(SinkClosed):  # keep draining so the child never blocks
                dst.write(chunk)


class LocalCommandOptions(CommandOptions):
    @field_validator("command")
    @classmethod
    def _splits(cls, value: str) -> str:
        try:
            argv = shlex.split(value)
        except ValueError as exc:
            raise ValueError(f"cannot split command like a shell would: {exc}") from exc
        if not argv:
            raise ValueError("command is empty")
        return value


class LocalCommand(Collector):
    """Run a command on the agent host (argv, no shell) and keep its output."""

    name = "local.command"
    transport = "local"
    Options = LocalCommandOptions
    summary = "run a command on this host (no shell), keep stdout/stderr and exit status"

    def collect(self, ctx: StepContext, device: DeviceInfo, options: LocalCommandOptions) -> Facts:
        argv = shlex.split(options.command)
        env = dict(os.environ, LC_ALL="C", LANG="C", TERM="dumb", SYSTEMD_PAGER="", PAGER="cat")
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                start_new_session=True,
            )
        except FileNotFoundError as exc:
            if options.missing_ok:
                raise StepSkipped(f"{argv[0]}: not installed on this host") from exc
            raise StepFailed(f"{argv[0]}: command not found (is it installed?)") from exc
        except PermissionError as exc:
            raise StepFailed(f"{argv[0]}: permission denied") from exc
        started = time.monotonic()
        stderr = bytearray()
        assert proc.stdout is not None and proc.stderr is not None
        timed_out = False
        with ctx.sink.open(options.output or "output.txt", options.max_bytes) as out:
            pumps = [
                threading.Thread(target=_pump, args=(proc.stdout, out, options.max_bytes)),
                threading.Thread(target=_pump, args=(proc.stderr, stderr, STDERR_CAP)),
            ]
            for t in pumps:
                t.start()
            limit = started + min(options.timeout, ctx.remaining())
            while proc.poll() is None:
                if ctx.cancel.is_set() or time.monotonic() >= limit:
                    timed_out = True
                    _kill_group(proc)
                    break
                time.sleep(0.02)
            proc.wait()
            for t in pumps:
                t.join(timeout=5)
        if stderr:
            ctx.sink.write_bytes("stderr.txt", bytes(stderr))
        facts: Facts = {
            "argv": argv,
            "exit_status": proc.returncode,
            "seconds": round(time.monotonic() - started, 3),
            "stdout_bytes": out.artifact.size,
        }
        if timed_out:
            raise StepTimeout(
                f"{argv[0]} still running after {time.monotonic() - started:.1f}s; killed"
            )
        if proc.returncode not in options.ok_exit_codes:
            detail = last_line(stderr, 200)
            raise StepFailed(f"exit status {proc.returncode}{': ' + detail if detail else ''}")
        return facts


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class LocalFileOptions(FileOptions):
    pass


class LocalFile(Collector):
    """Copy files (globs) from the agent host, each capped, optionally keeping the tail."""

    name = "local.file"
    transport = "local"
    Options = LocalFileOptions
    default_deadline = 120.0
    summary = "copy files matching globs from this host, with size caps and tail mode"

    def collect(self, ctx: StepContext, device: DeviceInfo, options: LocalFileOptions) -> Facts:
        patterns = options.patterns
        paths = sorted({p for pat in patterns for p in glob.glob(pat) if os.path.isfile(p)})
        if not paths:
            msg = f"no file matches {', '.join(patterns)}"
            raise StepSkipped(msg) if options.missing_ok else StepFailed(msg)
        total = 0
        copied: list[str] = []
        errors: list[str] = []
        for src in paths:
            ctx.check()
            room = options.total_max_bytes - total
            if room <= 0:
                errors.append(f"{src}: not copied, total_max_bytes reached")
                continue
            try:
                total += self._copy(
                    ctx, Path(src), file_artifact(src), min(options.max_bytes, room), options.tail
                )
                copied.append(src)
            except OSError as exc:
                errors.append(f"{src}: {exc.strerror or exc}")
        return files_outcome({"files": copied, "bytes": total}, copied, errors)

    @staticmethod
    def _copy(ctx: StepContext, src: Path, name: str, cap: int, tail: bool) -> int:
        with open(src, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            skip = size - cap if tail and size > cap else 0
            if skip:
                fh.seek(skip)
                fh.readline()  # start on a whole line
            with ctx.sink.open(name, cap) as out:
                while chunk := fh.read(1024 * 1024):
                    out.write(chunk)
                    if out.full:
                        break
                if skip or (not out.artifact.truncated and fh.read(1)):
                    out.artifact.truncated = True
                return out.artifact.size
