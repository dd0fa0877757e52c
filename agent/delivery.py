"""From the site config to delivery: the outbox and the configured HelpDesk backend.

``make_backend`` is the one place that turns ``[helpdesk]`` into a backend object; it
resolves secrets (ConfigError, exit 2, when one is missing) so a bad key file is reported
before anything is collected. Each backend's module is imported only when it is used.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from agent.errors import ConfigError, RuntimeFailure
from agent.logs import register_secret
from agent.settings import DirectoryHelpdesk, RedmineHelpdesk, Settings
from uploader.base import Backend
from uploader.outbox import Outbox, OutboxFull


def make_outbox(settings: Settings, home: Path) -> Outbox:
    o = settings.outbox
    return Outbox(home / "outbox", o.max_bytes, o.backoff_base, o.backoff_max)


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

        try:
            key = hd.api_key.resolve()
        except ConfigError as exc:
            raise ConfigError(f"helpdesk.api_key: {exc}") from None
        if not key:
            raise ConfigError(f"helpdesk.api_key: the {hd.api_key.describe()} is empty")
        register_secret(key)
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
    raise ConfigError(f"helpdesk.backend: {hd.backend!r} has no backend")  # pragma: no cover


def check_room(box: Outbox) -> None:
    """RuntimeFailure (exit 3) before collecting when the outbox is already full."""
    try:
        box.check_room()
    except OutboxFull as exc:
        raise RuntimeFailure(f"{exc}; nothing was collected") from None
