"""Project-wide properties: dependency direction, fast --help, the shipped KB and example."""

from __future__ import annotations

import ast
import subprocess
import sys
import time
import tomllib
from pathlib import Path

from agent.kb import load_kb, shipped_kb_dir
from agent.settings import Settings

REPO = Path(__file__).resolve().parents[2]


def _imports(package: str) -> set[str]:
    found = set()
    for py in (REPO / package).rglob("*.py"):
        for node in ast.walk(ast.parse(py.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module.split(".")[0])
    return found


def test_dependencies_point_one_way() -> None:
    assert not _imports("collectors") & {"agent", "uploader"}
    assert not _imports("uploader") & {"agent", "collectors"}


def test_help_is_fast() -> None:
    best = 99.0
    for _ in range(3):
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "agent", "--help"], capture_output=True, text=True, cwd=REPO
        )
        best = min(best, time.perf_counter() - t0)
        assert proc.returncode == 0 and "collect" in proc.stdout
    assert best < 0.3, f"fieldtrace --help took {best:.3f}s"
    # and it does not pull in the heavy libraries
    code = (
        "import sys; from agent.cli import build_parser; build_parser(); "
        "print(sorted(m for m in ('pydantic','yaml','pyrage','zstandard','psutil','rich',"
        "'cryptography') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_shipped_kb_loads_and_linux_host_is_useful() -> None:
    kb = load_kb()
    host = kb.get("linux-host")
    assert (shipped_kb_dir() / "linux-host.yaml").is_file()
    collectors = {s.collector for s in host.profiles["default"].steps}
    assert collectors >= {"host.snapshot", "local.command", "local.file"}
    ids = {s.id for s in host.profiles["default"].steps}
    assert ids >= {
        "snapshot",
        "uname",
        "disk",
        "inodes",
        "routes",
        "sockets",
        "processes",
        "kernel-log",
        "journal",
        "time-sync",
    }


def test_example_config_is_valid_and_documents_every_section() -> None:
    text = (REPO / "config" / "fieldtrace.example.toml").read_text()
    data = tomllib.loads(text)
    settings = Settings.model_validate(data)
    for section in ("site", "vendor", "helpdesk", "outbox", "kb", "devices", "scrub", "collect"):
        assert f"[{section}]" in text or f"[[{section}]]" in text, section
    assert settings.site.company
