"""The smaller commands: kb, config check, keys, outbox."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import Cli
from tests.e2e.helpers import collect_json, write_site

pytestmark = pytest.mark.e2e


def test_kb_list_and_show(cli: Cli) -> None:
    rows = json.loads(cli.run("kb", "list", "--json", check=0).stdout)
    host = next(r for r in rows if r["type"] == "linux-host")
    assert "default" in host["profiles"] and "network" in host["profiles"]
    shown = json.loads(cli.run("kb", "show", "linux-host", "--json", check=0).stdout)
    assert shown["remote_access"] == [{"port": 22, "protocol": "tcp", "purpose": "ssh"}]
    steps = shown["profiles"]["default"]["steps"]
    assert {"id": "uname", "collector": "local.command", "command": "uname -a"} in steps
    text = cli.run("kb", "show", "linux-host", check=0).stdout
    assert "profile default: General health snapshot" in text
    bad = cli.run("kb", "show", "nosuch", check=2)
    assert "unknown KB type 'nosuch'" in bad.stderr
    assert "KB ok" in cli.run("kb", "validate", check=0).stdout


def test_config_check_ok_and_bad_secret_reference(cli: Cli, tmp_path: Path) -> None:
    proc = cli.run("config", "check", check=0)
    assert (
        "config ok: (embedded default)" in proc.stdout and "no [vendor] recipients" in proc.stdout
    )
    write_site(cli, ['{id: a, collector: local.command, command: "echo hi"}'],
               f'[scrub]\nvalues = [{{ file = "{tmp_path}/missing.secret" }}]\n')  # fmt: skip
    bad = cli.run("config", "check", check=2)
    assert "fieldtrace.toml: scrub.values[0]: secret: cannot read" in bad.stderr
    assert "missing.secret" in bad.stderr


def test_keys_are_created_once_and_stable(cli: Cli) -> None:
    first = json.loads(cli.run("keys", "show", "--json", check=0).stdout)
    second = json.loads(cli.run("keys", "show", "--json", check=0).stdout)
    assert first == second
    assert first["fingerprint"].startswith("SHA256:")
    assert first["signing_key"].startswith("ssh-ed25519 ")
    assert first["age_recipient"].startswith("age1")
    key = cli.home / "signing_key.pem"
    assert key.stat().st_mode & 0o777 == 0o600


def test_outbox_list_and_deliver(cli: Cli, tmp_path: Path) -> None:
    dest = tmp_path / "drop"
    write_site(cli, ['{id: a, collector: local.command, command: "echo hi"}'],
               f'[helpdesk]\nbackend = "directory"\npath = "{dest}"\n')  # fmt: skip
    data = collect_json(cli, check=0)
    assert Path(data["bundle"]).parent == dest
    rows = json.loads(cli.run("outbox", "list", "--json", check=0).stdout)
    assert [r["state"] for r in rows] == ["sent"] and rows[0]["location"] == data["bundle"]
    assert "nothing queued" in cli.run("outbox", "deliver", check=0).stdout


def test_failed_delivery_keeps_the_bundle_until_it_is_delivered(cli: Cli, tmp_path: Path) -> None:
    dest = tmp_path / "drop"
    dest.write_text("a file where the delivery directory should be")
    write_site(cli, ['{id: a, collector: local.command, command: "echo hi"}'],
               f'[helpdesk]\nbackend = "directory"\npath = "{dest}"\n')  # fmt: skip
    proc = cli.run("collect", check=1)  # collected fine, but the delivery needs a human
    assert "delivery: parked" in proc.stdout
    rows = json.loads(cli.run("outbox", "list", "--json", check=0).stdout)
    assert [r["state"] for r in rows] == ["parked"] and str(dest) in rows[0]["last_error"]
    dest.unlink()
    assert "1 bundle(s) back in the queue" in cli.run("outbox", "retry", check=0).stdout
    out = cli.run("outbox", "deliver", check=0).stdout
    assert out.startswith("sent")
    delivered = list(dest.iterdir())
    assert len(delivered) == 1 and delivered[0].name == rows[0]["name"]
    assert delivered[0].read_bytes().startswith(b"age-encryption.org/v1")
    rows = json.loads(cli.run("outbox", "list", "--json", check=0).stdout)
    assert [r["state"] for r in rows] == ["sent"]
    assert "nothing queued" in cli.run("outbox", "deliver", check=0).stdout
