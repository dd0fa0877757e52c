"""From the site config to delivery: the outbox and the configured HelpDesk backend.

``make_backend`` is the one place that turns ``[helpdesk]`` into a backend object; it
resolves secrets (ConfigError, exit 2, when one is missing) so a bad key file is reported
before anything is collected. Each backend's module is imported only when it is used.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from agent.errors import ConfigError, RuntimeFailure
from agent.logs import register_secret
from agent.settings import (
    DirectoryHelpdesk,
    EmailHelpdesk,
    HttpHelpdesk,
    RedmineHelpdesk,
    SecretRef,
    Settings,
)
from uploader.base import Backend
from uploader.outbox import Outbox, OutboxFull

if TYPE_CHECKING:
    from uploader.email import EmailBackend
    from uploader.http import HttpBackend


def make_outbox(settings: Settings, home: Path, create: bool = True) -> Outbox:
    o = settings.outbox
    return Outbox(home / "outbox", o.max_bytes, o.backoff_base, o.backoff_max, create)


def make_backend(
    settings: Settings, home: Path, progress: Callable[[int], None] | None = None
) -> Backend:
    """The backend ``[helpdesk]`` names; ``progress`` gets byte counts while uploading."""
    hd = settings.helpdesk
    if isinstance(hd, DirectoryHelpdesk):
        from uploader.directory import DirectoryBackend

        return DirectoryBackend(hd.path or home / "outbox" / "delivered")
    if isinstance(hd, RedmineHelpdesk):
        from uploader.redmine import RedmineBackend, RedmineOptions

        key = _secret(hd.api_key, "helpdesk.api_key")
        assert key is not None  # the key is required by the model
        options = RedmineOptions(
            url=hd.url,
            api_key=key,
            project=hd.project,
            tracker=hd.tracker,
            priority=hd.priority,
            timeout=hd.timeout,
            verify=str(hd.ca_file) if hd.ca_file else True,
        )
        return RedmineBackend(options, progress)
    if isinstance(hd, EmailHelpdesk):
        return email_backend(settings)
    if isinstance(hd, HttpHelpdesk):
        return http_backend(settings)
    raise ConfigError(f"helpdesk.backend: {hd.backend!r} has no backend")  # pragma: no cover


def _secret(ref: SecretRef | None, key: str) -> str | None:
    """The secret's value, registered with the log mask; ConfigError names the key."""
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
    from uploader.email import EmailBackend, SmtpConfig

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
    from uploader.http import META_FIELDS, HttpBackend, HttpConfig

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


def check_room(box: Outbox) -> None:
    """RuntimeFailure (exit 3) before collecting when the outbox is already full."""
    try:
        box.check_room()
    except OutboxFull as exc:
        raise RuntimeFailure(f"{exc}; nothing was collected") from None
