"""The ``http`` backend against a real HTTP server (stdlib http.server on loopback)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from agent.delivery import http_backend
from agent.settings import Settings
from tests.integration.mail.support import HttpEndpoint, Reply, bundle_file
from uploader.base import DeliveryMeta, PermanentError, TransientError
from uploader.http import HttpBackend

pytestmark = pytest.mark.integration
TOKEN = "Bearer 3f9c-helpdesk-token"


def make_backend(endpoint: HttpEndpoint, tmp_path: Path, **overrides: Any) -> HttpBackend:
    secret = tmp_path / "helpdesk.token"
    secret.write_text(TOKEN + "\n")
    helpdesk = {
        "backend": "http",
        "url": endpoint.url,
        "auth_value": {"file": str(secret)},
        "timeout": "5s",
        **overrides,
    }
    site = {"company": "ACME Telecom", "contract": "TS-2024-117", "contact_email": "noc@acme.ex"}
    return http_backend(Settings.model_validate({"site": site, "helpdesk": helpdesk}))


def make_bundle(tmp_path: Path, size: int) -> tuple[Path, DeliveryMeta]:
    data = os.urandom(size) + b"\r\n--\r\n\r\n" + os.urandom(1000)  # boundary-like bytes inside
    return bundle_file(
        tmp_path,
        data,
        "default",
        ticket="4711",
        contact_email="noc@acme.ex",
        summary="fieldtrace bundle: profile default on gw1; 2 steps ok 2",
    )


def test_bundle_arrives_byte_identical_with_fields_and_auth(
    http_endpoint: HttpEndpoint, tmp_path: Path
) -> None:
    http_endpoint.replies.append(
        Reply(201, b'{"ticket": 4712, "ok": true}', {"Location": "/tickets/4712/files/9"})
    )
    path, meta = make_bundle(tmp_path, 1_500_000)
    backend = make_backend(
        http_endpoint,
        tmp_path,
        auth_header="X-Api-Key",
        fields={"file": "attachment", "bundle_id": "x_bundle", "description": ""},
        extra_fields={"queue": "support"},
        response_ticket_field="ticket",
    )
    receipt = backend.deliver(path, meta)
    assert len(http_endpoint.requests) == 1
    req = http_endpoint.requests[0]
    headers = {k.lower(): v for k, v in req.headers.items()}
    assert headers["x-api-key"] == TOKEN
    assert "authorization" not in headers
    assert headers["idempotency-key"] == meta.bundle_id
    filename, data = req.files["attachment"]
    assert filename == meta.name
    assert data == path.read_bytes()
    assert req.fields["x_bundle"] == meta.bundle_id
    assert req.fields["ticket"] == "4711"
    assert req.fields["company"] == "ACME Telecom"
    assert req.fields["contract"] == "TS-2024-117"
    assert req.fields["summary"] == meta.summary
    assert req.fields["sha256"] == meta.sha256
    assert req.fields["queue"] == "support"
    assert "description" not in req.fields and "bundle_id" not in req.fields
    assert receipt.ticket == "4712" and receipt.location == "/tickets/4712/files/9"
    assert receipt.detail["status"] == 201


def test_401_is_permanent_and_names_the_auth_secret(
    http_endpoint: HttpEndpoint, tmp_path: Path
) -> None:
    http_endpoint.replies.append(Reply(401, b'{"error": "bad token"}'))
    path, meta = make_bundle(tmp_path, 1000)
    with pytest.raises(PermanentError) as err:
        make_backend(http_endpoint, tmp_path).deliver(path, meta)
    assert "HTTP 401" in str(err.value) and "check the auth secret" in str(err.value)


def test_503_is_transient_then_delivered(http_endpoint: HttpEndpoint, tmp_path: Path) -> None:
    http_endpoint.replies.append(Reply(503, b"maintenance", {"Retry-After": "120"}))
    path, meta = make_bundle(tmp_path, 1000)
    backend = make_backend(http_endpoint, tmp_path)
    with pytest.raises(TransientError) as err:
        backend.deliver(path, meta)
    assert "HTTP 503" in str(err.value) and "Retry-After: 120" in str(err.value)
    backend.deliver(path, meta)
    keys = [r.headers["Idempotency-Key"] for r in http_endpoint.requests]
    assert keys == [meta.bundle_id, meta.bundle_id]  # the endpoint can tell it is a retry
    assert http_endpoint.requests[1].files["file"][1] == path.read_bytes()


def test_timeout_is_transient(http_endpoint: HttpEndpoint, tmp_path: Path) -> None:
    http_endpoint.replies.append(Reply(201, delay=2.0))
    path, meta = make_bundle(tmp_path, 1000)
    with pytest.raises(TransientError) as err:
        make_backend(http_endpoint, tmp_path, timeout="0.5s").deliver(path, meta)
    assert "did not answer in time" in str(err.value)


def test_other_4xx_and_redirects_are_permanent(http_endpoint: HttpEndpoint, tmp_path: Path) -> None:
    http_endpoint.replies += [Reply(422, b'{"error": "unknown ticket"}'), Reply(302, b"")]
    path, meta = make_bundle(tmp_path, 1000)
    backend = make_backend(http_endpoint, tmp_path)
    with pytest.raises(PermanentError, match=r"HTTP 422.*unknown ticket"):
        backend.deliver(path, meta)
    with pytest.raises(PermanentError, match="redirect"):
        backend.deliver(path, meta)


def test_nothing_listening_is_transient(tmp_path: Path) -> None:
    from tests.fixtures.ports import free_port

    port = free_port()
    backend = http_backend(
        Settings.model_validate(
            {"helpdesk": {"backend": "http", "url": f"http://127.0.0.1:{port}/u"}}
        )
    )
    path, meta = make_bundle(tmp_path, 100)
    with pytest.raises(TransientError) as err:
        backend.deliver(path, meta)
    # a sentence for the technician, not urllib3's exception text
    assert str(err.value).startswith(f"cannot connect to 127.0.0.1:{port}: connection refused")
    assert "Error" not in str(err.value) and "HTTPConnection" not in str(err.value)


def test_https_with_a_private_ca_and_untrusted_certificate(
    tls_cert: tuple[Path, Path], tmp_path: Path
) -> None:
    endpoint = HttpEndpoint(tls=tls_cert)
    try:
        path, meta = make_bundle(tmp_path, 200_000)
        with pytest.raises(PermanentError) as err:
            make_backend(endpoint, tmp_path).deliver(path, meta)
        assert "TLS" in str(err.value) and "ca_file" in str(err.value)
        assert endpoint.requests == []
        make_backend(endpoint, tmp_path, ca_file=str(tls_cert[0])).deliver(path, meta)
        assert endpoint.requests[0].files["file"][1] == path.read_bytes()
        assert endpoint.requests[0].headers["Authorization"] == TOKEN
    finally:
        endpoint.stop()
