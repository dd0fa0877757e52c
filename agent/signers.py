"""Who may have signed a bundle: ``--signer`` values and the engineer's ``trusted_signers``.

A bundle's signature only proves that the holder of the key in ``signer.pub`` made it, and
anyone can make a key. What makes a signer *trusted* is the vendor engineer's own record:

* ``--signer KEY`` pins one key for one command (a fingerprint ``SHA256:`` + 43 base64
  characters, as ``fieldtrace keys show`` prints it; an ``ssh-ed25519 AAAA...`` line; or a
  file holding either);
* the ``trusted_signers`` file (``$XDG_CONFIG_HOME/fieldtrace/trusted_signers``, by default
  ``~/.config/fieldtrace/trusted_signers``, or ``--trusted-signers FILE``) maps site names
  to key fingerprints, one ``SITE FINGERPRINT`` per line (``#`` starts a comment; a site may
  have several lines while it rotates its key). SITE is the site's slug as the manifest
  names it (``site.slug``, shown by ``bundle inspect``).

A bundle claiming a site that the file lists, signed by a key the file does not list for
that site, is refused; so is a bundle signed by one site's key that claims another site.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from agent.errors import ConfigError, ValidationFailed
from agent.manifest import printable

FINGERPRINT_RE = re.compile(r"SHA256:[A-Za-z0-9+/]{43}")
SITE_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,38}[a-z0-9])?")
FILE_MAX = 1024 * 1024
_SIGNER_HELP = (
    "give the site's key fingerprint as 'fieldtrace keys show' prints it at the site "
    "(SHA256: followed by 43 base64 characters), its 'ssh-ed25519 AAAA...' public key line, "
    "or a file holding one of them"
)


def default_trusted_signers() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME", "")
    root = Path(base) if base and Path(base).is_absolute() else Path.home() / ".config"
    return root / "fieldtrace" / "trusted_signers"


def read_small_file(path: Path, what: str, option: str, limit: int = FILE_MAX) -> str:
    """The text of a small file named on the command line; ConfigError (exit 2) naming the
    option and the fix when it is missing, a directory, unreadable or too big."""
    shown = printable(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ConfigError(f"{option} {shown}: no such file; {what}") from None
    except OSError as exc:
        raise ConfigError(f"{option} {shown}: {exc.strerror}; {what}") from None
    if stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"{option} {shown}: is a directory, not a file; {what}")
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{option} {shown}: not a regular file; {what}")
    try:
        with path.open("rb") as fh:
            data = fh.read(limit + 1)
    except OSError as exc:
        raise ConfigError(f"{option} {shown}: cannot read: {exc.strerror}") from None
    if len(data) > limit:
        raise ConfigError(f"{option} {shown}: larger than {limit} bytes; {what}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{option} {shown}: not UTF-8 text; {what}") from None


def _key_line_fingerprint(line: str) -> str | None:
    from agent.keys import fingerprint, parse_public_openssh

    try:
        return fingerprint(parse_public_openssh(line))
    except ValueError:
        return None


def parse_signer(value: str) -> str:
    """A ``--signer`` value -> the key's ``SHA256:`` fingerprint; ConfigError (exit 2) when
    it is none of the accepted forms, so a typo is a usage error, never a "forged" bundle."""
    text = value.strip()
    if FINGERPRINT_RE.fullmatch(text):
        return text
    if text.startswith("SHA256:"):
        raise ConfigError(
            f"--signer {printable(value)!r}: not a key fingerprint (SHA256: must be followed "
            f"by exactly 43 base64 characters, got {len(text) - 7}); {_SIGNER_HELP}"
        )
    if text.startswith("ssh-"):
        fp = _key_line_fingerprint(text)
        if fp is None:
            raise ConfigError(
                f"--signer {printable(value)!r}: not a valid ssh-ed25519 public key; {_SIGNER_HELP}"
            )
        return fp
    path = Path(value)
    if not path.exists():
        raise ConfigError(
            f"--signer {printable(value)!r}: not a fingerprint, not an ssh-ed25519 key line, "
            f"and no such file; {_SIGNER_HELP}"
        )
    content = read_small_file(path, _SIGNER_HELP, "--signer", 64 * 1024)
    lines = [ln.strip() for ln in content.splitlines() if ln.strip() and not ln.startswith("#")]
    if len(lines) == 1:
        line = lines[0]
        if FINGERPRINT_RE.fullmatch(line):
            return line
        fp = _key_line_fingerprint(line)
        if fp is not None:
            return fp
    raise ConfigError(
        f"--signer {printable(path)}: the file holds no single fingerprint or ssh-ed25519 "
        f"key line; {_SIGNER_HELP}"
    )


@dataclass(frozen=True)
class TrustedSigners:
    """The engineer's record of which key signs for which site."""

    path: Path | None = None
    sites: dict[str, frozenset[str]] = field(default_factory=dict)

    def sites_of(self, fp: str) -> list[str]:
        return sorted(site for site, fps in self.sites.items() if fp in fps)


def load_trusted_signers(path: Path | None = None) -> TrustedSigners:
    """``path`` (from ``--trusted-signers``: it must exist), else the default file if there
    is one. The whole file is checked; every problem is reported with its line number."""
    explicit = path is not None
    path = path if path is not None else default_trusted_signers()
    if not explicit and not path.exists():
        return TrustedSigners(None, {})
    fix = "one 'SITE SHA256:...' line per trusted site key (see docs/bundle-reading.md)"
    text = read_small_file(path, fix, "--trusted-signers" if explicit else "trusted signers")
    st = path.stat()
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ConfigError(
            f"{printable(path)}: writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})"
            f": whoever can write it decides whose bundles are trusted; fix: chmod go-w {path}"
        )
    if st.st_uid not in (0, os.geteuid()):
        raise ConfigError(
            f"{printable(path)}: owned by uid {st.st_uid}, not by you or root: whoever owns it "
            "decides whose bundles are trusted; fix: take ownership of it (chown) or use your own"
        )
    sites: dict[str, set[str]] = {}
    problems: list[str] = []
    for no, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2:
            problems.append(
                f"line {no}: expected 'SITE SHA256:...' (two fields), got {len(parts)} "
                f"field(s): {printable(line)!r}"
            )
            continue
        site, fp = parts
        if not SITE_RE.fullmatch(site):
            problems.append(
                f"line {no}: site {printable(site)!r}: expected the site's name as bundles "
                "carry it (site.slug: lowercase letters, digits and '-', at most 40)"
            )
        if not FINGERPRINT_RE.fullmatch(fp):
            problems.append(
                f"line {no}: {printable(fp)!r} is not a key fingerprint (SHA256: followed by "
                "43 base64 characters, as 'fieldtrace keys show' prints it at the site)"
            )
        if not problems:
            sites.setdefault(site, set()).add(fp)
    if problems:
        raise ValidationFailed(printable(path), problems)
    return TrustedSigners(path, {s: frozenset(f) for s, f in sites.items()})


@dataclass(frozen=True)
class SignerVerdict:
    state: str  # "trusted" | "pinned" | "unknown"
    site: str | None = None  # the site trusted_signers lists the key for
    note: str = ""


def judge_signer(
    fp: str, claimed_site: str, pinned: str | None, trusted: TrustedSigners
) -> SignerVerdict:
    """How far the key that made a valid signature is trusted; ValueError (with the reason
    for the user) when the engineer's records contradict the bundle's claim."""
    source = printable(trusted.path) if trusted.path else "trusted_signers"
    if pinned is not None and fp != pinned:
        raise ValueError(f"signed by {fp}, not by the expected signer {pinned}")
    listed = trusted.sites.get(claimed_site)
    site = printable(claimed_site)
    if listed is not None and fp not in listed:
        keys = ", ".join(sorted(listed))
        raise ValueError(
            f"claims site {site!r} but is signed by {fp}; {source} lists {keys} for that site, "
            "so this is a forgery or the site changed its key (check with the site, then add "
            "its new fingerprint to that file)"
        )
    others = trusted.sites_of(fp)
    if listed is None and others:
        raise ValueError(
            f"claims site {site!r} but is signed by {fp}, the key of site(s) "
            f"{', '.join(others)} in {source}: one site's key may not speak for another"
        )
    if listed is not None:
        return SignerVerdict("trusted", claimed_site, f"trusted for site {site} in {source}")
    if pinned is not None:
        return SignerVerdict("pinned", None, "pinned with --signer")
    return SignerVerdict("unknown", None, "")
