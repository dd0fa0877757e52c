"""``fieldtrace bundle open|inspect``: decrypt, verify everything, then (open) extract.

Exit codes: 0 verified (the signer state is printed: trusted, pinned, or an UNKNOWN key,
which is a warning unless ``--require-trusted``); 1 the bundle failed a check (nothing was
extracted); 2 a bad argument (nothing touched); 3 the output cannot hold the bundle or
writing failed (nothing extracted). See docs/bundle-reading.md.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from typing import Any

_SIGNER_HELP = (
    "expected signer: fingerprint (SHA256:...), 'ssh-ed25519 ...' line, or a file holding it"
)


def register(sub: Any) -> None:
    p = sub.add_parser("bundle", help="open or inspect an encrypted bundle")
    bsub = p.add_subparsers(dest="bundle_command", metavar="ACTION", required=True)
    for name, helptext in (
        ("inspect", "verify signature, signer and every sha256, print a summary"),
        ("open", "verify everything, then extract into a directory (0700, files 0600)"),
    ):
        b = bsub.add_parser(name, help=helptext)
        b.add_argument("file", metavar="FILE")
        b.add_argument(
            "-i",
            "--identity",
            metavar="FILE",
            help="age identity file (default: this site's identity.txt)",
        )
        b.add_argument("--signer", metavar="KEY", help=_SIGNER_HELP)
        b.add_argument(
            "--trusted-signers",
            metavar="FILE",
            help="site -> key fingerprint file (default: "
            "$XDG_CONFIG_HOME/fieldtrace/trusted_signers, if it exists)",
        )
        b.add_argument(
            "--require-trusted",
            action="store_true",
            help="refuse a bundle signed by a key neither pinned nor in trusted_signers",
        )
        b.add_argument("--json", action="store_true")
        if name == "open":
            b.add_argument(
                "-o",
                "--output",
                metavar="DIR",
                default=".",
                help="where to extract (default: current directory); the tree goes into "
                "DIR/<bundle name>, which must not exist",
            )
        b.set_defaults(handler=run)


def _bundle_file(value: str) -> Path:
    from agent.errors import ConfigError
    from agent.manifest import printable

    path = Path(value)
    shown = printable(value)
    if path.is_dir():
        raise ConfigError(f"{shown}: is a directory; give the bundle FILE (*.tar.zst.age)")
    if not path.exists():
        raise ConfigError(f"{shown}: no such bundle file")
    if not path.is_file():
        raise ConfigError(f"{shown}: not a regular file; give the bundle FILE (*.tar.zst.age)")
    return path


def _identity(value: str | None) -> tuple[Path, object]:
    from agent.errors import ConfigError
    from agent.keys import IDENTITY_FILE, home, read_identity_file
    from agent.manifest import printable

    if value is None:
        path = home() / IDENTITY_FILE
        if not path.is_file():
            raise ConfigError(
                f"{printable(path)}: this site has no identity file; pass the vendor's age "
                "identity with -i FILE"
            )
        return path, read_identity_file(path)
    path = Path(value)
    if path.is_dir():
        raise ConfigError(f"-i {printable(value)}: is a directory; give the age identity FILE")
    if not path.exists():
        raise ConfigError(f"-i {printable(value)}: no such file; give the age identity FILE")
    return path, read_identity_file(path)


def _output_dir(value: str) -> tuple[Path, bool]:
    """The -o directory (made 0700 when missing) and whether this run made it."""
    from agent.errors import ConfigError
    from agent.manifest import printable

    out = Path(value)
    if out.is_dir():
        return out, False
    if out.exists() or out.is_symlink():
        raise ConfigError(f"-o {printable(value)}: exists and is not a directory; pass -o DIR")
    try:
        out.mkdir(parents=True, mode=0o700)
    except OSError as exc:
        raise ConfigError(
            f"-o {printable(value)}: cannot create the directory: {exc.strerror}; pass -o DIR "
            "(a directory you can write, or a new one in such a directory)"
        ) from None
    return out, True


def run(args: argparse.Namespace) -> int:
    from agent.bundle import BundleInvalid, DecryptFailed, read_bundle, tree_name
    from agent.errors import ConfigError
    from agent.manifest import printable
    from agent.signers import load_trusted_signers, parse_signer

    bundle = _bundle_file(args.file)
    pinned = parse_signer(args.signer) if args.signer is not None else None
    trusted = load_trusted_signers(Path(args.trusted_signers) if args.trusted_signers else None)
    ident_path, identity = _identity(args.identity)
    extract = None
    made = False
    if args.bundle_command == "open":
        extract, made = _output_dir(args.output)
        target = extract / tree_name(bundle)
        if target.exists() or target.is_symlink():
            if made:
                _remove_empty(extract)
            raise ConfigError(
                f"{printable(target)} already exists; nothing was extracted: remove it or "
                "pass another -o"
            )
    try:
        v = read_bundle(
            bundle,
            [identity],
            pinned,
            extract,
            trusted=trusted,
            require_trusted=args.require_trusted,
        )
    except DecryptFailed as exc:
        if made and extract is not None:
            _remove_empty(extract)
        if not exc.no_key:
            hint = "the file is damaged, cut short or was altered after it was encrypted"
        elif args.identity:
            hint = f"it is not encrypted to the identity in {printable(ident_path)}"
        else:
            hint = (
                f"it is not encrypted to this site's identity {printable(ident_path)}; "
                "pass the vendor's identity with -i FILE"
            )
        raise BundleInvalid(
            f"{exc.shown}: cannot decrypt: {exc.reason} ({hint}){exc.tail}"
        ) from None
    except BaseException:
        if made and extract is not None:
            _remove_empty(extract)
        raise
    if args.json:
        _emit_json(v)
    else:
        _print_human(v)
    _warn(v)
    return 0 if not v.problems else 1


def _remove_empty(path: Path) -> None:
    """Remove the -o directory this run made, now that nothing was extracted into it."""
    with contextlib.suppress(OSError):
        path.rmdir()


def _emit_json(v: Any) -> None:
    import json

    doc = {
        "ok": not v.problems,
        "signer": v.signer_fingerprint,
        "signer_key": v.signer,
        "signer_state": v.signer_state,
        "signer_site": v.signer_site,
        "artifacts": v.artifacts,
        "bytes": v.bytes,
        "problems": v.problems,
        "warnings": v.warnings,
        "extracted_to": str(v.extracted_to) if v.extracted_to else None,
        "manifest": v.manifest,
    }
    # ensure_ascii: every control or non-ASCII character from the bundle is a \u escape
    sys.stdout.write(json.dumps(doc, indent=2, ensure_ascii=True, default=str) + "\n")


def _print_human(v: Any) -> None:
    from agent.cli.common import human_size
    from agent.manifest import printable as p

    m = v.manifest
    job = m.get("job") or {}
    site = m.get("site") or {}
    bundle_id = str(m.get("bundle_id") or "?")[:8]
    print(
        f"bundle {p(bundle_id)}: {p(site.get('company') or site.get('slug') or '?')}"
        f" / profile {p(job.get('profile') or '?')} on {p(', '.join(job.get('devices', [])))}"
    )
    print(
        f"  site {p(site.get('slug') or '?')}, created {p(job.get('created') or '?')} by "
        f"{p(job.get('requested_by') or '?')} (trigger {p(job.get('trigger') or '?')}, "
        f"ticket {p(job.get('ticket') or '-')})"
    )
    if v.signer_state == "unknown":
        print(
            f"  signature: valid, but from an UNKNOWN key {v.signer_fingerprint} (not pinned: "
            "pass --signer, or list the site's key in trusted_signers)"
        )
    else:
        print(f"  signature: valid, signer {v.signer_fingerprint} ({v.signer_note})")
    print(
        f"  {v.artifacts} artifacts, {human_size(v.bytes)}: "
        + ("every sha256 matches the manifest" if not v.problems else "PROBLEMS:")
    )
    for problem in v.problems:
        print(f"    {p(problem)}")
    for st in m.get("steps", []):
        if st.get("status") not in ("ok", ""):
            print(
                f"  {p(st.get('device'))}/{p(st.get('id'))}: {p(st.get('status'))}: "
                f"{p(st.get('error'))}"
            )
    for att in m.get("attachments", []):
        state = att.get("error") or human_size(att.get("size") or 0)
        print(
            f"  attached by the technician: {p(att.get('path'))} ({p(att.get('name'))}; {p(state)})"
        )
    if v.extracted_to:
        print(f"extracted to {p(v.extracted_to)} (directories 0700, files 0600)")


def _warn(v: Any) -> None:
    from agent.manifest import printable
    from agent.signers import SITE_RE, default_trusted_signers

    for w in v.warnings:
        print(f"fieldtrace: warning: {printable(w)}", file=sys.stderr)
    if v.signer_state != "unknown":
        return
    slug = (v.manifest.get("site") or {}).get("slug") or ""
    print(
        f"fieldtrace: WARNING: the signature is valid but the key {v.signer_fingerprint} is "
        f"UNKNOWN: anyone can make a key and sign a bundle claiming site {printable(slug)!r}.",
        file=sys.stderr,
    )
    path = default_trusted_signers()
    if SITE_RE.fullmatch(slug):  # only a plain name goes into a command to copy
        print(
            "  Check the fingerprint with the site ('fieldtrace keys show' there), then trust"
            f" it:\n  mkdir -p {path.parent} && echo '{slug} {v.signer_fingerprint}' >> {path}",
            file=sys.stderr,
        )
    else:
        print(
            "  The bundle's site name is not a valid site name, so it cannot be trusted.",
            file=sys.stderr,
        )
