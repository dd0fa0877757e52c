"""``email`` backend: the bundle mailed over SMTP to the vendor's support address.

From is the site's registered address (the vendor accepts mail only from it), To the support
address; the subject carries contract, company and ticket number so the HelpDesk files it.
TLS: STARTTLS (default; a relay on loopback that offers none is used in plain), implicit
TLS (SMTPS), or plain when ``tls = "none"`` is explicit.

A bundle over ``max_attachment_bytes`` is either refused (``oversize = "refuse"``) or split
into numbered parts ``NAME.part001-of-003`` mailed one per message (``"split"``);
``cat NAME.part* > NAME`` rejoins them byte for byte. Parts are read from the file one at a
time, never the whole bundle.

Idempotency: each part accepted by the server is recorded in the outbox item's checkpoint
(``email_sent_parts``) before the next is sent, so a retry after a crash or a dropped
connection sends only the missing parts. Every message has a stable Message-ID derived from
the bundle id and part number, so a HelpDesk can drop the one duplicate a crash between the
server's "250" and the checkpoint write can cause. SMTP 4xx replies and connection problems
are transient; 5xx (authentication failed, relay or sender refused, message too big) are
permanent.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import smtplib
import ssl
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate
from pathlib import Path
from typing import Literal

from uploader.base import (
    Checkpoint,
    DeliveryMeta,
    MemoryCheckpoint,
    PermanentError,
    Receipt,
    TransientError,
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


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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
            if cfg.tls == "starttls" and not smtp.has_extn("starttls") and _loopback(cfg.host):
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
        try:
            smtp = self._connect()
            with open(bundle_path, "rb") as fh:
                for index in todo:
                    fh.seek((index - 1) * part_size)
                    data = fh.read(part_size)
                    msg = self._message(meta, index, total, data, (index - 1) * part_size)
                    self._send(smtp, msg, index, total)
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
            raise TransientError(f"{self._where()}: {exc.strerror or exc}") from exc
        except smtplib.SMTPException as exc:  # e.g. STARTTLS or AUTH not offered
            raise PermanentError(f"{self._where()}: {exc}") from exc
        finally:
            if smtp is not None:
                smtp.close()

    def _message(
        self, meta: DeliveryMeta, index: int, total: int, data: bytes, first: int
    ) -> EmailMessage:
        cfg = self.config
        part = part_name(meta.name, index, total)
        msg = EmailMessage()
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
        msg.set_content(_body(meta, index, total, part, first, len(data)))
        msg.add_attachment(data, maintype="application", subtype="octet-stream", filename=part)
        return msg

    def _send(self, smtp: smtplib.SMTP, msg: EmailMessage, index: int, total: int) -> None:
        cfg = self.config
        try:
            refused = smtp.send_message(msg, from_addr=cfg.sender, to_addrs=list(cfg.recipients))
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            detail = "; ".join(
                f"{rcpt}: {code} {text.decode(errors='replace')}"
                for rcpt, (code, text) in exc.recipients.items()
            )
            text = f"{self._where()} refused the support address ({detail})"
            if all(code >= 500 for code in codes):
                raise PermanentError(
                    f"{text}; check [helpdesk] to, and that the server relays for {cfg.sender}"
                ) from exc
            raise TransientError(text) from exc
        except smtplib.SMTPSenderRefused as exc:
            raise _smtp_error(exc, f"{self._where()} refused the sender {cfg.sender}") from exc
        except smtplib.SMTPDataError as exc:
            err = _smtp_error(exc, f"{self._where()} refused part {index}/{total}")
            if exc.smtp_code == 552:
                raise PermanentError(
                    f"{err}; lower [helpdesk] max_attachment_bytes (base64 makes a message "
                    "about a third bigger than its attachment)"
                ) from exc
            raise err from exc
        if refused:
            log.warning("email: some recipients refused part %d/%d: %s", index, total, refused)
