"""``bundle open|inspect`` on bundles made by the real ``fieldtrace collect``: the tree and
its modes, the signer state in each case (trusted, pinned, unknown), trusted_signers
validation, and the command-line mistakes a new user makes (bad -o, directories given
where files belong, a mistyped --signer), each a clear exit 2 with nothing touched."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import Cli
from tests.e2e.helpers import collect_json, write_site

pytestmark = pytest.mark.e2e


@pytest.fixture
def made(cli: Cli) -> tuple[Path, str]:
    """A bundle collected here (two small steps), and its signer's fingerprint."""
    write_site(
        cli,
        [
            '{id: hello, collector: local.command, command: "echo hello"}',
            '{id: uname, collector: local.command, command: "uname -a"}',
        ],
    )
    data = collect_json(cli, check=0)
    return Path(data["bundle"]), str(data["signer"])


def _xdg(cli: Cli) -> Path:
    return Path(cli.env["XDG_CONFIG_HOME"])


def trusted_file(cli: Cli, text: str) -> Path:
    """The engineer's default trusted_signers file (the cli fixture's XDG_CONFIG_HOME)."""
    path = _xdg(cli) / "fieldtrace" / "trusted_signers"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_open_makes_a_0700_0600_tree_of_exactly_the_manifest(
    cli: Cli, made: tuple[Path, str], tmp_path: Path
) -> None:
    bundle, _ = made
    out = tmp_path / "cases" / "4711"  # made (0700) when missing
    proc = subprocess.run(  # a permissive umask: the modes must not depend on it
        [sys.executable, "-m", "agent", "bundle", "open", str(bundle), "-o", str(out), "--json"],
        env=cli.env,
        cwd=cli.cwd,
        capture_output=True,
        text=True,
        timeout=120,
        umask=0,
    )
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    top = Path(res["extracted_to"])
    assert top == out / bundle.name.removesuffix(".tar.zst.age")
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    manifest = json.loads((top / "manifest.json").read_text())
    listed = {a["path"]: a for s in manifest["steps"] for a in s["artifacts"]}
    found = {}
    for dirpath, _dirs, files in os.walk(top):
        assert stat.S_IMODE(os.lstat(dirpath).st_mode) == 0o700, dirpath
        for name in files:
            p = Path(dirpath) / name
            assert stat.S_IMODE(p.lstat().st_mode) == 0o600 and p.is_file(), p
            found[str(p.relative_to(top))] = p
    assert set(found) == set(listed) | {"manifest.json", "manifest.sig", "signer.pub"}
    for rel, meta in listed.items():
        assert hashlib.sha256(found[rel].read_bytes()).hexdigest() == meta["sha256"]
    assert (top / "local/hello/output.txt").read_text() == "hello\n"
    assert sorted(p.name for p in out.iterdir()) == [top.name]  # no temp dir left
    # the same bundle again: the tree exists, so nothing is touched
    again = cli.run("bundle", "open", str(bundle), "-o", str(out), check=2)
    assert "already exists; nothing was extracted" in again.stderr
    assert "Traceback" not in again.stderr


def test_signer_state_unknown_pinned_trusted(cli: Cli, made: tuple[Path, str]) -> None:
    bundle, fp = made
    # unknown: valid, but said loudly, with the line to add once the site confirms the key
    unknown = cli.run("bundle", "inspect", str(bundle), check=0)
    assert f"signature: valid, but from an UNKNOWN key {fp}" in unknown.stdout
    assert "signature: valid, signer" not in unknown.stdout
    assert "WARNING" in unknown.stderr and "UNKNOWN" in unknown.stderr
    slug = json.loads(cli.run("bundle", "inspect", str(bundle), "--json").stdout)
    assert slug["signer_state"] == "unknown" and slug["signer"] == fp
    site = slug["manifest"]["site"]["slug"]
    assert f"echo '{site} {fp}' >> {_xdg(cli) / 'fieldtrace' / 'trusted_signers'}" in (
        unknown.stderr
    )
    cli.run("bundle", "inspect", str(bundle), "--require-trusted", check=1)

    # pinned with --signer: a fingerprint, a key line, or a file holding either
    key_line = json.loads(cli.run("keys", "show", "--json", check=0).stdout)["signing_key"]
    key_file = cli.cwd / "site.pub"
    key_file.write_text(key_line + "\n")
    for value in (fp, key_line, str(key_file)):
        pinned = cli.run("bundle", "inspect", str(bundle), "--signer", value, check=0)
        assert f"signature: valid, signer {fp} (pinned with --signer)" in pinned.stdout
        assert "UNKNOWN" not in pinned.stdout + pinned.stderr

    # trusted: the default trusted_signers file, and one named with --trusted-signers
    default = trusted_file(cli, f"# site   key\n{site}  {fp}   # onboarded 2024-01\n")
    trusted = cli.run("bundle", "inspect", str(bundle), "--require-trusted", check=0)
    assert f"signer {fp} (trusted for site {site} in {default})" in trusted.stdout
    data = json.loads(cli.run("bundle", "inspect", str(bundle), "--json", check=0).stdout)
    assert data["signer_state"] == "trusted" and data["signer_site"] == site
    default.unlink()
    other = cli.cwd / "signers.txt"
    other.write_text(f"{site} {fp}\n")
    named = cli.run("bundle", "open", str(bundle), "--trusted-signers", str(other), check=0)
    assert f"(trusted for site {site} in {other})" in named.stdout
    # the file says another key signs for this site: refused, nothing extracted
    trusted_file(cli, f"{site} SHA256:{'A' * 43}\n")
    out = cli.cwd / "refused"
    bad = cli.run("bundle", "open", str(bundle), "-o", str(out), check=1)
    assert f"claims site '{site}' but is signed by {fp}" in bad.stderr
    assert not out.exists()


def test_trusted_signers_file_is_validated_like_config(cli: Cli, made: tuple[Path, str]) -> None:
    bundle, fp = made
    path = trusted_file(cli, f"acme {fp}\nACME {fp}\nbeta SHA256:short\ngamma\n")
    bad = cli.run("bundle", "inspect", str(bundle), check=2)
    assert f"{path}: line 2: site 'ACME'" in bad.stderr
    assert f"{path}: line 3: 'SHA256:short' is not a key fingerprint" in bad.stderr
    assert f"{path}: line 4: expected 'SITE SHA256:...' (two fields), got 1" in bad.stderr
    path.write_text(f"acme {fp}\n")
    path.chmod(0o666)
    loose = cli.run("bundle", "inspect", str(bundle), check=2)
    assert "writable by group or others (mode 0666)" in loose.stderr
    assert f"chmod go-w {path}" in loose.stderr
    gone = cli.run("bundle", "inspect", str(bundle), "--trusted-signers", "/nonexistent", check=2)
    assert "--trusted-signers /nonexistent: no such file" in gone.stderr


def test_usage_mistakes_are_exit_2_naming_the_fix(
    cli: Cli, made: tuple[Path, str], tmp_path: Path
) -> None:
    bundle, fp = made
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x\n")
    a_dir = tmp_path / "somedir"
    a_dir.mkdir()
    cases = [
        (["open", str(bundle), "-o", str(a_file)], "exists and is not a directory; pass -o DIR"),
        (["open", str(bundle), "-o", str(a_file / "sub")], "cannot create the directory"),
        (["inspect", str(a_dir)], f"{a_dir}: is a directory; give the bundle FILE"),
        (["inspect", str(tmp_path / "nope.age")], "no such bundle file"),
        (["inspect", str(bundle), "-i", str(a_dir)], "is a directory; give the age identity FILE"),
        (["inspect", str(bundle), "--signer", str(a_dir)], "is a directory, not a file"),
        (["inspect", str(bundle), "--signer", fp[:-1]], "got 42"),
        (["inspect", str(bundle), "--signer", "ssh-ed25519 AAAAbogus"], "not a valid ssh-ed25519"),
        (["inspect", str(bundle), "--signer", str(a_file)], "holds no single fingerprint"),
        (["inspect", str(bundle), "--trusted-signers", str(a_dir)], "is a directory, not a file"),
    ]
    for args, message in cases:
        before = sorted(p.name for p in tmp_path.iterdir())
        proc = cli.run("bundle", *args, check=2)
        assert message in proc.stderr, (args, proc.stderr)
        assert "Traceback" not in proc.stderr and "forged" not in proc.stderr
        assert "signature does not verify" not in proc.stderr
        assert sorted(p.name for p in tmp_path.iterdir()) == before, args


def test_decrypt_hint_depends_on_whether_i_was_given(
    cli: Cli, made: tuple[Path, str], tmp_path: Path
) -> None:
    bundle, _ = made
    other = tmp_path / "other.txt"
    subprocess.run(["age-keygen", "-o", str(other)], check=True, capture_output=True)
    given = cli.run("bundle", "inspect", str(bundle), "-i", str(other), check=1)
    hint = (
        f"cannot decrypt: No matching keys found (it is not encrypted to the identity in {other})"
    )
    assert hint in given.stderr
    assert "pass the vendor's identity with -i" not in given.stderr
    # without -i the site's own identity is tried; swap it for a stranger's
    own = cli.home / "identity.txt"
    own.write_text(other.read_text())
    implicit = cli.run("bundle", "inspect", str(bundle), check=1)
    assert "pass the vendor's identity with -i FILE" in implicit.stderr
