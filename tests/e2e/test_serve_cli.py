"""The service's commands from the CLI, without a HelpDesk: what a site admin types first."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import Cli

pytestmark = pytest.mark.e2e


def test_config_check_says_what_the_directory_backend_loses(cli: Cli) -> None:
    out = cli.run("config", "check", check=0).stdout
    assert "the directory backend cannot, so `fieldtrace serve` will not:" in out
    assert "read ticket notes" in out
    data = json.loads(cli.run("config", "check", "--json", check=0).stdout)
    assert data["helpdesk_capabilities"] == ["attach"]
    assert set(data["helpdesk_lacks"]) == {"create", "note", "read_notes", "search",
                                           "ticket_state"}  # fmt: skip


def test_health_list_and_run_on_the_embedded_default(cli: Cli) -> None:
    listed = json.loads(cli.run("health", "list", "--json", check=0).stdout)
    keys = {c["check"] for c in listed}
    assert {"local/disk", "local/inodes", "local/memory", "local/load"} <= keys
    proc = cli.run("health", "run", "disk", "--json")
    assert proc.returncode in (0, 1)
    (row,) = json.loads(proc.stdout)
    assert row["check"] == "local/disk" and "% full" in row["message"]


def test_health_run_unknown_check_is_a_usage_error(cli: Cli) -> None:
    proc = cli.run("health", "run", "dsik", check=2)
    assert "unknown check dsik" in proc.stderr and "local/disk" in proc.stderr


def test_a_bad_health_override_names_the_field(cli: Cli) -> None:
    cfg = cli.cwd / "site.toml"
    cfg.write_text('[site]\ncompany = "A"\ncontract = "C"\n[[health]]\ncheck = "nosuch"\n')
    proc = cli.run("-c", str(cfg), "config", "check", check=2)
    assert "health[0].check: no check 'nosuch'" in proc.stderr


def test_request_create_refuses_bad_input(cli: Cli, tmp_path: Path) -> None:
    args = ["--ticket", "1", "--profile", "default", "--site", "acme"]
    proc = cli.run("request", "create", "--key", str(tmp_path / "nokey"), "--device", "gw1",
                   *args, check=2)  # fmt: skip
    assert "not found" in proc.stderr
    key = tmp_path / "k"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "e@v", "-f", str(key)],
                   check=True, timeout=30)  # fmt: skip
    proc = cli.run("request", "create", "--key", str(key), "--ticket", "1", "--device",
                   "gw 1;id", "--profile", "default", "--site", "acme", check=2)  # fmt: skip
    assert "devices" in proc.stderr
    ok = cli.run("request", "create", "--key", str(key), "--ticket", "#12", "--device", "gw1",
                 "--profile", "default", "--site", "acme", check=0).stdout  # fmt: skip
    assert ok.startswith("-----BEGIN FIELDTRACE REQUEST-----\nsite: acme\nticket: 12\n")
    assert "requested_by: e@v\n-----BEGIN SSH SIGNATURE-----" in ok


def test_requests_and_audit_on_a_new_site(cli: Cli) -> None:
    assert "no requests received" in cli.run("requests", "list", check=0).stdout
    proc = cli.run("requests", "approve", "abc", check=2)
    assert "no pending request with id 'abc'" in proc.stderr
    out = cli.run("audit", "--verify", check=0).stdout
    assert "chain: intact" in out


def test_health_steps_are_held_to_the_read_only_allow_list(cli: Cli) -> None:
    kb = cli.cwd / "kb"
    kb.mkdir()
    (kb / "box.yaml").write_text(
        "type: box\ntitle: t\nprofiles:\n  default:\n    title: t\n    steps:\n"
        '      - {id: u, collector: local.command, command: "uname -a"}\n'
        "health:\n  wipe:\n"
        '    step: {collector: local.command, command: "rm -rf /var/log"}\n'
        "    expect: {match: x}\n"
    )
    cfg = cli.cwd / "site.toml"
    cfg.write_text(
        f'[site]\ncompany = "A"\ncontract = "C"\n[kb]\npaths = ["{kb}"]\n'
        '[[devices]]\nname = "local"\ntype = "box"\naddress = "localhost"\n'
    )
    proc = cli.run("-c", str(cfg), "config", "check", check=2)
    assert "health.wipe.step.command: 'rm -rf /var/log'" in proc.stderr
    (kb / "box.yaml").write_text((kb / "box.yaml").read_text().split("health:")[0])
    cfg.write_text(
        cfg.read_text() + '[[health]]\ncheck = "wipe"\ndevice = "local"\n'
        'step = { collector = "local.command", command = "shutdown -h now" }\n'
        'expect = { match = "x" }\n'
    )
    proc = cli.run("-c", str(cfg), "config", "check", check=2)
    assert "health[0].step.command: 'shutdown -h now'" in proc.stderr
