"""SSH host keys of every common type against a real sshd: `devices trust` (with
--fingerprint, --yes, --replace) and the connection that uses the recorded key.

With paramiko 4+, a recorded RSA key made `devices trust --yes --replace` crash
("ValueError: unknown cipher", exit 3): the handshake asked for the SHA-1 "ssh-rsa"
algorithm, which paramiko no longer offers; an RSA key is fetched with rsa-sha2-512/256."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Cli
from tests.fixtures.sshd import Sshd, running_sshd
from tests.integration.test_ssh_cli import fingerprint_of, ssh_device, write_config

pytestmark = pytest.mark.integration
KEY_TYPES = {"rsa": "ssh-rsa", "ecdsa": "ecdsa-sha2-nistp256", "ed25519": "ssh-ed25519"}


@pytest.fixture(scope="module", params=sorted(KEY_TYPES))
def server(request: pytest.FixtureRequest) -> Iterator[Sshd]:
    with running_sshd(host_key_type=request.param) as s:
        yield s


def other_key(tmp_path: Path, kind: str) -> str:
    """Another key of the same type, as 'type base64' (a device that was replaced)."""
    path = tmp_path / f"other_{kind}"
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-f", str(path)], check=True)
    return " ".join(path.with_suffix(".pub").read_text().split()[:2])


def test_trust_replace_and_connect_with_each_key_type(
    cli: Cli, server: Sshd, tmp_path: Path
) -> None:
    kind = server.host_key.name.removeprefix("host_")
    write_config(
        cli, ssh_device("gw1", server), ["{id: v, collector: ssh.command, command: uname}"]
    )
    kh = cli.home / "known_hosts"
    fp = fingerprint_of(server.host_key.with_suffix(".pub"))
    # pinned: recorded without asking, because the device offers exactly that key
    p = cli.run("devices", "trust", "gw1", "--fingerprint", fp, check=0)
    assert KEY_TYPES[kind] in p.stdout and fp in p.stdout
    assert kh.read_text() == server.known_hosts_line() + "\n"
    # the recorded key type is asked for first: nothing to do
    assert "already trusted" in cli.run("devices", "trust", "gw1", "--yes", check=0).stdout
    assert json.loads(cli.run("collect", "--json", check=0).stdout)["summary"]["ok"] == 1
    # a changed key of the same type: refused, then replaced on request
    fake = other_key(tmp_path, kind)
    kh.write_text(f"[127.0.0.1]:{server.port} {fake}\n")
    p = cli.run("devices", "trust", "gw1", "--yes", check=2)
    assert "HAS CHANGED" in p.stderr and "Traceback" not in p.stderr
    p = cli.run("devices", "trust", "gw1", "--fingerprint", fp, check=2)  # pinned, not --replace
    assert "--replace" in p.stderr
    p = cli.run("devices", "trust", "gw1", "--yes", "--replace", check=0)
    assert "replaced" in p.stdout and "Traceback" not in p.stderr
    assert kh.read_text() == server.known_hosts_line() + "\n"
    assert json.loads(cli.run("collect", "--json", check=0).stdout)["summary"]["ok"] == 1
    # a connection to a device whose recorded key is another one is refused
    kh.write_text(f"[127.0.0.1]:{server.port} {fake}\n")
    proc = cli.run("collect", "--json", check=1)
    assert "CHANGED" in json.dumps(json.loads(proc.stdout))


def test_a_pinned_fingerprint_that_does_not_match_is_refused(cli: Cli, server: Sshd) -> None:
    write_config(
        cli, ssh_device("gw1", server), ["{id: v, collector: ssh.command, command: uname}"]
    )
    wrong = "SHA256:" + "A" * 43
    p = cli.run("devices", "trust", "gw1", "--fingerprint", wrong, check=2)
    assert "not the expected " + wrong in p.stderr and "nothing was recorded" in p.stderr
    assert fingerprint_of(server.host_key.with_suffix(".pub")) in p.stderr
    assert not (cli.home / "known_hosts").exists()


@pytest.mark.parametrize(
    "bad", ["abc", "SHA256:short", "MD5:16:27:ac:a5:76:28:2d:36:63:1b:56:4d:eb:df:a6:48", ""]
)
def test_a_malformed_fingerprint_is_a_usage_error_before_connecting(cli: Cli, bad: str) -> None:
    # the device does not even exist: the fingerprint is checked first
    p = cli.run("devices", "trust", "nosuch", "--fingerprint", bad, check=2)
    assert "is not a SHA256 key fingerprint" in p.stderr
