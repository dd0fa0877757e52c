"""How hints name the program (agent.cli.common.prog); the CLI-level cases are e2e."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from agent.cli import common


@pytest.fixture
def invoked(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    script = tmp_path / "fieldtrace"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    common.prog.cache_clear()
    yield script
    common.prog.cache_clear()


def test_a_script_in_the_current_directory_keeps_its_dot_slash(
    invoked: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "argv", [str(invoked)])
    assert common.prog() == "./fieldtrace"  # plain "fieldtrace" would search PATH


def test_a_path_with_a_space_is_escaped_and_hints_are_rewritten(
    invoked: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spaced = invoked.parent / "my tools" / "fieldtrace"
    spaced.parent.mkdir()
    invoked.rename(spaced)
    monkeypatch.setattr(sys, "argv", [str(spaced)])
    assert common.prog() == "my\\ tools/fieldtrace"
    # only quoted hints are rewritten: not the marker line, not prose about the program
    text = "run 'fieldtrace outbox list' (fieldtrace-bundle: x, fieldtrace as root)"
    assert common.hint(text) == (
        "run 'my\\ tools/fieldtrace outbox list' (fieldtrace-bundle: x, fieldtrace as root)"
    )


def test_python_dash_m_agent(invoked: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["/somewhere/agent/__main__.py"])
    monkeypatch.setattr(sys, "executable", "/opt/ft/venv/bin/python3")
    assert common.prog() == "/opt/ft/venv/bin/python3 -m agent"
