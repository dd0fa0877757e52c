"""The site's keys under ``$FIELDTRACE_HOME``: the age identity and the Ed25519 signing key.

Both are generated on first use, written atomically with mode 0600, and never logged.
``identity.txt`` is in the format the ``age`` CLI reads with ``-i``.
"""

from __future__ import annotations

import base64
import hashlib
import os
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from agent.errors import ConfigError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

IDENTITY_FILE = "identity.txt"
SIGNING_KEY_FILE = "signing_key.pem"


def home(create: bool = True) -> Path:
    """``$FIELDTRACE_HOME``, else ``~/.local/share/fieldtrace``; created 0700 if missing
    (unless ``create`` is false: a dry run touches nothing)."""
    env = os.environ.get("FIELDTRACE_HOME")
    path = Path(env) if env else Path.home() / ".local" / "share" / "fieldtrace"
    if create:
        try:
            path.mkdir(parents=True, exist_ok=True, mode=0o700)
        except FileExistsError:
            raise ConfigError(
                f"{path}: not a directory; $FIELDTRACE_HOME must name fieldtrace's state directory"
            ) from None
        except OSError as exc:
            raise ConfigError(
                f"{path}: cannot create the state directory ($FIELDTRACE_HOME): "
                f"{exc.strerror or exc}"
            ) from None
    return path


def write_private(path: Path, data: bytes) -> None:
    """Write a secret file atomically (0600, fsync, rename); never leaves a partial file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_identity(base: Path | None = None, create: bool = True) -> object:
    """The site's age identity (pyrage x25519 Identity), generated on first use."""
    import pyrage

    path = (base or home()) / IDENTITY_FILE
    if not path.exists():
        if not create:
            raise ConfigError(f"{path}: no site identity yet (run 'fieldtrace collect' once)")
        ident = pyrage.x25519.Identity.generate()
        created = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        text = f"# created: {created}\n# public key: {ident.to_public()}\n{ident}\n"
        write_private(path, text.encode())
        return ident
    return read_identity_file(path)


def read_identity_file(path: Path) -> object:
    """Parse an age identity file (comments allowed), as ``age -i`` does."""
    import pyrage

    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read identity: {exc.strerror}") from exc
    keys = [ln.strip() for ln in lines if ln.strip().startswith("AGE-SECRET-KEY-")]
    if not keys:
        raise ConfigError(f"{path}: no AGE-SECRET-KEY-1... line; not an age identity file")
    try:
        return pyrage.x25519.Identity.from_str(keys[0])
    except Exception as exc:
        raise ConfigError(f"{path}: invalid age identity: {exc}") from exc


@dataclass(frozen=True)
class SigningKey:
    private: Ed25519PrivateKey

    @property
    def public(self) -> Ed25519PublicKey:
        return self.private.public_key()

    def public_openssh(self) -> str:
        return public_openssh(self.public)

    def fingerprint(self) -> str:
        return fingerprint(self.public)

    def sign(self, data: bytes) -> bytes:
        return self.private.sign(data)


def load_signing_key(base: Path | None = None, create: bool = True) -> SigningKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path = (base or home()) / SIGNING_KEY_FILE
    if not path.exists():
        if not create:
            raise ConfigError(f"{path}: no signing key yet (run 'fieldtrace collect' once)")
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        write_private(path, pem)
        return SigningKey(key)
    try:
        loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot load the site signing key: {exc}") from exc
    if not isinstance(loaded, Ed25519PrivateKey):
        raise ConfigError(f"{path}: not an Ed25519 private key")
    return SigningKey(loaded)


def public_openssh(pub: Ed25519PublicKey) -> str:
    from cryptography.hazmat.primitives import serialization

    raw = pub.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return raw.decode()


def fingerprint(pub: Ed25519PublicKey) -> str:
    """OpenSSH-style ``SHA256:...`` fingerprint (same as ``ssh-keygen -lf``)."""
    blob = base64.b64decode(public_openssh(pub).split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def parse_public_openssh(text: str) -> Ed25519PublicKey:
    """An ``ssh-ed25519 AAAA... [comment]`` line -> public key; ValueError if it is not one."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    parts = text.strip().split()
    if len(parts) < 2 or parts[0] != "ssh-ed25519":
        raise ValueError("expected an OpenSSH 'ssh-ed25519 AAAA...' public key")
    key = serialization.load_ssh_public_key(f"{parts[0]} {parts[1]}".encode())
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("not an Ed25519 key")
    return key
