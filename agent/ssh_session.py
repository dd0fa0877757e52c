"""Opening SSH sessions to devices: the site's ``known_hosts``, credentials, timeouts, jumps.

Host keys are checked against ``$FIELDTRACE_HOME/known_hosts`` only (never ~/.ssh), with
paramiko's ``RejectPolicy``: an unknown or changed key is refused with its SHA256 fingerprint
and what to do (``fieldtrace devices trust NAME``). Credentials come from the device's
``ssh`` settings (secret references resolved here, never logged). Every network wait has a
timeout (``[devices.ssh] timeout``): TCP connect, SSH banner, authentication, channel open.
A ``jump`` device is reached first; the target is then reached through a ``direct-tcpip``
channel of the jump's connection, and its host key is checked the same way.
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import os
import socket
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from agent.errors import ConfigError
from agent.settings import Device, Ssh
from collectors.base import StepFailed
from collectors.ssh import SshSession

if TYPE_CHECKING:
    import paramiko

log = logging.getLogger(__name__)
# paramiko logs every failed handshake with a traceback at ERROR; the step's own message says
# what happened, so keep paramiko's internals out of the user's terminal and log file
logging.getLogger("paramiko").setLevel(logging.CRITICAL)
KNOWN_HOSTS = "known_hosts"


def known_hosts_path(home: Path) -> Path:
    return home / KNOWN_HOSTS


def host_entry(address: str, port: int) -> str:
    """The known_hosts name of a host: ``addr`` on port 22, else ``[addr]:port``."""
    return address if port == 22 else f"[{address}]:{port}"


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH's ``SHA256:...`` fingerprint of a public key."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def load_known_hosts(home: Path, keys: paramiko.HostKeys | None = None) -> paramiko.HostKeys:
    """The site's known hosts (into ``keys`` when given)."""
    import paramiko

    keys = keys if keys is not None else paramiko.HostKeys()
    path = known_hosts_path(home)
    if path.exists():
        try:
            keys.load(str(path))
        except (OSError, paramiko.SSHException) as exc:
            raise ConfigError(f"{path}: cannot read known hosts: {exc}") from exc
    return keys


def known_keys(home: Path, address: str, port: int) -> dict[str, paramiko.PKey]:
    """The recorded keys of a host, by key type (empty when unknown)."""
    found = load_known_hosts(home).lookup(host_entry(address, port))
    return dict(found) if found is not None else {}


def record_host_key(home: Path, address: str, port: int, key: paramiko.PKey) -> Path:
    """Record ``key`` for the host, replacing any key it had (atomic write, mode 0600)."""

    name = host_entry(address, port)
    path = known_hosts_path(home)
    lines = path.read_text().splitlines(keepends=True) if path.exists() else []
    kept = [ln for ln in lines if not _line_names(ln, name)]
    kept.append(f"{name} {key.get_name()} {key.get_base64()}\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".known_hosts.")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write("".join(k if k.endswith("\n") else k + "\n" for k in kept))
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _line_names(line: str, name: str) -> bool:
    """Whether a known_hosts line is about host ``name`` (plain or hashed entries)."""
    import paramiko

    fields = line.split()
    if not fields or line.lstrip().startswith("#"):
        return False
    hosts = fields[0]
    if hosts.startswith("@"):  # @cert-authority / @revoked markers: leave them alone
        return False
    for h in hosts.split(","):
        if h.startswith("|1|"):
            if paramiko.HostKeys.hash_host(name, h) == h:
                return True
        elif h == name:
            return True
    return False


class UnknownHostKey(StepFailed):
    def __init__(self, device: str, key: paramiko.PKey) -> None:
        self.key = key
        super().__init__(
            f"{device}: SSH host key not trusted ({key.get_name()} {fingerprint(key)}); run "
            f"'fieldtrace devices trust {device}' after checking the fingerprint"
        )


class ChangedHostKey(StepFailed):
    def __init__(self, device: str, key: paramiko.PKey, expected: paramiko.PKey) -> None:
        self.key = key
        super().__init__(
            f"{device}: SSH host key CHANGED: the device offered {key.get_name()} "
            f"{fingerprint(key)} but {expected.get_name()} {fingerprint(expected)} is recorded; "
            "this may be an attack (or the device was replaced): connection refused; run "
            f"'fieldtrace devices trust {device}' after checking the fingerprint"
        )


def _policy(device: str) -> Any:
    import paramiko

    class Refuse(paramiko.RejectPolicy):
        def missing_host_key(
            self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
        ) -> NoReturn:
            raise UnknownHostKey(device, key)

    return Refuse()


def _load_pkey(text: str, passphrase: str | None, source: str) -> paramiko.PKey:
    import paramiko

    errors = []
    for cls in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
        try:
            return cls.from_private_key(io.StringIO(text + "\n"), password=passphrase)
        except paramiko.PasswordRequiredException:
            raise ConfigError(
                f"{source}: the private key is encrypted; add key_passphrase = {{ file = ... }}"
            ) from None
        except (paramiko.SSHException, ValueError) as exc:
            errors.append(f"{cls.__name__}: {exc}")
    raise ConfigError(
        f"{source}: not an OpenSSH/PEM private key (ed25519, ecdsa or rsa) or wrong passphrase"
    )


def _connect_sock(device: Device, sock: Any, timeout: float) -> socket.socket | Any:
    """A socket to the device: the given channel (through a jump) or a direct TCP connect."""
    assert device.ssh is not None
    if sock is not None:
        return sock
    where = f"{device.address}:{device.ssh.port}"
    try:
        return socket.create_connection((device.address, device.ssh.port), timeout=timeout)
    except ConnectionRefusedError:
        raise StepFailed(
            f"{device.name}: cannot connect to {where}: connection refused (is SSH enabled on "
            "the device and the port right?)"
        ) from None
    except TimeoutError:
        raise StepFailed(
            f"{device.name}: cannot connect to {where}: no answer within {timeout:g}s "
            "(device down, wrong address, or a firewall drops it)"
        ) from None
    except socket.gaierror as exc:
        raise StepFailed(
            f"{device.name}: cannot resolve {device.address}: {exc.strerror}"
        ) from None
    except OSError as exc:
        raise StepFailed(
            f"{device.name}: cannot connect to {where}: {exc.strerror or exc}"
        ) from None


def _jump_channel(device: Device, home: Path, timeout: float) -> tuple[Any, SshSession]:
    """Open the jump device's session and a direct-tcpip channel to ``device``."""
    import paramiko

    assert device.ssh is not None
    jump = device.jump_device
    if jump is None:  # settings not linked (a Device built by hand)
        raise StepFailed(f"{device.name}: jump device {device.ssh.jump!r} is not configured")
    via = open_ssh(jump, home)
    transport = via.client.get_transport()
    try:
        assert transport is not None
        chan = transport.open_channel(
            "direct-tcpip",
            (device.address, device.ssh.port),
            ("127.0.0.1", 0),
            timeout=timeout,
        )
    except (paramiko.SSHException, OSError, EOFError) as exc:
        via.close()
        raise StepFailed(
            f"{device.name}: jump host {jump.name} cannot reach {device.address}:"
            f"{device.ssh.port}: {str(exc) or type(exc).__name__}"
        ) from None
    return chan, via


def open_ssh(device: Device, home: Path) -> SshSession:
    """Connect, verify the host key against the site's known_hosts, authenticate."""
    client, extra = _connect(device, home)
    assert device.ssh is not None
    session = SshSession(
        device.name, client, float(device.ssh.timeout), reopen=lambda: _connect(device, home)
    )
    session._extra = extra
    return session


def _ssh_settings(device: Device) -> Ssh:
    if device.ssh is None:
        raise StepFailed(f"{device.name}: no ssh settings in the site config")
    return device.ssh


def _connect(device: Device, home: Path) -> tuple[paramiko.SSHClient, list[Any]]:
    import paramiko

    ssh = _ssh_settings(device)
    timeout = float(ssh.timeout)
    pkey = None
    if ssh.key is not None:
        passphrase = ssh.key_passphrase.resolve() if ssh.key_passphrase else None
        pkey = _load_pkey(
            ssh.key.resolve(), passphrase, f"{device.name}: ssh key ({ssh.key.describe()})"
        )
    password = ssh.password.resolve() if ssh.password is not None else None
    if pkey is None and password is None:
        raise ConfigError(
            f"{device.name}: ssh needs key = {{ file = ... }} or password = {{ ... }}"
        )
    sock: Any = None
    via: SshSession | None = None
    if ssh.jump:
        sock, via = _jump_channel(device, home, timeout)
    client = paramiko.SSHClient()
    load_known_hosts(home, client.get_host_keys())  # the site's file only, never ~/.ssh
    client.set_missing_host_key_policy(_policy(device.name))
    where = f"{device.address}:{ssh.port}"

    def close() -> None:
        client.close()
        if via:
            via.close()

    try:
        client.connect(
            device.address,
            port=ssh.port,
            username=ssh.username,
            pkey=pkey,
            password=password,
            sock=_connect_sock(device, sock, timeout),
            timeout=timeout,
            banner_timeout=timeout,
            auth_timeout=timeout,
            channel_timeout=timeout,
            allow_agent=False,
            look_for_keys=False,
        )
    except StepFailed:
        close()
        raise
    except paramiko.BadHostKeyException as exc:
        close()
        raise ChangedHostKey(device.name, exc.key, exc.expected_key) from None
    except paramiko.AuthenticationException as exc:
        close()
        how = (
            "key"
            if pkey and not password
            else "password"
            if password and not pkey
            else "key/password"
        )
        raise StepFailed(
            f"{device.name}: SSH authentication failed for user {ssh.username!r} at {where} "
            f"({how} refused: {exc}); check the device's ssh username and credentials"
        ) from None
    except (paramiko.SSHException, EOFError, OSError) as exc:
        close()
        text = str(exc) or type(exc).__name__
        low = text.lower()
        slow = ("timeout", "timed out", "banner", "no existing session", "negotiation failed")
        if isinstance(exc, TimeoutError) or any(w in low for w in slow):
            if "banner" in low or "no existing session" in low:
                text = "no SSH banner"
            raise StepFailed(
                f"{device.name}: SSH handshake with {where} did not complete within {timeout:g}s "
                f"({text}); is it an SSH server, and is the device overloaded?"
            ) from None
        raise StepFailed(f"{device.name}: SSH connection to {where} failed: {text}") from None
    transport = client.get_transport()
    if transport is not None:
        transport.set_keepalive(30)
    log.info("%s: SSH connected to %s as %s", device.name, where, ssh.username)
    return client, [via] if via is not None else []


# the signature algorithms that prove a host key of each type: an RSA key ("ssh-rsa" in
# known_hosts) is offered with rsa-sha2-512/256 signatures, and paramiko 4+ no longer
# accepts the SHA-1 "ssh-rsa" algorithm at all (asking for it raised "unknown cipher")
_KEY_ALGORITHMS = {"ssh-rsa": ("rsa-sha2-512", "rsa-sha2-256", "ssh-rsa")}


def host_key_algorithms(key_type: str, available: Sequence[str]) -> list[str]:
    """The host key algorithms (of ``available``) that get a server's ``key_type`` key."""
    return [a for a in _KEY_ALGORITHMS.get(key_type, (key_type,)) if a in available]


def fetch_host_key(device: Device, home: Path) -> paramiko.PKey:
    """The device's host key, from a handshake without authentication (for ``trust``)."""
    import paramiko

    ssh = _ssh_settings(device)
    timeout = float(ssh.timeout)
    via: SshSession | None = None
    sock: Any = None
    if ssh.jump:
        sock, via = _jump_channel(device, home, timeout)
    sock = _connect_sock(device, sock, timeout)
    transport = paramiko.Transport(sock)
    transport.banner_timeout = timeout
    try:
        known = known_keys(home, device.address, ssh.port)
        if known:  # ask for the recorded key type first, like the real connection will
            opts = transport.get_security_options()
            first = host_key_algorithms(next(iter(known)), opts.key_types)
            opts.key_types = [*first, *[k for k in opts.key_types if k not in first]]
        transport.start_client(timeout=timeout)
        return transport.get_remote_server_key()
    except (paramiko.SSHException, EOFError, OSError) as exc:
        raise StepFailed(
            f"{device.name}: SSH handshake with {device.address}:{ssh.port} failed: "
            f"{str(exc) or type(exc).__name__}"
        ) from None
    finally:
        transport.close()
        if via is not None:
            via.close()
