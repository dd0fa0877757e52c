"""Fixtures for ssh.shell: device-CLI simulators on loopback and a paramiko client."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import paramiko
import pytest

from tests.fixtures.cli_sim import CliSimulator

USER, PASSWORD = "diag", "sim-Passw0rd"


def connect(sim: CliSimulator) -> paramiko.SSHClient:
    """A client that trusts exactly the simulator's host key."""
    client = paramiko.SSHClient()
    client.get_host_keys().add(f"[127.0.0.1]:{sim.port}", sim.host_key.get_name(), sim.host_key)
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(
        "127.0.0.1",
        sim.port,
        USER,
        PASSWORD,
        look_for_keys=False,
        allow_agent=False,
        timeout=5,
        auth_timeout=5,
        banner_timeout=5,
    )
    return client


@pytest.fixture
def simulator() -> Iterator[Callable[..., CliSimulator]]:
    """``simulator(hostname, case, **options)`` -> a started simulator, stopped after."""
    started: list[CliSimulator] = []

    def start(hostname: str = "gw1", case: str = "isr4321-cube", **kw: Any) -> CliSimulator:
        sim = CliSimulator(hostname, case, users={USER: PASSWORD}, **kw).start()
        started.append(sim)
        return sim

    try:
        yield start
    finally:
        for sim in started:
            sim.stop()


@pytest.fixture
def shell() -> Iterator[Callable[[CliSimulator], paramiko.Channel]]:
    """``shell(sim)`` -> an interactive channel (pty + shell) logged in to ``sim``."""
    clients: list[paramiko.SSHClient] = []

    def open_shell(sim: CliSimulator) -> paramiko.Channel:
        client = connect(sim)
        clients.append(client)
        return client.invoke_shell(width=511, height=50)

    try:
        yield open_shell
    finally:
        for c in clients:
            c.close()
