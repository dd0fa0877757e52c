"""The site's known_hosts: entry names, fingerprints, recording and replacing keys."""

from __future__ import annotations

import subprocess
from pathlib import Path

import paramiko
import pytest

from agent.errors import ConfigError
from agent.settings import Settings
from agent.ssh_session import (
    fingerprint,
    host_entry,
    known_keys,
    load_known_hosts,
    record_host_key,
)


def _key(tmp: Path, name: str, kind: str = "ed25519") -> tuple[paramiko.PKey, Path]:
    path = tmp / name
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-f", str(path)], check=True)
    cls = {"ed25519": paramiko.Ed25519Key, "ecdsa": paramiko.ECDSAKey, "rsa": paramiko.RSAKey}
    return cls[kind].from_private_key_file(str(path)), path.with_suffix(".pub")


def test_host_entry_names_like_openssh() -> None:
    assert host_entry("10.1.2.3", 22) == "10.1.2.3"
    assert host_entry("10.1.2.3", 2222) == "[10.1.2.3]:2222"


@pytest.mark.parametrize("kind", ["ed25519", "ecdsa", "rsa"])
def test_fingerprint_matches_ssh_keygen(tmp_path: Path, kind: str) -> None:
    key, pub = _key(tmp_path, "k", kind)
    out = subprocess.run(["ssh-keygen", "-lf", str(pub)], capture_output=True, text=True)
    assert fingerprint(key) == out.stdout.split()[1]


def test_record_adds_then_replaces_only_that_host(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    k1, _ = _key(tmp_path, "k1")
    k2, _ = _key(tmp_path, "k2")
    other, _ = _key(tmp_path, "other", "ecdsa")
    hashed = paramiko.HostKeys.hash_host("[10.0.0.1]:2222")
    (home / "known_hosts").write_text(
        "# site known hosts\n"
        f"gw9 {other.get_name()} {other.get_base64()}\n"
        f"{hashed} {k1.get_name()} {k1.get_base64()}\n"  # a hashed entry for the same host
    )
    assert known_keys(home, "10.0.0.1", 2222)["ssh-ed25519"] == k1
    path = record_host_key(home, "10.0.0.1", 2222, k2)
    text = path.read_text()
    assert text.splitlines() == [
        "# site known hosts",
        f"gw9 {other.get_name()} {other.get_base64()}",
        f"[10.0.0.1]:2222 ssh-ed25519 {k2.get_base64()}",
    ]
    assert path.stat().st_mode & 0o777 == 0o600
    assert known_keys(home, "10.0.0.1", 2222) == {"ssh-ed25519": k2}
    assert known_keys(home, "10.0.0.1", 22) == {}
    assert not list(home.glob(".known_hosts.*"))  # no temp file left


def test_unreadable_known_hosts_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "known_hosts").mkdir()  # a directory where the file should be
    with pytest.raises(ConfigError, match="known_hosts"):
        load_known_hosts(tmp_path)


def test_jump_must_name_a_configured_ssh_device() -> None:
    base = {"type": "t", "address": "10.0.0.2"}
    ssh = {"username": "u", "key": {"file": "/k"}}
    with pytest.raises(ValueError, match="not a configured device"):
        Settings.model_validate({"devices": [{"name": "a", **base, "ssh": {**ssh, "jump": "b"}}]})
    with pytest.raises(ValueError, match="loops back"):
        Settings.model_validate(
            {
                "devices": [
                    {"name": "a", **base, "ssh": {**ssh, "jump": "b"}},
                    {"name": "b", **base, "ssh": {**ssh, "jump": "a"}},
                ]
            }
        )
    s = Settings.model_validate(
        {
            "devices": [
                {"name": "a", **base, "ssh": ssh},
                {"name": "b", **base, "ssh": {**ssh, "jump": "a"}},
            ]
        }
    )
    assert s.devices[1].jump_device is s.devices[0]
    with pytest.raises(ValueError, match="key"):
        Settings.model_validate({"devices": [{"name": "a", **base, "ssh": {"username": "u"}}]})
