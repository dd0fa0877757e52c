"""``fieldtrace collect`` end to end: stock tools open the bundle, hashes match, secrets are
scrubbed, and ``bundle inspect`` catches tampering and foreign signers."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.conftest import Cli
from tests.e2e.helpers import (
    collect_json,
    manifest_of,
    open_with_stock_tools,
    sha256,
    step,
    write_site,
)

pytestmark = pytest.mark.e2e

PEM_BODY = "MC4CAQAwBQYDK2VwBCIEIBf7k8YxPlantedPemKeyMaterialXyZ0123456789ab"
SECRETS = {
    "password": "Pl4nted-Passw0rd!",
    "community": "pl4ntedCommunity",
    "enable": "pl4ntedEnableHash",
    "token": "pl4ntedBearerToken0123456789",
    "urlpass": "pl4ntedUrlPass",
    "pem": PEM_BODY,
    "literal": "pl4nted-literal-value",
}


def _plant(dir: Path) -> Path:
    f = dir / "device.conf"
    f.write_text(
        "hostname gw1\n"
        f"password = {SECRETS['password']}\n"
        f"snmp-server community {SECRETS['community']} RO\n"
        f"rocommunity {SECRETS['community']} 10.0.0.0/8\n"
        f"enable secret 5 {SECRETS['enable']}\n"
        f"Authorization: Bearer {SECRETS['token']}\n"
        f"upstream https://admin:{SECRETS['urlpass']}@upstream.example/api\n"
        "-----BEGIN PRIVATE KEY-----\n"
        f"{PEM_BODY}\n"
        "-----END PRIVATE KEY-----\n"
        f"note mentions {SECRETS['literal']} in passing\n"
        "interface eth0 is up\n"
    )
    return f


def test_no_config_collects_this_host_into_a_bundle_stock_tools_open(
    cli: Cli, tmp_path: Path
) -> None:
    data = collect_json(cli, check=0)
    bundle = Path(data["bundle"])
    assert bundle.is_file() and bundle.name.endswith(".tar.zst.age")
    assert bundle.parent == cli.home / "outbox" / "delivered"
    assert "-local-default-" in bundle.name
    assert bundle.read_bytes().startswith(b"age-encryption.org/v1")
    identity = cli.home / "identity.txt"
    assert identity.stat().st_mode & 0o777 == 0o600
    top = open_with_stock_tools(bundle, identity, tmp_path / "open")
    m = manifest_of(top)
    assert m["format"] == "fieldtrace.bundle/1"
    assert m["job"]["trigger"] == "cli" and m["job"]["profile"] == "default"
    assert m["kb"]["linux-host"]["sha256"]
    # every artifact is there and its sha256 and size match the manifest
    artifacts = [a for s in m["steps"] for a in s["artifacts"]]
    assert len(artifacts) >= 10
    for a in artifacts:
        f = top / a["path"]
        assert sha256(f) == a["sha256"], a["path"]
        assert f.stat().st_size == a["size"]
    # what a support engineer needs from a Linux host
    system = json.loads((top / "local/snapshot/system.json").read_text())
    assert system["memory"]["total"] > 0 and system["uptime_s"] > 0
    assert "Linux" in (top / "local/uname/output.txt").read_text()
    assert "Filesystem" in (top / "local/disk/output.txt").read_text()
    assert "Inodes" in (top / "local/inodes/output.txt").read_text()
    assert step(m, "snapshot")["facts"]["processes"] > 0
    # no plaintext left behind
    assert not any((cli.home / "staging").iterdir())
    assert not list((cli.home / "outbox").rglob("*.partial"))


def test_human_output_says_where_the_bundle_is_and_how_to_open_it(cli: Cli) -> None:
    proc = cli.run("collect", check=0)
    out = proc.stdout
    assert "bundle: " + str(cli.home / "outbox" / "delivered") in out
    assert f"age -d -i {cli.home / 'identity.txt'}" in out
    # the command as it was run here (python -m agent); tests/e2e/test_newcomer.py has the rest
    assert "-m agent bundle open " + str(cli.home / "outbox" / "delivered") in out
    assert "signed by SHA256:" in out


def test_planted_secrets_never_appear_in_the_bundle(cli: Cli, tmp_path: Path) -> None:
    planted = _plant(tmp_path)
    lit = tmp_path / "literal.secret"
    lit.write_text(SECRETS["literal"] + "\n")
    write_site(
        cli,
        [
            f"{{id: conf, collector: local.file, path: {planted}}}",
            f'{{id: cat, collector: local.command, command: "cat {planted}"}}',
        ],
        f'[scrub]\nvalues = [{{ file = "{lit}" }}]\n',
    )
    data = collect_json(cli, check=0)
    bundle = Path(data["bundle"])
    top = open_with_stock_tools(bundle, cli.home / "identity.txt", tmp_path / "open")
    everything = b"".join(p.read_bytes() for p in top.rglob("*") if p.is_file())
    for name, secret in SECRETS.items():
        assert secret.encode() not in everything, f"{name} leaked"
    text = (top / "local/conf/files" / str(planted).lstrip("/")).read_text()
    assert "hostname gw1" in text and "interface eth0 is up" in text  # context is kept
    assert "password = <scrubbed>" in text
    assert "snmp-server community <scrubbed> RO" in text
    assert "-----BEGIN PRIVATE KEY-----" in text
    counts = step(manifest_of(top), "conf")["artifacts"][0]["scrubbed"]
    assert counts["community"] >= 2 and counts["private_key"] == 1 and counts["value"] == 1
    manifest_text = (top / "manifest.json").read_text()
    assert SECRETS["password"] not in manifest_text
    assert data["scrubbed"]["community"] >= 4  # file + command output


def test_bundle_inspect_accepts_and_rejects_tampering(cli: Cli, tmp_path: Path) -> None:
    write_site(cli, ['{id: hello, collector: local.command, command: "echo hello world"}'])
    data = collect_json(cli, check=0)
    bundle = Path(data["bundle"])
    fp = data["signer"]
    shown = cli.run("keys", "show", "--json", check=0)
    assert json.loads(shown.stdout)["fingerprint"] == fp
    ok = cli.run("bundle", "inspect", str(bundle), "--signer", fp, check=0)
    assert "signature: valid" in ok.stdout and "every sha256 matches" in ok.stdout

    identity = cli.home / "identity.txt"
    recipient = subprocess.run(
        ["age-keygen", "-y", str(identity)], capture_output=True, text=True, check=True
    ).stdout.strip()

    def repack(name: str, change: callable) -> Path:  # type: ignore[valid-type]
        work = tmp_path / name
        top = open_with_stock_tools(bundle, identity, work)
        change(top)
        out = tmp_path / f"{name}.tar.zst.age"
        tar = subprocess.Popen(
            ["tar", "--zstd", "-c", "-C", str(work), top.name], stdout=subprocess.PIPE
        )
        subprocess.run(["age", "-r", recipient, "-o", str(out)], stdin=tar.stdout, check=True)
        assert tar.wait() == 0
        return out

    # 1. an artifact altered after signing
    def alter_artifact(top: Path) -> None:
        (top / "local/hello/output.txt").write_text("hello tampered\n")

    bad = cli.run("bundle", "inspect", str(repack("artifact", alter_artifact)), check=1)
    assert "local/hello/output.txt: sha256/size differ from the manifest" in bad.stdout

    # 2. the manifest altered (signature no longer matches)
    def alter_manifest(top: Path) -> None:
        m = manifest_of(top)
        m["job"]["requested_by"] = "mallory@elsewhere"
        (top / "manifest.json").write_text(json.dumps(m, indent=2))

    bad = cli.run("bundle", "inspect", str(repack("manifest", alter_manifest)), check=1)
    assert "signature does not verify" in bad.stderr

    # 3. re-signed consistently, but by another key than --signer
    def resign(top: Path) -> None:
        key = Ed25519PrivateKey.generate()
        (top / "local/hello/output.txt").write_text("forged\n")
        m = manifest_of(top)
        art = m["steps"][0]["artifacts"][0]
        art["sha256"] = __import__("hashlib").sha256(b"forged\n").hexdigest()
        art["size"] = 7
        raw = json.dumps(m, indent=2).encode()
        (top / "manifest.json").write_bytes(raw)
        (top / "manifest.sig").write_bytes(base64.b64encode(key.sign(raw)) + b"\n")
        pub = key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        (top / "signer.pub").write_bytes(pub + b"\n")

    forged = repack("forged", resign)
    bad = cli.run("bundle", "inspect", str(forged), "--signer", fp, check=1)
    assert f"not by the expected signer {fp}" in bad.stderr
    # without --signer it verifies, but says the signer is not pinned and shows who it is
    unpinned = cli.run("bundle", "inspect", str(forged), check=0)
    assert "not pinned" in unpinned.stdout and fp not in unpinned.stdout


def test_bundle_open_extracts_and_verifies(cli: Cli, tmp_path: Path) -> None:
    write_site(cli, ['{id: hello, collector: local.command, command: "echo hello"}'])
    bundle = Path(collect_json(cli, check=0)["bundle"])
    dest = tmp_path / "out"
    proc = cli.run("bundle", "open", str(bundle), "-o", str(dest), "--json", check=0)
    res = json.loads(proc.stdout)
    top = Path(res["extracted_to"])
    assert (top / "local/hello/output.txt").read_text() == "hello\n"
    assert (top / "manifest.json").is_file()
    # the identity can be given explicitly, and a wrong one fails clearly
    other = tmp_path / "other.txt"
    subprocess.run(["age-keygen", "-o", str(other)], check=True, capture_output=True)
    bad = cli.run("bundle", "inspect", str(bundle), "-i", str(other), check=1)
    assert "cannot decrypt" in bad.stderr


def test_vendor_recipient_can_open_the_bundle(cli: Cli, tmp_path: Path) -> None:
    vendor = tmp_path / "vendor.txt"
    subprocess.run(["age-keygen", "-o", str(vendor)], check=True, capture_output=True)
    rcpt = subprocess.run(
        ["age-keygen", "-y", str(vendor)], capture_output=True, text=True, check=True
    ).stdout.strip()
    write_site(
        cli,
        ['{id: hello, collector: local.command, command: "echo hi"}'],
        f'[vendor]\nrecipients = ["{rcpt}"]\n',
    )
    bundle = Path(collect_json(cli, check=0)["bundle"])
    top = open_with_stock_tools(bundle, vendor, tmp_path / "v")
    assert (top / "local/hello/output.txt").read_text() == "hi\n"


def test_output_option_and_dry_run(cli: Cli, tmp_path: Path) -> None:
    write_site(cli, ['{id: hello, collector: local.command, command: "echo hi"}'])
    plan = json.loads(cli.run("collect", "--dry-run", "--json", check=0).stdout)
    assert plan["steps"][0]["collector"] == "local.command"
    assert plan["steps"][0]["options"] == {"command": "echo hi"}
    assert not (cli.home / "outbox").exists() or not list((cli.home / "outbox").rglob("*.age"))
    out = tmp_path / "mine.tar.zst.age"
    data = collect_json(cli, "--output", str(out), check=0)
    assert Path(data["bundle"]) == out and out.is_file()
    assert shutil.which("age")
