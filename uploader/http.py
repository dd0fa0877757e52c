"""``http`` backend: a generic HelpDesk endpoint, one multipart/form-data POST per bundle.

The metadata fields (bundle id, ticket, company, contract, summary ...) come first under the
names the site configures, then the bundle as the file field, streamed from disk by
requests-toolbelt's ``MultipartEncoder`` (memory stays flat whatever the size). Every request
carries ``Idempotency-Key: <bundle id>`` so the endpoint can recognise a retry of a bundle it
already has. The auth header's value is a secret resolved at use.

Outcomes: a status in ``success_codes`` is delivered; 408, 429 and 5xx, timeouts and
connection errors are transient; any other 4xx is permanent (401/403: the auth secret is
wrong); a redirect is permanent (the URL must name the endpoint itself: a POST that follows
a redirect would lose its body).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from uploader.base import (
    Checkpoint,
    DeliveryMeta,
    PermanentError,
    Receipt,
    TransientError,
    big_blocks_adapter,
    host_port,
    network_problem,
)

log = logging.getLogger(__name__)

META_FIELDS = (
    "bundle_id",
    "name",
    "sha256",
    "ticket",
    "company",
    "contract",
    "contact_email",
    "subject",
    "description",
    "summary",
)


@dataclass(frozen=True)
class HttpConfig:
    url: str
    file_field: str = "file"
    fields: Mapping[str, str] = field(default_factory=lambda: {f: f for f in META_FIELDS})
    extra_fields: Mapping[str, str] = field(default_factory=dict)
    auth_header: str = "Authorization"
    auth_value: str | None = None  # the header's value (a secret, resolved by the agent)
    success_codes: frozenset[int] = frozenset({200, 201, 202, 204})
    response_ticket_field: str | None = None
    ca_file: Path | None = None
    connect_timeout: float = 15.0
    timeout: float = 300.0


def _excerpt(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


class HttpBackend:
    """POSTs the bundle and its metadata to the configured endpoint."""

    name = "http"
    capabilities = frozenset({"create", "attach"})

    def __init__(self, config: HttpConfig) -> None:
        self.config = config

    def _form(self, meta: DeliveryMeta) -> list[tuple[str, str]]:
        form = []
        for attr in META_FIELDS:
            name = self.config.fields.get(attr, "")
            value = getattr(meta, attr)
            if name and value:
                form.append((name, str(value)))
        form += list(self.config.extra_fields.items())
        return form

    def deliver(
        self, bundle_path: Path, meta: DeliveryMeta, checkpoint: Checkpoint | None = None
    ) -> Receipt:
        import requests
        from requests_toolbelt import MultipartEncoder

        cfg = self.config
        headers = {"Idempotency-Key": meta.bundle_id, "User-Agent": "fieldtrace"}
        if cfg.auth_value is not None:
            headers[cfg.auth_header] = cfg.auth_value
        try:
            fh = open(bundle_path, "rb")  # noqa: SIM115 (closed below)
        except OSError as exc:
            raise PermanentError(f"{bundle_path}: cannot read the bundle: {exc.strerror}") from exc
        try:
            fields: list[tuple[str, Any]] = [*self._form(meta)]
            fields.append((cfg.file_field, (meta.name, fh, "application/octet-stream")))
            encoder = MultipartEncoder(fields=fields)
            headers["Content-Type"] = encoder.content_type
            with requests.Session() as session:
                session.mount("https://", big_blocks_adapter())
                session.mount("http://", big_blocks_adapter())
                resp = session.post(
                    cfg.url,
                    data=encoder,
                    headers=headers,
                    timeout=(cfg.connect_timeout, cfg.timeout),
                    verify=str(cfg.ca_file) if cfg.ca_file else True,
                    allow_redirects=False,
                )
        except requests.exceptions.SSLError as exc:
            raise PermanentError(network_problem(exc, *host_port(cfg.url))) from exc
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise TransientError(network_problem(exc, *host_port(cfg.url))) from exc
        except requests.RequestException as exc:
            raise PermanentError(f"{cfg.url}: {exc}") from exc
        finally:
            fh.close()
        return self._outcome(resp, meta)

    def _outcome(self, resp: Any, meta: DeliveryMeta) -> Receipt:
        cfg = self.config
        code: int = resp.status_code
        what = f"{cfg.url} answered HTTP {code}"
        body = _excerpt(resp.text or "")
        if code in cfg.success_codes:
            ticket = meta.ticket
            if cfg.response_ticket_field:
                try:
                    data = resp.json()
                except ValueError:
                    data = None
                if isinstance(data, dict) and data.get(cfg.response_ticket_field) is not None:
                    ticket = str(data[cfg.response_ticket_field])
            location = resp.headers.get("Location") or cfg.url
            log.info("http: %s delivered to %s (HTTP %d)", meta.name, location, code)
            return Receipt(self.name, location, ticket, {"status": code, "response": body})
        if code in (408, 429) or code >= 500:
            retry_after = resp.headers.get("Retry-After")
            hint = f" (Retry-After: {retry_after})" if retry_after else ""
            raise TransientError(f"{what}{hint}: {body}")
        if code in (401, 403):
            raise PermanentError(
                f"{what}: the endpoint refused the credentials; check the auth secret "
                f"([helpdesk] auth_value, sent as the {cfg.auth_header} header): {body}"
            )
        if 300 <= code < 400:
            raise PermanentError(
                f"{what}: redirect to {resp.headers.get('Location')}; set [helpdesk] url to "
                "the endpoint itself"
            )
        if code == 413:
            raise PermanentError(f"{what}: the endpoint refuses a bundle of {meta.size} bytes")
        raise PermanentError(f"{what}: {body}")
