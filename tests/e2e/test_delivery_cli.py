"""Delivery settings end to end: the outbox size cap and a missing HelpDesk key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import Cli
from tests.e2e.helpers import write_site
from uploader.base import DeliveryMeta
from uploader.outbox import Outbox

pytestmark = pytest.mark.e2e
STEP = ['{id: a, collector: local.command, command: "head -c 20000 /dev/urandom"}']


def test_bundle_over_the_outbox_cap_is_refused_and_kept(cli: Cli, tmp_path: Path) -> None:
    drop = tmp_path / "drop"
    write_site(cli, STEP, f'[helpdesk]\npath = "{drop}"\n[outbox]\nmax_bytes = "4KB"\n')
    proc = cli.run("collect", check=3)
    assert "the outbox is full" in proc.stderr and "max_bytes" in proc.stderr
    assert "NOT queued; it is kept at " in proc.stderr
    kept = Path(proc.stderr.split("it is kept at ")[1].split(" (take it")[0])
    assert kept.is_file() and kept.read_bytes().startswith(b"age-encryption.org/v1")
    assert not list((cli.home / "outbox/queue").iterdir())
    assert not (tmp_path / "drop").exists()


def test_full_outbox_refuses_before_collecting(cli: Cli, tmp_path: Path) -> None:
    write_site(cli, STEP, '[helpdesk]\nbackend = "directory"\n[outbox]\nmax_bytes = "4KB"\n')
    box = Outbox(cli.home / "outbox")
    for i in range(2):  # two parked bundles already take 6 KB
        tmp = box.tmp_dir() / f"old{i}.tar.zst.age"
        tmp.write_bytes(b"x" * 3000)
        box.put(tmp, DeliveryMeta(bundle_id=f"{i}" * 32, name=tmp.name, size=3000, sha256=""))
        box._move(box.items("queued")[0], "parked")
    proc = cli.run("collect", check=3)
    assert "the outbox is full: 2 bundle(s) take 6000 bytes" in proc.stderr
    assert "nothing was collected" in proc.stderr
    rows = json.loads(cli.run("outbox", "list", "--json", check=0).stdout)
    assert sorted(r["state"] for r in rows) == ["parked", "parked"]  # nothing deleted


def test_missing_helpdesk_key_is_a_config_error_before_collecting(cli: Cli) -> None:
    write_site(cli, STEP, '[helpdesk]\nbackend = "redmine"\nurl = "http://127.0.0.1:9"\n'
               'api_key = { file = "/nonexistent/helpdesk.key" }\nproject = "diag"\n')  # fmt: skip
    proc = cli.run("collect", check=2)
    assert "helpdesk.api_key" in proc.stderr and "/nonexistent/helpdesk.key" in proc.stderr
    assert not list((cli.home / "outbox").rglob("*.age"))
    proc = cli.run("config", "check", check=2)
    assert "helpdesk.api_key: secret: cannot read /nonexistent/helpdesk.key" in proc.stderr
