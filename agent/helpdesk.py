"""Build the ``email`` and ``http`` backends from ``[helpdesk]`` (uploader never reads config).

Secrets are resolved here, when the backend is built (before anything is collected): a
missing or empty one is a ConfigError (exit 2) naming the key; the value is registered with
the log filter so it never shows up in a log.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agent.errors import ConfigError
from agent.logs import register_secret
from agent.settings import EmailHelpdesk, HttpHelpdesk, SecretRef, Settings
from uploader.email import EmailBackend, SmtpConfig
from uploader.http import META_FIELDS, HttpBackend, HttpConfig


def _secret(ref: SecretRef | None, key: str) -> str | None:
    if ref is None:
        return None
    try:
        value = ref.resolve()
    except ConfigError as exc:
        raise ConfigError(f"{key}: {exc}") from None
    if not value:
        raise ConfigError(f"{key}: the {ref.describe()} is empty")
    register_secret(value)
    return value


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
            password=_secret(hd.password, "helpdesk.password"),
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
            auth_value=_secret(hd.auth_value, "helpdesk.auth_value"),
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
