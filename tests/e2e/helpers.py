"""Helpers for end-to-end tests: site configs with a test KB, opening bundles with stock tools."""

from __future__ import annotations

import hashlib
import json
import subprocess
import textwrap
from pathlib import Path
from typing import Any

from tests.conftest import Cli


def write_site(
    cli: Cli,
    steps: list[str],
    extra_config: str = "",
    ktype: str = "box",
    allow: list[str] | None = None,
) -> Path:
    """A site config whose device ``local`` has KB type ``ktype`` with ``steps`` as default;
    ``allow``: patterns for the type's ``read_only.allow`` (commands beyond the defaults)."""
    kbdir = cli.cwd / "kb"
    kbdir.mkdir(exist_ok=True)
    body = "\n".join(f"      - {s}" for s in steps)
    read_only = f"read_only: {{allow: {json.dumps(allow)}}}\n" if allow else ""
    (kbdir / f"{ktype}.yaml").write_text(
        f"type: {ktype}\ntitle: Test box\n{read_only}profiles:\n  default:\n    title: t\n"
        f"    steps:\n{body}\n"
    )
    config = cli.cwd / "fieldtrace.toml"
    config.write_text(
        textwrap.dedent(
            f"""\
            [site]
            company = "ACME Telecom"
            contract = "TS-2024-117"
            contact_email = "noc@acme.example"
            [kb]
            paths = ["{kbdir}"]
            [[devices]]
            name = "local"
            type = "{ktype}"
            address = "localhost"
            """
        )
        + extra_config
    )
    return config


def collect_json(cli: Cli, *args: str, check: int | None = None) -> dict[str, Any]:
    proc = cli.run("collect", "--json", *args, check=check)
    assert proc.stdout, proc.stderr
    data: dict[str, Any] = json.loads(proc.stdout)
    data["_stderr"] = proc.stderr
    return data


def open_with_stock_tools(bundle: Path, identity: Path, dest: Path) -> Path:
    """``age -d -i identity bundle | tar --zstd -x`` into dest; returns the top directory."""
    dest.mkdir(parents=True, exist_ok=True)
    age = subprocess.Popen(["age", "-d", "-i", str(identity), str(bundle)], stdout=subprocess.PIPE)
    tar = subprocess.run(
        ["tar", "--zstd", "-x", "-C", str(dest)], stdin=age.stdout, capture_output=True, timeout=60
    )
    assert age.wait(timeout=60) == 0, "age -d failed"
    assert tar.returncode == 0, tar.stderr
    tops = [p for p in dest.iterdir() if p.is_dir()]
    assert len(tops) == 1, tops
    return tops[0]


def manifest_of(top: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((top / "manifest.json").read_text())
    return data


def step(manifest: dict[str, Any], step_id: str) -> dict[str, Any]:
    found = [s for s in manifest["steps"] if s["id"] == step_id]
    assert len(found) == 1, step_id
    return found[0]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
