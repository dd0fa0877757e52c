"""``fieldtrace keys show``: the site's signing key and age identity, for onboarding."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser("keys", help="the site's signing key and encryption identity")
    ksub = p.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    show = ksub.add_parser("show", help="print public keys and fingerprint (creates them once)")
    show.add_argument("--json", action="store_true")
    show.set_defaults(handler=run_show)


def run_show(args: argparse.Namespace) -> int:
    from agent.cli.common import emit_json
    from agent.keys import IDENTITY_FILE, SIGNING_KEY_FILE, home, load_identity, load_signing_key

    base = home()
    key = load_signing_key(base)
    ident = load_identity(base)
    data = {
        "signing_key": key.public_openssh(),
        "fingerprint": key.fingerprint(),
        "signing_key_file": str(base / SIGNING_KEY_FILE),
        "age_recipient": str(ident.to_public()),  # type: ignore[attr-defined]
        "identity_file": str(base / IDENTITY_FILE),
    }
    if args.json:
        emit_json(data)
        return 0
    print(f"signing key:  {data['signing_key']}")
    print(f"fingerprint:  {data['fingerprint']}")
    print(f"age identity: {data['identity_file']} (recipient {data['age_recipient']})")
    print(
        "Give the fingerprint to the vendor when the site is onboarded; they check bundles "
        "with 'fieldtrace bundle inspect FILE --signer FINGERPRINT'."
    )
    return 0
