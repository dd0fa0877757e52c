"""The ``email`` backend against a real SMTP server (aiosmtpd, STARTTLS + AUTH, loopback)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from agent.delivery import email_backend
from agent.settings import Settings
from tests.conftest import REPO
from tests.integration.mail.support import (
    SMTP_PASSWORD,
    SMTP_USER,
    JsonCheckpoint,
    SmtpServer,
    bundle_file,
    kill_sender_on,
    start_smtp,
)
from uploader.base import DeliveryMeta, MemoryCheckpoint, PermanentError, TransientError
from uploader.email import EmailBackend

pytestmark = pytest.mark.integration

SITE = {"company": "ACME Telecom", "contract": "TS-2024-117", "contact_email": "noc@acme.example"}
SUPPORT = "support@vendor.example"


def helpdesk_settings(smtp: SmtpServer, tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    """Settings (as parsed from TOML) mailing to ``smtp`` with STARTTLS and AUTH."""
    secret = tmp_path / "smtp.password"
    secret.write_text(SMTP_PASSWORD + "\n")
    helpdesk = {
        "backend": "email",
        "host": smtp.host,
        "port": smtp.port,
        "ca_file": str(smtp.ca_file),
        "username": SMTP_USER,
        "password": {"file": str(secret)},
        "to": SUPPORT,
        "timeout": "10s",
        **overrides,
    }
    return {"site": SITE, "helpdesk": helpdesk}


def make_backend(smtp: SmtpServer, tmp_path: Path, **overrides: Any) -> EmailBackend:
    return email_backend(Settings.model_validate(helpdesk_settings(smtp, tmp_path, **overrides)))


def make_bundle(
    tmp_path: Path, size: int, ticket: str | None = "4711"
) -> tuple[Path, DeliveryMeta]:
    path, meta = bundle_file(
        tmp_path,
        os.urandom(size),
        "sip-calls",
        ticket=ticket,
        company=SITE["company"],
        contract=SITE["contract"],
        contact_email=SITE["contact_email"],
    )
    summary = f"fieldtrace bundle {meta.bundle_id[:8]}: profile sip-calls on gw1; 2 steps ok 2"
    return path, replace(meta, summary=summary)


def test_bundle_mailed_from_registered_address_with_company_contract_ticket(
    smtp: SmtpServer, tmp_path: Path
) -> None:
    path, meta = make_bundle(tmp_path, 200_000)
    receipt = make_backend(smtp, tmp_path).deliver(path, meta)
    assert len(smtp.recorder.messages) == 1
    got = smtp.recorder.messages[0]
    assert got.mail_from == "noc@acme.example"
    assert got.message["From"] == "noc@acme.example"
    assert got.rcpt_tos == [SUPPORT] and got.message["To"] == SUPPORT
    assert got.message["Subject"].strip() == (  # folded after "Subject:"
        "[TS-2024-117] ACME Telecom: ticket #4711: fieldtrace bundle gw1 sip-calls"
    )
    assert got.message["Message-ID"] == f"<fieldtrace.{meta.bundle_id}.1of1@acme.example>"
    filename, data = got.attachment()
    assert filename == meta.name
    assert hashlib.sha256(data).hexdigest() == meta.sha256
    body = got.body()
    assert meta.summary in body and "TS-2024-117" in body and meta.sha256 in body
    assert receipt.backend == "email" and receipt.ticket == "4711"
    assert receipt.detail["parts"] == 1


def test_helpdesk_from_overrides_and_new_ticket_subject(smtp: SmtpServer, tmp_path: Path) -> None:
    path, meta = make_bundle(tmp_path, 1000, ticket=None)
    meta = DeliveryMeta(**{**meta.to_json(), "subject": "Calls drop after 30s"})
    make_backend(smtp, tmp_path, **{"from": "diag@acme.example"}).deliver(path, meta)
    got = smtp.recorder.messages[0]
    assert got.mail_from == "diag@acme.example" and got.message["From"] == "diag@acme.example"
    assert got.message["Subject"].strip() == "[TS-2024-117] ACME Telecom: Calls drop after 30s"


def test_split_parts_rejoin_byte_identical_with_cat(smtp: SmtpServer, tmp_path: Path) -> None:
    path, meta = make_bundle(tmp_path, 250_000)
    receipt = make_backend(smtp, tmp_path, max_attachment_bytes=100_000).deliver(path, meta)
    msgs = smtp.recorder.messages
    assert len(msgs) == 3 and receipt.detail["parts"] == 3
    outdir = tmp_path / "received"
    outdir.mkdir()
    for i, got in enumerate(msgs, 1):
        assert got.message["Subject"].endswith(f"fieldtrace bundle gw1 sip-calls (part {i}/3)")
        assert got.mail_from == "noc@acme.example"
        filename, data = got.attachment()
        assert filename == f"{meta.name}.part{i:03d}-of-003"
        assert len(data) <= 100_000
        (outdir / filename).write_bytes(data)
        assert f"cat {meta.name}.part* > {meta.name}" in got.body()
    parts = sorted(str(p) for p in outdir.glob(f"{meta.name}.part*"))
    with open(outdir / meta.name, "wb") as out:
        subprocess.run(["cat", *parts], stdout=out, check=True, timeout=30)
    assert (outdir / meta.name).read_bytes() == path.read_bytes()


def test_oversize_refused_by_config(smtp: SmtpServer, tmp_path: Path) -> None:
    path, meta = make_bundle(tmp_path, 150_000)
    backend = make_backend(smtp, tmp_path, max_attachment_bytes="100KB", oversize="refuse")
    with pytest.raises(PermanentError) as err:
        backend.deliver(path, meta)
    assert "150000 bytes" in str(err.value) and "max_attachment_bytes" in str(err.value)
    assert smtp.recorder.messages == []


def test_plain_client_refused_by_a_starttls_server_is_permanent(
    smtp: SmtpServer, tmp_path: Path
) -> None:
    path, meta = make_bundle(tmp_path, 1000)
    with pytest.raises(PermanentError) as err:
        make_backend(smtp, tmp_path, tls="none", username=None, password=None).deliver(path, meta)
    assert "530" in str(err.value)


def test_wrong_password_is_permanent(smtp: SmtpServer, tmp_path: Path) -> None:
    path, meta = make_bundle(tmp_path, 1000)
    backend = make_backend(smtp, tmp_path)
    backend = EmailBackend(replace(backend.config, password="not-the-password"))
    with pytest.raises(PermanentError) as err:
        backend.deliver(path, meta)
    assert "authentication as ft-relay failed: 535" in str(err.value)
    assert "password secret" in str(err.value)
    assert smtp.recorder.messages == []


@pytest.mark.parametrize(
    ("reply", "error"),
    [("550 5.7.1 Relaying denied", PermanentError), ("450 4.2.0 Mailbox busy", TransientError)],
)
def test_recipient_refused_5xx_permanent_4xx_transient(
    smtp: SmtpServer, tmp_path: Path, reply: str, error: type[Exception]
) -> None:
    smtp.recorder.rcpt_reply = reply
    path, meta = make_bundle(tmp_path, 1000)
    with pytest.raises(error) as err:
        make_backend(smtp, tmp_path).deliver(path, meta)
    assert f"{SUPPORT}: {reply}" in str(err.value)
    assert smtp.recorder.messages == []


def test_untrusted_certificate_is_permanent(smtp: SmtpServer, tmp_path: Path) -> None:
    path, meta = make_bundle(tmp_path, 1000)
    backend = make_backend(smtp, tmp_path, ca_file=None)
    with pytest.raises(PermanentError) as err:
        backend.deliver(path, meta)
    assert "certificate" in str(err.value) and "ca_file" in str(err.value)


def test_server_dropping_the_connection_is_transient(smtp: SmtpServer, tmp_path: Path) -> None:
    def drop(server: Any, envelope: Any, index: int) -> str | None:
        server.transport.abort()
        return "421 closing"

    smtp.recorder.on_data = drop
    path, meta = make_bundle(tmp_path, 1000)
    with pytest.raises(TransientError) as err:
        make_backend(smtp, tmp_path).deliver(path, meta)
    assert "closed the connection" in str(err.value)
    assert smtp.recorder.messages == []


def test_4xx_is_transient_and_retry_sends_only_missing_parts(
    smtp: SmtpServer, tmp_path: Path
) -> None:
    smtp.recorder.on_data = lambda server, env, i: "451 4.3.0 try again later" if i == 1 else None
    path, meta = make_bundle(tmp_path, 300_000)
    backend = make_backend(smtp, tmp_path, max_attachment_bytes=100_000)
    checkpoint = MemoryCheckpoint()
    with pytest.raises(TransientError) as err:
        backend.deliver(path, meta, checkpoint)
    assert "451" in str(err.value)
    assert [m.attachment()[0][-6:] for m in smtp.recorder.messages] == ["of-003"]
    assert checkpoint.get("email_sent_parts") == [1]
    smtp.recorder.on_data = None
    receipt = backend.deliver(path, meta, checkpoint)
    assert receipt.detail["sent_now"] == [2, 3]
    names = [m.attachment()[0] for m in smtp.recorder.messages]
    assert names == [f"{meta.name}.part{i:03d}-of-003" for i in (1, 2, 3)]
    # delivered once: a further retry sends nothing
    assert backend.deliver(path, meta, checkpoint).detail["sent_now"] == []
    assert len(smtp.recorder.messages) == 3


CRASH_SCRIPT = """
import json, sys
from pathlib import Path
from agent.delivery import email_backend
from agent.settings import Settings
from tests.integration.mail.support import JsonCheckpoint
from uploader.base import DeliveryMeta
cfg = json.loads(sys.argv[1])
backend = email_backend(Settings.model_validate(cfg["settings"]))
backend.deliver(Path(cfg["bundle"]), DeliveryMeta.from_json(cfg["meta"]),
                JsonCheckpoint(Path(cfg["checkpoint"])))
"""


def test_retry_after_a_crash_sends_only_the_missing_parts(smtp: SmtpServer, tmp_path: Path) -> None:
    """The sending process is killed (SIGKILL) while the server holds part 3; the next
    attempt, from the checkpoint on disk, sends part 3 only."""
    path, meta = make_bundle(tmp_path, 260_000)
    settings = helpdesk_settings(smtp, tmp_path, max_attachment_bytes=100_000)
    ckpt = tmp_path / "item.checkpoint.json"
    arg = json.dumps(
        {"settings": settings, "bundle": str(path), "meta": meta.to_json(), "checkpoint": str(ckpt)}
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", CRASH_SCRIPT, arg],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stderr=subprocess.PIPE,
    )
    kill_sender_on(smtp.recorder, proc.pid, 2)
    try:
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()
    assert len(smtp.recorder.messages) == 2
    assert json.loads(ckpt.read_text())["email_sent_parts"] == [1, 2]

    smtp.recorder.on_data = None
    backend = make_backend(smtp, tmp_path, max_attachment_bytes=100_000)
    receipt = backend.deliver(path, meta, JsonCheckpoint(ckpt))
    assert receipt.detail["sent_now"] == [3]
    msgs = smtp.recorder.messages
    ids = [m.message["Message-ID"] for m in msgs]
    assert ids == [f"<fieldtrace.{meta.bundle_id}.{i}of3@acme.example>" for i in (1, 2, 3)]
    assert b"".join(m.attachment()[1] for m in msgs) == path.read_bytes()


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")  # implicit TLS
@pytest.mark.parametrize(
    ("server_tls", "client_tls"), [("tls", "tls"), ("none", "none"), ("none", "starttls")]
)
def test_implicit_tls_and_plain_loopback(
    server_tls: str, client_tls: str, tls_cert: tuple[Path, Path], tmp_path: Path
) -> None:
    """SMTPS; plain when configured; a loopback relay without STARTTLS is used in plain."""
    server = start_smtp(*tls_cert, tls=server_tls, auth=server_tls == "tls")
    try:
        path, meta = make_bundle(tmp_path, 5000)
        overrides: dict[str, Any] = {"tls": client_tls}
        if server_tls == "none":
            overrides.update(username=None, password=None)
        make_backend(server, tmp_path, **overrides).deliver(path, meta)
        assert len(server.recorder.messages) == 1
        assert server.recorder.messages[0].attachment()[1] == path.read_bytes()
    finally:
        server.controller.stop()


def test_message_over_the_servers_size_limit_is_permanent(
    tls_cert: tuple[Path, Path], tmp_path: Path
) -> None:
    """ESMTP SIZE: the server refuses before the data is sent; the fix is named."""
    server = start_smtp(*tls_cert, tls="none", auth=False, size_limit=50_000)
    try:
        path, meta = make_bundle(tmp_path, 60_000)
        backend = make_backend(server, tmp_path, tls="none", username=None, password=None)
        with pytest.raises(PermanentError) as err:
            backend.deliver(path, meta)
        assert "552" in str(err.value) and "lower [helpdesk] max_attachment_bytes" in str(err.value)
        assert server.recorder.messages == []
        # split below the server's limit, the same bundle goes through
        split = make_backend(
            server, tmp_path, tls="none", username=None, password=None, max_attachment_bytes=30_000
        )
        assert split.deliver(path, meta).detail["parts"] == 2
        assert b"".join(m.attachment()[1] for m in server.recorder.messages) == path.read_bytes()
    finally:
        server.controller.stop()
