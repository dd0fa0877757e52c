"""Shared fixtures: an isolated $FIELDTRACE_HOME and config per test, and a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Cli:
    """Runs ``fieldtrace`` in a subprocess with an isolated home and working directory."""

    home: Path
    cwd: Path
    env: dict[str, str]

    def run(
        self, *args: str, timeout: float = 120, check: int | None = None, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [sys.executable, "-m", "agent", *args],
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
        )
        if check is not None:
            assert proc.returncode == check, (
                f"exit {proc.returncode} != {check}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
            )
        return proc

    def start(self, *args: str, **popen: Any) -> subprocess.Popen[str]:
        """Start ``fieldtrace ARGS`` without waiting for it: text mode, stdout and stderr
        piped (``popen`` adds or overrides Popen arguments, e.g. ``stdin=``)."""
        kwargs: dict[str, Any] = {
            "cwd": self.cwd,
            "env": self.env,
            "stdout": subprocess.PIPE,
            "stderr": subprocess.PIPE,
            **popen,
        }
        return subprocess.Popen([sys.executable, "-m", "agent", *args], text=True, **kwargs)


@pytest.fixture
def ft_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("FIELDTRACE_HOME", str(home))
    monkeypatch.delenv("FIELDTRACE_CONFIG", raising=False)
    yield home


@pytest.fixture
def cli(tmp_path: Path, ft_home: Path) -> Cli:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FIELDTRACE_")}
    # XDG_CONFIG_HOME: the engineer's trusted_signers lives there; never the runner's own
    env.update(
        FIELDTRACE_HOME=str(ft_home), PYTHONPATH=str(REPO), XDG_CONFIG_HOME=str(tmp_path / "xdg")
    )
    return Cli(ft_home, cwd, env)
