"""``email`` backend: the bundle mailed over SMTP to the vendor's support address.

From is the site's registered address (the vendor accepts mail only from it), To the support
address; the subject carries contract, company and ticket number so the HelpDesk files it.
TLS: STARTTLS (default; a relay on loopback that offers none is used in plain), implicit
TLS (SMTPS), or plain when ``tls = "none"`` is explicit.

A bundle over ``max_attachment_bytes`` is either refused (``oversize = "refuse"``) or split
into numbered parts ``NAME.part001-of-003`` mailed one per message (``"split"``);
``cat NAME.part* > NAME`` rejoins them byte for byte. The email package builds each message
around an empty attachment; the part's bytes are then read, base64-encoded and sent in ~1 MiB
pieces inside smtplib's DATA command, so memory stays flat whatever the bundle or part size.

Idempotency: each part accepted by the server is recorded in the outbox item's checkpoint
(``email_sent_parts``) before the next is sent, so a retry after a crash or a dropped
connection sends only the missing parts. Every message has a stable Message-ID derived from
the bundle id and part number, so a HelpDesk can drop the one duplicate a crash between the
server's "250" and the checkpoint write can cause. SMTP 4xx replies and connection problems
are transient; 5xx (authentication failed, relay or sender refused, message too big) are
permanent.
"""

from __future__ import annotations

import base64
import logging
import math
import re
import smtplib
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from email.utils import formatdate
from pathlib import Path
from typing import BinaryIO, Literal

from uploader.base import (
    Checkpoint,
    DeliveryMeta,
    MemoryCheckpoint,
    PermanentError,
    Receipt,
    TransientError,
    is_loopback,
    network_problem,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SmtpConfig:
    """Everything the backend needs (the password already resolved by the agent)."""

    host: str
    port: int
    sender: str
    recipients: tuple[str, ...]
    tls: Literal["starttls", "tls", "none"] = "starttls"
    username: str | None = None
    password: str | None = None
    ca_file: Path | None = None
    timeout: float = 60.0
    max_attachment_bytes: int = 10 * 1000**2
    oversize: Literal["split", "refuse"] = "split"


def part_name(name: str, index: int, total: int) -> str:
    """``NAME`` for a single part, else ``NAME.part002-of-003`` (sorts in order for ``cat``)."""
    if total == 1:
        return name
    width = max(3, len(str(total)))
    return f"{name}.part{index:0{width}d}-of-{total:0{width}d}"


def subject_for(meta: DeliveryMeta, index: int = 1, total: int = 1) -> str:
    """``[TS-2024-117] ACME Telecom: ticket #4711: fieldtrace bundle gw1 sip-calls``."""
    title = meta.subject or " ".join(
        ["fieldtrace bundle", *meta.devices, *([meta.profile] if meta.profile else [])]
    )
    head = " ".join(x for x in (f"[{meta.contract}]" if meta.contract else "", meta.company) if x)
    pieces = [p for p in (head, f"ticket #{meta.ticket}" if meta.ticket else "", title) if p]
    subject = ": ".join(pieces)
    return f"{subject} (part {index}/{total})" if total > 1 else subject


def message_id(meta: DeliveryMeta, index: int, total: int, sender: str) -> str:
    domain = sender.rpartition("@")[2] or "fieldtrace.invalid"
    return f"<fieldtrace.{meta.bundle_id}.{index}of{total}@{domain}>"


def _body(meta: DeliveryMeta, index: int, total: int, part: str, first: int, size: int) -> str:
    lines = []
    if meta.description:
        lines += [meta.description.strip(), ""]
    if meta.summary:
        lines += [meta.summary.strip(), ""]
    lines += [
        f"Company:  {meta.company or '-'}",
        f"Contract: {meta.contract or '-'}",
        f"Contact:  {meta.contact_email or '-'}",
        f"Ticket:   {'#' + meta.ticket if meta.ticket else 'none yet: please open one'}",
        f"Devices:  {', '.join(meta.devices) or '-'}; profile {meta.profile or '-'}",
        f"Bundle:   {meta.name} ({meta.size} bytes, sha256 {meta.sha256})",
    ]
    if total > 1:
        lines += [
            f"Part:     {index} of {total}: {part} (bytes {first}-{first + size - 1})",
            "",
            f"The bundle was split into {total} parts, each in its own message. Rejoin them with",
            f"  cat {meta.name}.part* > {meta.name}",
            f"and check: sha256sum {meta.name} must print {meta.sha256}.",
        ]
    lines += [
        "",
        "The bundle is encrypted with age to the vendor's key; open it with",
        f"  age -d -i KEY {meta.name} | tar --zstd -x",
    ]
    return "\n".join(lines) + "\n"


def _smtp_error(exc: smtplib.SMTPResponseException, what: str) -> Exception:
    text = exc.smtp_error.decode(errors="replace") if isinstance(exc.smtp_error, bytes) else ""
    msg = f"{what}: {exc.smtp_code} {text}".strip()
    return PermanentError(msg) if exc.smtp_code >= 500 else TransientError(msg)


class EmailBackend:
    """Mails the bundle (or its parts) from the registered address to the support address."""

    name = "email"
    capabilities = frozenset({"create", "attach"})

    def __init__(self, config: SmtpConfig) -> None:
        self.config = config

    # --- connection ---------------------------------------------------------------------

    def _where(self) -> str:
        return f"SMTP server {self.config.host}:{self.config.port}"

    def _connect(self) -> smtplib.SMTP:
        cfg = self.config
        ctx = ssl.create_default_context(cafile=str(cfg.ca_file) if cfg.ca_file else None)
        smtp: smtplib.SMTP
        if cfg.tls == "tls":
            smtp = smtplib.SMTP_SSL(cfg.host, cfg.port, timeout=cfg.timeout, context=ctx)
        else:
            smtp = smtplib.SMTP(cfg.host, cfg.port, timeout=cfg.timeout)
        try:
            smtp.ehlo()
            if cfg.tls == "starttls" and not smtp.has_extn("starttls") and is_loopback(cfg.host):
                log.info("email: %s offers no STARTTLS; plain on loopback", self._where())
            elif cfg.tls == "starttls":
                if not smtp.has_extn("starttls"):
                    raise PermanentError(
                        f'{self._where()} does not offer STARTTLS; set [helpdesk] tls = "tls" '
                        "if it expects TLS from the start, or use another server"
                    )
                smtp.starttls(context=ctx)
                smtp.ehlo()
            if cfg.username is not None and cfg.password is not None:
                self._login(smtp, cfg.username, cfg.password)
        except BaseException:
            smtp.close()
            raise
        return smtp

    def _login(self, smtp: smtplib.SMTP, username: str, password: str) -> None:
        try:
            smtp.login(username, password)
        except smtplib.SMTPAuthenticationError as exc:
            err = _smtp_error(exc, f"{self._where()}: authentication as {username} failed")
            if isinstance(err, PermanentError):
                raise PermanentError(
                    f"{err}; check [helpdesk] username and the password secret"
                ) from exc
            raise err from exc
        except smtplib.SMTPNotSupportedError as exc:
            raise PermanentError(
                f"{self._where()} offers no AUTH on this connection; check [helpdesk] tls "
                "(most servers allow AUTH only after STARTTLS)"
            ) from exc

    # --- delivery -----------------------------------------------------------------------

    def deliver(
        self, bundle_path: Path, meta: DeliveryMeta, checkpoint: Checkpoint | None = None
    ) -> Receipt:
        cfg = self.config
        state = checkpoint if checkpoint is not None else MemoryCheckpoint()
        try:
            size = bundle_path.stat().st_size
        except OSError as exc:
            raise PermanentError(f"{bundle_path}: cannot read the bundle: {exc.strerror}") from exc
        limit = cfg.max_attachment_bytes
        if size > limit and cfg.oversize == "refuse" and state.get("email_part_size") is None:
            raise PermanentError(
                f"{meta.name}: the bundle is {size} bytes, over the e-mail limit of {limit} bytes "
                '([helpdesk] max_attachment_bytes) and oversize = "refuse": raise the limit if '
                'the vendor\'s mail server takes bigger mail, set oversize = "split", or send '
                "the bundle another way"
            )
        # a retry keeps the split it started with, even if the limit was changed since
        part_size = int(state.get("email_part_size") or limit)
        total = max(1, math.ceil(size / part_size))
        sent: set[int] = set(state.get("email_sent_parts") or [])
        todo = [i for i in range(1, total + 1) if i not in sent]
        if todo:
            state.save(email_part_size=part_size, email_parts=total)
            self._send_parts(bundle_path, meta, state, part_size, total, sent, todo)
        ids = [message_id(meta, i, total, cfg.sender) for i in range(1, total + 1)]
        return Receipt(
            self.name,
            f"mailto:{','.join(cfg.recipients)}",
            meta.ticket,
            {
                "parts": total,
                "part_size": part_size,
                "message_ids": ids,
                "sent_now": todo,
                "from": cfg.sender,
            },
        )

    def _send_parts(
        self,
        bundle_path: Path,
        meta: DeliveryMeta,
        state: Checkpoint,
        part_size: int,
        total: int,
        sent: set[int],
        todo: list[int],
    ) -> None:
        smtp: smtplib.SMTP | None = None
        size = bundle_path.stat().st_size
        try:
            smtp = self._connect()
            with open(bundle_path, "rb") as fh:
                for index in todo:
                    first = (index - 1) * part_size
                    length = min(part_size, size - first)
                    head, tail = self._frame(meta, index, total, first, length)
                    fh.seek(first)
                    self._send(smtp, head, _base64_lines(fh, length), tail, length, index, total)
                    sent.add(index)
                    state.save(email_sent_parts=sorted(sent))
                    log.info("email: %s part %d/%d accepted", meta.name, index, total)
            smtp.quit()
        except smtplib.SMTPResponseException as exc:
            raise _smtp_error(exc, f"{self._where()} refused the message") from exc
        except smtplib.SMTPServerDisconnected as exc:
            raise TransientError(f"{self._where()} closed the connection: {exc}") from exc
        except ssl.SSLCertVerificationError as exc:
            raise PermanentError(
                f"{self._where()}: TLS certificate not trusted ({exc.verify_message}); set "
                "[helpdesk] ca_file to the CA that signed it"
            ) from exc
        except OSError as exc:  # refused, reset, timeout, DNS
            cfg = self.config
            raise TransientError(
                network_problem(exc, cfg.host, cfg.port, service="SMTP server ")
            ) from exc
        except smtplib.SMTPException as exc:  # e.g. STARTTLS or AUTH not offered
            raise PermanentError(f"{self._where()}: {exc}") from exc
        finally:
            if smtp is not None:
                smtp.close()

    def _frame(
        self, meta: DeliveryMeta, index: int, total: int, first: int, length: int
    ) -> tuple[bytes, bytes]:
        """The message around the attachment's base64 body, built by the email package.

        The attachment is added empty with ``Content-Transfer-Encoding: base64``; the
        flattened message is cut where its (empty) body is, so the bundle's bytes can be
        encoded and sent chunk by chunk in between: memory stays flat whatever the part size.
        """
        cfg = self.config
        part = part_name(meta.name, index, total)
        msg = EmailMessage(policy=_POLICY)
        msg["From"] = cfg.sender
        msg["To"] = ", ".join(cfg.recipients)
        msg["Subject"] = subject_for(meta, index, total)
        msg["Date"] = formatdate(localtime=False, usegmt=True)
        msg["Message-ID"] = message_id(meta, index, total, cfg.sender)
        if index > 1:  # keeps the parts in one thread (and one ticket) in most HelpDesks
            first_id = message_id(meta, 1, total, cfg.sender)
            msg["In-Reply-To"] = first_id
            msg["References"] = first_id
        # no "Auto-Submitted: auto-generated": HelpDesks (Redmine among them) drop such mail
        msg["X-Fieldtrace-Bundle"] = meta.bundle_id
        msg["X-Fieldtrace-Part"] = f"{index}/{total}"
        msg.set_content(_body(meta, index, total, part, first, length))
        msg.add_attachment(b"", maintype="application", subtype="octet-stream", filename=part)
        flat = msg.as_bytes()
        boundary = msg.get_boundary()
        assert boundary is not None
        cut = flat.rindex(f"\r\n--{boundary}--".encode())
        head, tail = flat[:cut], flat[cut:]
        if not head.endswith(b"\r\n\r\n"):  # the attachment's headers end with a blank line
            raise AssertionError("unexpected MIME layout from the email package")
        return _DOT.sub(b"..", head), _DOT.sub(b"..", tail)

    def _send(
        self,
        smtp: smtplib.SMTP,
        head: bytes,
        body: Iterator[bytes],
        tail: bytes,
        length: int,
        index: int,
        total: int,
    ) -> None:
        """One SMTP transaction (smtplib's commands), the DATA streamed in pieces."""
        cfg = self.config
        options = []
        if smtp.has_extn("size"):  # lets the server refuse a too-big message up front
            options.append(f"SIZE={len(head) + _base64_size(length) + len(tail) + 5}")
        code, resp = smtp.mail(cfg.sender, options)
        if code != 250:
            err = _smtp_error(
                smtplib.SMTPSenderRefused(code, resp, cfg.sender),
                f"{self._where()} refused the sender {cfg.sender}",
            )
            if code == 552:
                raise PermanentError(f"{err}; {_TOO_BIG}")
            raise err
        refused = {}
        for rcpt in cfg.recipients:
            code, resp = smtp.rcpt(rcpt)
            if code not in (250, 251):
                refused[rcpt] = (code, resp)
        if len(refused) == len(cfg.recipients):
            smtp.rset()
            codes = [code for code, _ in refused.values()]
            detail = "; ".join(
                f"{rcpt}: {code} {text.decode(errors='replace')}"
                for rcpt, (code, text) in refused.items()
            )
            text = f"{self._where()} refused the support address ({detail})"
            if all(code >= 500 for code in codes):
                raise PermanentError(
                    f"{text}; check [helpdesk] to, and that the server relays for {cfg.sender}"
                )
            raise TransientError(text)
        code, resp = smtp.docmd("data")
        if code != 354:
            raise _smtp_error(
                smtplib.SMTPDataError(code, resp), f"{self._where()} refused the DATA command"
            )
        smtp.send(head)
        for chunk in body:
            smtp.send(chunk)
        smtp.send(tail + b"\r\n.\r\n")
        code, resp = smtp.getreply()
        if code != 250:
            err = _smtp_error(
                smtplib.SMTPDataError(code, resp), f"{self._where()} refused part {index}/{total}"
            )
            if code == 552:
                raise PermanentError(f"{err}; {_TOO_BIG}")
            raise err
        if refused:
            log.warning("email: some recipients refused part %d/%d: %s", index, total, refused)


_POLICY = policy.SMTP.clone(cte_type="7bit")  # CRLF, 7-bit clean (no 8BITMIME needed)
_DOT = re.compile(rb"(?m)^\.")  # SMTP dot-stuffing (base64 lines never start with ".")
_RAW_LINE = 57  # bytes per 76-character base64 line
_CHUNK = _RAW_LINE * 16384  # ~0.9 MiB read, encoded and sent at a time
_TOO_BIG = (
    "lower [helpdesk] max_attachment_bytes (base64 makes a message about a third bigger "
    "than its attachment)"
)


def _base64_size(length: int) -> int:
    encoded = 4 * math.ceil(length / 3)
    return encoded + 2 * math.ceil(encoded / 76)


def _base64_lines(fh: BinaryIO, length: int) -> Iterator[bytes]:
    """``length`` bytes from ``fh`` as base64 in 76-character CRLF lines, ~1 MiB at a time."""
    left = length
    while left > 0:
        data = fh.read(min(_CHUNK, left))
        if not data:
            raise OSError(f"the bundle is shorter than expected ({left} bytes missing)")
        left -= len(data)
        yield base64.encodebytes(data).replace(b"\n", b"\r\n")
