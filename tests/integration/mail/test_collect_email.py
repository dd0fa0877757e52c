"""``fieldtrace collect --attach --subject`` with the email backend, end to end: the SMTP
server receives the bundle, and stock tools show the attachment with its manifest entry."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from tests.conftest import Cli
from tests.e2e.helpers import collect_json, manifest_of, open_with_stock_tools, sha256, write_site
from tests.integration.mail.support import SMTP_PASSWORD, SMTP_USER, SmtpServer

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + os.urandom(3000)


def email_site(cli: Cli, smtp: SmtpServer, extra: str = "") -> None:
    secret = cli.cwd / "smtp.password"
    secret.write_text(SMTP_PASSWORD + "\n")
    write_site(
        cli,
        ["{id: uname, collector: local.command, command: uname -a}"],
        f"""
[helpdesk]
backend = "email"
host = "{smtp.host}"
port = {smtp.port}
ca_file = "{smtp.ca_file}"
username = "{SMTP_USER}"
password = {{ file = "{secret}" }}
to = "support@vendor.example"
{extra}
""",
    )


def test_collect_attach_subject_mailed_and_opened_with_stock_tools(
    cli: Cli, smtp: SmtpServer, tmp_path: Path
) -> None:
    email_site(cli, smtp)
    shot = cli.cwd / "shot.png"
    shot.write_bytes(PNG)
    notes = cli.cwd / "my notes.txt"
    notes.write_text("calls drop after 30 s\nrouter password = Pl4nted-Secret\n")
    data = collect_json(
        cli,
        "--attach",
        str(shot),
        "--attach",
        str(notes),
        "--subject",
        "Calls drop after 30s",
        "--description",
        "Since Monday every call drops.",
        check=0,
    )
    assert data["delivery"]["outcome"] == "sent", data
    assert len(smtp.recorder.messages) == 1
    got = smtp.recorder.messages[0]
    assert got.mail_from == "noc@acme.example"
    assert got.message["Subject"].strip() == "[TS-2024-117] ACME Telecom: Calls drop after 30s"
    assert "Since Monday every call drops." in got.body()
    filename, blob = got.attachment()
    assert filename.endswith(".tar.zst.age") and data["bundle_id"][:8] in filename
    bundle = tmp_path / filename
    bundle.write_bytes(blob)
    top = open_with_stock_tools(bundle, cli.home / "identity.txt", tmp_path / "open")
    m = manifest_of(top)
    entries = {a["name"]: a for a in m["attachments"]}
    assert entries["shot.png"]["path"] == "attachments/shot.png"
    assert (top / "attachments/shot.png").read_bytes() == PNG
    assert entries["shot.png"]["sha256"] == hashlib.sha256(PNG).hexdigest()
    assert entries["shot.png"]["size"] == len(PNG)
    # a text attachment is scrubbed like any artifact; the manifest hashes what is packed
    text = entries["my notes.txt"]
    assert text["path"] == "attachments/my_notes.txt"
    packed = (top / text["path"]).read_text()
    assert "Pl4nted-Secret" not in packed and "calls drop after 30 s" in packed
    assert sum(text["scrubbed"].values()) == 1 and text["sha256"] == sha256(top / text["path"])
    assert m["job"]["subject"] == "Calls drop after 30s"
    assert cli.run("bundle", "inspect", str(bundle), check=0).stdout.count("attached by") == 2


def test_attach_missing_file_exits_2_naming_it_before_collecting(
    cli: Cli, smtp: SmtpServer
) -> None:
    email_site(cli, smtp)
    proc = cli.run("collect", "--attach", str(cli.cwd / "nope.png"), check=2)
    assert f"--attach {cli.cwd / 'nope.png'}: no such file" in proc.stderr
    proc = cli.run("collect", "--attach", str(cli.cwd), check=2)
    assert "is a directory; attach files one by one" in proc.stderr
    assert smtp.recorder.messages == []
    assert not list((cli.home / "outbox").rglob("*.age"))


def test_oversize_refused_parks_the_bundle_with_the_reason(cli: Cli, smtp: SmtpServer) -> None:
    email_site(cli, smtp, 'max_attachment_bytes = "1KB"\noversize = "refuse"')
    data = collect_json(cli, check=1)
    assert data["delivery"]["outcome"] == "parked"
    assert "max_attachment_bytes" in data["delivery"]["message"]
    assert smtp.recorder.messages == []
    listing = cli.run("outbox", "list", check=0).stdout
    assert "parked" in listing and "oversize" in listing
