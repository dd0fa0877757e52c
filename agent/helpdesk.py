"""Build the ``email`` and ``http`` backends from ``[helpdesk]`` (uploader never reads config).

Secrets are passed as callables resolved at each delivery; a secret that cannot be read is
a ``PermanentError`` (the item is parked with the reason until someone fixes the file).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.errors import ConfigError
from agent.settings import EmailHelpdesk, HttpHelpdesk, SecretRef, Settings
from uploader.base import PermanentError
from uploader.email import EmailBackend, SmtpConfig
from uploader.http import META_FIELDS, HttpBackend, HttpConfig


def _secret(ref: SecretRef, what: str) -> Callable[[], str]:
    def resolve() -> str:
        try:
            return ref.resolve()
        except ConfigError as exc:
            raise PermanentError(f"{what}: {exc}") from None

    return resolve


def email_backend(settings: Settings) -> EmailBackend:
    hd = settings.helpdesk
    assert isinstance(hd, EmailHelpdesk)
    sender = hd.from_ or settings.site.contact_email  # one of them is set (checked at load)
    return EmailBackend(
        SmtpConfig(
            host=hd.host,
            port=hd.smtp_port,
            sender=sender,
            recipients=tuple(hd.to),
            tls=hd.tls,
            username=hd.username,
            password=_secret(hd.password, "helpdesk.password") if hd.password else None,
            ca_file=hd.ca_file,
            timeout=hd.timeout,
            max_attachment_bytes=hd.max_attachment_bytes,
            oversize=hd.oversize,
        )
    )


def http_backend(settings: Settings) -> HttpBackend:
    hd = settings.helpdesk
    assert isinstance(hd, HttpHelpdesk)
    names = hd.fields.model_dump()
    return HttpBackend(
        HttpConfig(
            url=hd.url,
            file_field=hd.fields.file,
            fields={f: names[f] for f in META_FIELDS},
            extra_fields=dict(hd.extra_fields),
            auth_header=hd.auth_header,
            auth_value=_secret(hd.auth_value, "helpdesk.auth_value") if hd.auth_value else None,
            success_codes=frozenset(hd.success_codes),
            response_ticket_field=hd.response_ticket_field,
            ca_file=hd.ca_file,
            connect_timeout=hd.connect_timeout,
            timeout=hd.timeout,
        )
    )


def make_backend(settings: Settings, outbox_root: Path) -> Any:
    """The configured backend (stand-in until the outbox worker's ``make_backend`` lands)."""
    from uploader.directory import DirectoryBackend

    hd = settings.helpdesk
    if isinstance(hd, EmailHelpdesk):
        return email_backend(settings)
    if isinstance(hd, HttpHelpdesk):
        return http_backend(settings)
    return DirectoryBackend(hd.path or outbox_root / "delivered")
