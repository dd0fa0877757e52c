"""``fieldtrace bundle open|inspect``: decrypt, verify signature and hashes, extract."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser("bundle", help="open or inspect an encrypted bundle")
    bsub = p.add_subparsers(dest="bundle_command", metavar="ACTION", required=True)
    for name, helptext in (
        ("inspect", "verify signature and every sha256, print a summary"),
        ("open", "verify and extract into a directory"),
    ):
        b = bsub.add_parser(name, help=helptext)
        b.add_argument("file", metavar="FILE")
        b.add_argument(
            "-i",
            "--identity",
            metavar="FILE",
            help="age identity file (default: this site's identity.txt)",
        )
        b.add_argument(
            "--signer",
            metavar="KEY",
            help="expected signer: fingerprint (SHA256:...), 'ssh-ed25519 ...' "
            "line, or a file holding it",
        )
        b.add_argument("--json", action="store_true")
        if name == "open":
            b.add_argument(
                "-o",
                "--output",
                metavar="DIR",
                default=".",
                help="where to extract (default: current directory)",
            )
        b.set_defaults(handler=run)


def _signer(value: str | None) -> str | None:
    if value is None:
        return None
    p = Path(value)
    if not value.startswith(("SHA256:", "ssh-")) and p.is_file():
        value = p.read_text().strip()
    if value.startswith("ssh-"):
        parts = value.split()
        return " ".join(parts[:2])
    return value


def run(args: argparse.Namespace) -> int:
    from agent.bundle import read_bundle
    from agent.cli.common import emit_json, human_size
    from agent.errors import ConfigError
    from agent.keys import IDENTITY_FILE, home, read_identity_file

    ident_path = Path(args.identity) if args.identity else home() / IDENTITY_FILE
    if not ident_path.is_file():
        raise ConfigError(f"{ident_path}: identity file not found (pass -i FILE)")
    identity = read_identity_file(ident_path)
    extract = None
    if args.bundle_command == "open":
        extract = Path(args.output)
        extract.mkdir(parents=True, exist_ok=True)
    v = read_bundle(Path(args.file), [identity], _signer(args.signer), extract)
    m = v.manifest
    ok = not v.problems
    if args.json:
        emit_json(
            {
                "ok": ok,
                "signer": v.signer_fingerprint,
                "signer_key": v.signer,
                "artifacts": v.artifacts,
                "bytes": v.bytes,
                "problems": v.problems,
                "extracted_to": str(v.extracted_to) if v.extracted_to else None,
                "manifest": m,
            }
        )
    else:
        job, site = m.get("job", {}), m.get("site", {})
        print(
            f"bundle {m.get('bundle_id', '?')[:8]}: {site.get('company') or site.get('slug')}"
            f" / profile {job.get('profile')} on {', '.join(job.get('devices', []))}"
        )
        print(
            f"  created {job.get('created')} by {job.get('requested_by')} "
            f"(trigger {job.get('trigger')}, ticket {job.get('ticket') or '-'})"
        )
        print(
            f"  signature: valid, signer {v.signer_fingerprint}"
            + ("" if args.signer else " (not pinned: pass --signer to check who sent it)")
        )
        print(
            f"  {v.artifacts} artifacts, {human_size(v.bytes)}: "
            + ("every sha256 matches the manifest" if ok else "PROBLEMS:")
        )
        for p in v.problems:
            print(f"    {p}")
        for st in m.get("steps", []):
            if st.get("status") != "ok":
                print(f"  {st['device']}/{st['id']}: {st['status']}: {st.get('error')}")
        for att in m.get("attachments", []):
            state = att.get("error") or human_size(att.get("size", 0))
            print(f"  attached by the technician: {att['path']} ({att['name']}; {state})")
        if v.extracted_to:
            print(f"extracted to {v.extracted_to}")
    return 0 if ok else 1
