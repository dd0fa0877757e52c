"""Fixtures: one aiosmtpd server (STARTTLS + AUTH) and one HTTP endpoint per session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.mail.support import HttpEndpoint, SmtpServer, make_cert, start_smtp


@pytest.fixture(scope="session")
def tls_cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_cert(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="session")
def _smtp_session(tls_cert: tuple[Path, Path]) -> Iterator[SmtpServer]:
    server = start_smtp(*tls_cert)
    try:
        yield server
    finally:
        server.controller.stop()


@pytest.fixture
def smtp(_smtp_session: SmtpServer) -> Iterator[SmtpServer]:
    _smtp_session.recorder.reset()
    yield _smtp_session
    _smtp_session.recorder.reset()


@pytest.fixture(scope="session")
def _http_session() -> Iterator[HttpEndpoint]:
    endpoint = HttpEndpoint()
    try:
        yield endpoint
    finally:
        endpoint.stop()


@pytest.fixture
def http_endpoint(_http_session: HttpEndpoint) -> Iterator[HttpEndpoint]:
    _http_session.reset()
    yield _http_session
    _http_session.reset()
