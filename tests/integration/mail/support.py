"""Real servers for the mail/http backend tests: aiosmtpd (STARTTLS + AUTH) and an HTTP
endpoint built on the stdlib ``http.server`` (multipart parsed by the stdlib ``email``)."""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import json
import os
import signal
import ssl
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.fixtures.ports import free_port
from uploader.base import DeliveryMeta

SMTP_USER = "ft-relay"
SMTP_PASSWORD = "ft-Relay-Passw0rd!"


def bundle_file(
    directory: Path, data: bytes, profile: str, **meta: Any
) -> tuple[Path, DeliveryMeta]:
    """``data`` saved as a bundle of device gw1 of ACME Telecom (named like the agent names
    them) and its DeliveryMeta; ``meta`` sets the other fields."""
    bid = uuid.uuid4().hex
    name = f"acme-telecom-gw1-{profile}-20261201T100000Z-{bid[:8]}.tar.zst.age"
    path = directory / name
    path.write_bytes(data)
    fields: dict[str, Any] = {"company": "ACME Telecom", "contract": "TS-2024-117", **meta}
    return path, DeliveryMeta(
        bundle_id=bid,
        name=name,
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        devices=("gw1",),
        profile=profile,
        **fields,
    )


def make_cert(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (cert.pem, key.pem), made with cryptography."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage

    def attachment(self) -> tuple[str, bytes]:
        parts = list(self.message.iter_attachments())
        assert len(parts) == 1, [p.get_filename() for p in parts]
        data = parts[0].get_payload(decode=True)
        assert isinstance(data, bytes)
        return parts[0].get_filename() or "", data

    def body(self) -> str:
        part = self.message.get_body(("plain",))
        assert part is not None
        return str(part.get_content())


# on_data(server, envelope, index) -> None to accept, or an SMTP reply to refuse
DataHook = Callable[[Any, Any, int], str | None]


class Recorder:
    """aiosmtpd handler: keeps every accepted message; ``on_data`` can refuse or misbehave."""

    def __init__(self) -> None:
        self.messages: list[Received] = []
        self.on_data: DataHook | None = None
        self.rcpt_reply: str | None = None  # e.g. "550 5.7.1 Relaying denied"
        self.seen = 0

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if self.rcpt_reply is not None:
            return self.rcpt_reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        index = self.seen
        self.seen += 1
        if self.on_data is not None:
            reply = self.on_data(server, envelope, index)
            if reply is not None:
                return reply
        msg = BytesParser(policy=policy.default).parsebytes(envelope.content)
        assert isinstance(msg, EmailMessage)
        self.messages.append(Received(envelope.mail_from, list(envelope.rcpt_tos), msg))
        return "250 Message accepted for delivery"

    def reset(self) -> None:
        self.messages.clear()
        self.on_data = None
        self.rcpt_reply = None
        self.seen = 0


def kill_sender_on(recorder: Recorder, pid: int, index: int) -> None:
    """While the server holds message ``index`` (0-based), kill -9 the process sending it and
    answer 451 (the sender never learns the answer)."""

    def on_data(server: Any, envelope: Any, i: int) -> str | None:
        if i == index:
            os.kill(pid, signal.SIGKILL)
            return "451 4.3.0 sender went away"
        return None

    recorder.on_data = on_data


def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> Any:
    from aiosmtpd.smtp import AuthResult, LoginPassword

    ok = (
        isinstance(data, LoginPassword)
        and data.login == SMTP_USER.encode()
        and data.password == SMTP_PASSWORD.encode()
    )
    return AuthResult(success=ok, handled=False)


@dataclass
class SmtpServer:
    host: str
    port: int
    ca_file: Path
    recorder: Recorder
    controller: Any


def start_smtp(
    cert: Path, key: Path, tls: str = "starttls", auth: bool = True, size_limit: int | None = None
) -> SmtpServer:
    """aiosmtpd on 127.0.0.1: STARTTLS required + AUTH (default), implicit TLS, or plain."""
    from aiosmtpd.controller import Controller

    recorder = Recorder()
    port = free_port()
    ctx = server_context(cert, key)
    kwargs: dict[str, Any] = {"hostname": "127.0.0.1", "port": port}
    if size_limit is not None:
        kwargs["data_size_limit"] = size_limit
    if tls == "tls":  # aiosmtpd cannot tell the socket is TLS: allow AUTH explicitly
        kwargs.update(ssl_context=ctx, auth_require_tls=False)
    elif tls == "starttls":
        kwargs.update(tls_context=ctx, require_starttls=True)
    if auth:
        kwargs.update(authenticator=authenticator, auth_required=True)
    controller = Controller(recorder, **kwargs)
    controller.start()
    return SmtpServer("127.0.0.1", port, cert, recorder, controller)


class JsonCheckpoint:
    """A durable checkpoint in a JSON file (what the outbox keeps beside an item)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.values: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}

    def get(self, key: str) -> Any:
        return self.values.get(key)

    def save(self, **values: Any) -> None:
        self.values.update(values)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent)
        with os.fdopen(fd, "w") as fh:
            json.dump(self.values, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)


# --- HTTP -----------------------------------------------------------------------------------


@dataclass
class HttpRequest:
    path: str
    headers: dict[str, str]
    fields: dict[str, str]
    files: dict[str, tuple[str, bytes]]


@dataclass
class Reply:
    status: int = 201
    body: bytes = b'{"ok": true}'
    headers: dict[str, str] = field(default_factory=lambda: {"Content-Type": "application/json"})
    delay: float = 0.0


class HttpEndpoint:
    """A HelpDesk-like upload endpoint; ``replies`` says how to answer the next requests."""

    def __init__(self, tls: tuple[Path, Path] | None = None) -> None:
        self.requests: list[HttpRequest] = []
        self.replies: list[Reply] = []
        self.default = Reply()
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                ctype = self.headers.get("Content-Type", "")
                msg = BytesParser(policy=policy.default).parsebytes(
                    f"Content-Type: {ctype}\r\nMIME-Version: 1.0\r\n\r\n".encode() + body
                )
                fields: dict[str, str] = {}
                files: dict[str, tuple[str, bytes]] = {}
                for part in msg.iter_parts():
                    name = part.get_param("name", header="content-disposition")
                    data = part.get_payload(decode=True)
                    assert isinstance(name, str) and isinstance(data, bytes)
                    if part.get_filename():
                        files[name] = (part.get_filename() or "", data)
                    else:
                        fields[name] = data.decode()
                endpoint.requests.append(
                    HttpRequest(self.path, dict(self.headers.items()), fields, files)
                )
                reply = endpoint.replies.pop(0) if endpoint.replies else endpoint.default
                if reply.delay:
                    time.sleep(reply.delay)
                try:
                    self.send_response(reply.status)
                    for k, v in reply.headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(reply.body)))
                    self.end_headers()
                    self.wfile.write(reply.body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (the timeout test)

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.server.daemon_threads = True
        self.scheme = "http"
        if tls is not None:
            ctx = server_context(*tls)
            self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
            self.scheme = "https"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.server.server_address[1]}/upload"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)

    def reset(self) -> None:
        self.requests.clear()
        self.replies.clear()
