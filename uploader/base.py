"""The upload backend contract.

A backend delivers one finished (encrypted) bundle to the HelpDesk:
``deliver(bundle_path, meta) -> Receipt``.

* It must be idempotent on ``meta.bundle_id``: delivering the same bundle twice (after a
  crash, a retry) must not create a second attachment; a backend checks what the HelpDesk
  already has before it uploads or attaches.
* It says how an error should be handled by raising ``TransientError`` (worth retrying:
  timeouts, 5xx, connection resets, a full disk that may be freed) or ``PermanentError``
  (retrying cannot help: bad credentials, unknown ticket, file refused as too large).
  Anything else it raises is treated as transient and logged as a bug.
* Retries, backoff and the spool live in the outbox worker, never in a backend.
* Beyond delivery a backend declares its ``capabilities`` (``CAPABILITIES``): ``create``
  (a delivery without a ticket opens one), ``attach``, ``note`` (``add_note``),
  ``read_notes`` (``notes_since``), ``search`` (``find_marker``) and ``ticket_state``
  (``ticket_state``). The service uses what the configured backend has; ``config check``
  says what a site loses with a backend that lacks some (``directory`` only attaches).
* A backend whose delivery takes several steps (create the ticket, upload, attach) may
  also accept ``checkpoint=``: a small durable record kept with the outbox item. What it
  saves there (the ticket it created, the upload token) survives a crash, so the next
  attempt resumes instead of starting over (``ResumableBackend``).
"""

from __future__ import annotations

import errno
import ipaddress
import re
import socket
import ssl
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol


@dataclass(frozen=True)
class DeliveryMeta:
    """What a backend may know about a bundle besides its bytes."""

    bundle_id: str
    name: str
    size: int
    sha256: str
    ticket: str | None = None
    company: str = ""
    contract: str = ""
    contact_email: str = ""
    devices: tuple[str, ...] = ()
    profile: str = ""
    summary: str = ""
    subject: str = ""
    created: str = ""
    description: str = ""  # the technician's own words for a new ticket
    priority: str = ""  # the HelpDesk's priority name for a new ticket (health severities)
    preface: str = ""  # text put first in the ticket's description or the attaching note
    markers: tuple[str, ...] = ()  # extra marker lines (problem fingerprint, operation id)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DeliveryMeta:
        data = dict(data)
        data["devices"] = tuple(data.get("devices", ()))
        data["markers"] = tuple(data.get("markers", ()))
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class Receipt:
    """Where the bundle landed (a path, an attachment URL) and on which ticket."""

    backend: str
    location: str
    ticket: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)


class DeliveryError(Exception):
    """Base of backend errors; the message is shown to the user and kept with the item."""


class TransientError(DeliveryError):
    """Retry later (timeouts, 5xx, connection resets, temporarily full disk)."""


class PermanentError(DeliveryError):
    """Retrying cannot help; the item is parked with this reason for a human."""


class Backend(Protocol):
    name: str

    def deliver(self, bundle_path: Path, meta: DeliveryMeta) -> Receipt: ...


CAPABILITIES = ("create", "attach", "note", "read_notes", "search", "ticket_state")
CAPABILITY_TEXT = {
    "create": "open a ticket for a new problem",
    "attach": "attach bundles to tickets",
    "note": "add notes to tickets (repeats, recoveries, answers to requests)",
    "read_notes": "read ticket notes (collection requests from vendor engineers)",
    "search": "find its own earlier writes after a crash (no duplicate tickets or notes)",
    "ticket_state": "tell an open ticket from a closed one (a closed case gets a new ticket)",
}


@dataclass(frozen=True)
class Note:
    """A note (journal entry, comment) on a ticket, as the HelpDesk returned it."""

    ticket: str
    id: str
    author: str
    created: str  # ISO 8601, UTC
    text: str
    ticket_open: bool = True


class TicketBackend(Protocol):
    """The optional, non-delivery side of a backend (see ``capabilities``)."""

    name: str
    capabilities: frozenset[str]

    def add_note(self, ticket: str, text: str) -> None: ...
    def notes_since(self, since: str | None) -> tuple[list[Note], str]: ...
    def find_marker(self, marker: str, ticket: str | None = None) -> str | None: ...
    def ticket_state(self, ticket: str) -> str: ...  # "open" | "closed"


def capabilities(backend: object) -> frozenset[str]:
    """What ``backend`` can do; a backend that declares nothing can only attach."""
    caps = getattr(backend, "capabilities", None)
    return frozenset(caps) if caps is not None else frozenset({"attach"})


class Checkpoint(Protocol):
    """Durable per-item progress: ``save`` returns once the values are on disk (fsync).

    Saving ``None`` for a key removes it."""

    def get(self, key: str) -> Any: ...
    def save(self, **values: Any) -> None: ...


class MemoryCheckpoint:
    """A checkpoint that lives only as long as the object (tests, one-shot deliveries)."""

    def __init__(self, values: dict[str, Any] | None = None) -> None:
        self.values: dict[str, Any] = dict(values or {})

    def get(self, key: str) -> Any:
        return self.values.get(key)

    def save(self, **values: Any) -> None:
        self.values.update(values)
        self.values = {k: v for k, v in self.values.items() if v is not None}


class ResumableBackend(Protocol):
    """A backend that records its progress in the outbox item (see the module doc)."""

    name: str

    def deliver(
        self, bundle_path: Path, meta: DeliveryMeta, checkpoint: Checkpoint | None = None
    ) -> Receipt: ...


# --- helpers shared by the backends -------------------------------------------------------

BLOCK = 1024 * 1024  # request bodies are written in 1 MiB blocks


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) is this machine: ``localhost`` or loopback."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def big_blocks_adapter() -> Any:
    """A requests adapter sending bodies in ``BLOCK`` writes (urllib3's 16 KiB costs ~4x).

    requests is imported here, not at module level: the backends that need it import it.
    """
    from requests.adapters import HTTPAdapter

    class BigBlocks(HTTPAdapter):
        def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
            kwargs["blocksize"] = BLOCK
            super().init_poolmanager(*args, **kwargs)

    return BigBlocks()


def host_port(url: str) -> tuple[str, int]:
    """``https://helpdesk.example/x`` -> ("helpdesk.example", 443)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    return parts.hostname or url, port or (443 if parts.scheme == "https" else 80)


def _causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and everything it wraps (causes, contexts, urllib3's ``reason``, args)."""
    out: list[BaseException] = []
    todo: list[object] = [exc]
    while todo:
        e = todo.pop(0)
        if not isinstance(e, BaseException) or any(e is seen for seen in out):
            continue
        out.append(e)
        todo += [e.__cause__, e.__context__, getattr(e, "reason", None), *e.args]
    return out


_ERRNO_TEXT = {
    errno.ECONNREFUSED: "connection refused (nothing listens there: is the service up, the "
    "port right?)",
    errno.ENETUNREACH: "network is unreachable (check this host's routes)",
    errno.EHOSTUNREACH: "no route to host",
    errno.ETIMEDOUT: "no answer (timed out)",
}
_WRAPPER = re.compile(r"\w+(Pool)?\(host='[^']*', port=\d+\): ")


def network_problem(exc: BaseException, host: str, port: int, service: str = "") -> str:
    """A sentence for a network failure, without Python class names.

    ``cannot connect to helpdesk.example:443: connection refused (...)``,
    ``... the name helpdesk.example does not resolve``, ``helpdesk.example:443 reset the
    connection``; ``service`` ("SMTP server ") goes before the address.
    """
    where = f"{service}{f'[{host}]' if ':' in host else host}:{port}"
    causes = _causes(exc)
    names = {type(c).__name__ for c in causes}
    for c in causes:
        if isinstance(c, socket.gaierror):
            return (
                f"cannot connect to {where}: the name {host} does not resolve (check the "
                "address in the config, and this host's DNS)"
            )
    for c in causes:
        if isinstance(c, ssl.SSLCertVerificationError):
            return (
                f"{where}: its TLS certificate is not trusted ({c.verify_message}); if it "
                "uses a private CA, set [helpdesk] ca_file"
            )
    for c in causes:
        if isinstance(c, ssl.SSLError):
            return f"{where}: TLS failed ({c.reason or c.strerror or 'handshake failed'})"
    for c in causes:
        if isinstance(c, OSError) and c.errno in _ERRNO_TEXT:
            return f"cannot connect to {where}: {_ERRNO_TEXT[c.errno]}"
    if names & {"ConnectTimeoutError", "ConnectTimeout"}:
        return f"cannot connect to {where}: no answer (timed out)"
    for c in causes:
        if isinstance(c, ConnectionResetError):
            return f"{where} reset the connection"
        if isinstance(c, BrokenPipeError | ConnectionAbortedError):
            return f"{where} closed the connection while we were sending"
        if type(c).__name__ == "RemoteDisconnected":
            return f"{where} closed the connection without answering"
        if isinstance(c, TimeoutError):  # socket.timeout is TimeoutError since 3.10
            return f"{where} did not answer in time"
    for c in causes:
        if isinstance(c, OSError) and c.strerror:
            return f"{where}: {c.strerror[0].lower()}{c.strerror[1:]}"
    text = _WRAPPER.sub("", str(exc).splitlines()[0] if str(exc) else "")
    text = re.sub(r" \(Caused by .*", "", text)
    return f"{where}: {text[:200] or 'connection failed'}"
