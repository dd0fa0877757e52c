"""Every attack in ``tests/data/hostile_bundles/`` (one file per case, built into a real
encrypted bundle by ``tests/e2e/hostile_bundles.py``) is run through ``fieldtrace bundle
open`` (or ``inspect``) in a subprocess, as an engineer would, and must be contained: the
expected exit code and message, nothing written anywhere outside a refused run's temp dir
(the whole sandbox is compared before and after), no raw control character on the terminal,
and a peak RSS under 300 MiB. The same files go through the README's stock-tool command, as
root and as a throwaway unprivileged user: nothing outside the fresh 0700 directory changes.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO
from tests.e2e.hostile_bundles import TOP, Case, Keys, build, load_cases, substitute
from tests.fixtures.sshd import throwaway_user

pytestmark = pytest.mark.e2e

CASES = load_cases()
RSS_CAP_KIB = 300 * 1024
RUN_TIMEOUT = 300  # generous: a busy 2-core VM; the bombs are refused long before this
# the README's stock-tool command, as argv (tests/e2e/test_hostile_bundles.py keeps it true)
STOCK_TAR = ["tar", "--zstd", "-x", "-k", "--no-same-owner", "--no-same-permissions", "-C"]
TERMINAL_CONTROLS = ("\x1b", "\x07", "\x9b", "\r", "\u202e")


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys.make()


def snapshot(root: Path) -> dict[str, tuple[Any, ...]]:
    """Every entry under root (links not followed): type, mode, owner, size, content hash."""
    out: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            rel = str(p.relative_to(root))
            if stat.S_ISREG(st.st_mode):
                digest = hashlib.sha256(p.read_bytes()).hexdigest()
                out[rel] = ("file", st.st_mode, st.st_uid, st.st_size, digest)
            elif stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p))
            else:
                out[rel] = (stat.S_IFMT(st.st_mode), st.st_mode, st.st_uid)
    return out


@dataclass
class Sandbox:
    root: Path
    out: Path
    outside: Path
    bundle: Path
    identity: Path
    trusted: Path | None


def make_sandbox(root: Path, case: Case, keys: Keys) -> Sandbox:
    root.mkdir(parents=True, exist_ok=True)
    out, outside = root / "out", root / "outside"
    out.mkdir()
    outside.mkdir()
    (outside / "victim.txt").write_text("the engineer's own file\n")
    bundle = root / f"{TOP}.tar.zst.age"
    bundle.write_bytes(build(case, keys))
    identity = root / "vendor-identity.txt"
    identity.write_text(f"# vendor identity\n{keys.vendor}\n")
    identity.chmod(0o600)
    values = placeholders(keys, root)
    trusted = None
    text = case.spec.get("trusted_signers", "acme-telecom {site_fp}\n")
    if text is not None:
        trusted = root / "trusted_signers"
        trusted.write_text(substitute(text, values))
    for plant in case.spec.get("preplant") or []:
        (out / substitute(plant["name"], values)).symlink_to(substitute(plant["symlink"], values))
    return Sandbox(root, out, outside, bundle, identity, trusted)


def placeholders(keys: Keys, root: Path) -> dict[str, str]:
    return {
        "site_fp": keys.fp("site"),
        "other_fp": keys.fp("other"),
        "tree": TOP,
        "outside": str(root / "outside"),
    }


def run_measured(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[int, str, str, int]:
    """Run argv under GNU time; (exit code, stdout, stderr, peak RSS in KiB of argv's
    process). Not wait4 from here: a child forked from this big process starts with its
    peak RSS (exec keeps the old image's high-water mark); time's own child does not."""
    with tempfile.TemporaryDirectory() as tmp:
        rss_file = Path(tmp) / "rss"
        proc = subprocess.run(
            ["/usr/bin/time", "-q", "-f", "%M", "-o", str(rss_file), *argv],
            env=env,
            cwd=cwd,
            capture_output=True,
            timeout=RUN_TIMEOUT,
        )
        return (
            proc.returncode,
            proc.stdout.decode("utf-8", "replace"),
            proc.stderr.decode("utf-8", "replace"),
            int(rss_file.read_text().split()[-1]),
        )


def cli_env(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FIELDTRACE_", "XDG_"))}
    env.update(
        FIELDTRACE_HOME=str(root / "home"),
        FIELDTRACE_NO_LOGFILE="1",
        XDG_CONFIG_HOME=str(root / "xdg"),
        PYTHONPATH=str(REPO),
    )
    return env


def absolute_names(case: Case) -> list[Path]:
    return [
        Path(m["raw"]) for m in case.spec.get("members") or [] if str(m.get("raw", ""))[:1] == "/"
    ]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_bundle_is_contained(case: Case, keys: Keys, tmp_path: Path) -> None:
    box = make_sandbox(tmp_path / "sandbox", case, keys)
    values = placeholders(keys, box.root)
    argv = [sys.executable, "-m", "agent", "bundle", case.command, str(box.bundle)]
    argv += ["-i", str(box.identity)]
    if case.command == "open":
        argv += ["-o", str(box.out)]
    if box.trusted is not None:
        argv += ["--trusted-signers", str(box.trusted)]
    argv += [substitute(a, values) for a in case.spec.get("args") or []]
    before = snapshot(box.root)

    rc, stdout, stderr, rss = run_measured(argv, cli_env(box.root), box.root)

    expect = case.expect
    where = f"{case.name}: exit {rc}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    assert rc == expect["exit"], where
    if "stderr" in expect:
        assert re.search(expect["stderr"], stderr), where
    if "stdout" in expect:
        assert re.search(expect["stdout"], stdout), where
    assert "Traceback" not in stderr and "unexpected error" not in stderr, where
    for ch in TERMINAL_CONTROLS:
        assert ch not in stdout + stderr, f"{case.name}: raw {ch!r} reached the terminal"
    assert 0 < rss < RSS_CAP_KIB, f"{case.name}: peak RSS {rss // 1024} MiB"
    for path in absolute_names(case):
        assert not path.exists(), f"{case.name}: {path} was written"

    after = snapshot(box.root)
    tree = box.out / TOP
    if expect.get("extracted"):
        assert tree.is_dir() and not tree.is_symlink(), where
        added = {k: v for k, v in after.items() if k not in before}
        assert all(k.startswith(f"out/{TOP}") for k in added), sorted(added)
        assert {k: v for k, v in after.items() if k in before} == before
        check_tree(tree)
    else:
        assert after == before, f"{case.name}: the sandbox changed:\n" + "\n".join(
            sorted(set(after) ^ set(before))
        )


def check_tree(tree: Path) -> None:
    """An extracted tree: 0700 directories, 0600 regular files, exactly what the manifest
    lists (plus the signature members), each with the declared sha256."""
    import json

    manifest = json.loads((tree / "manifest.json").read_text())
    listed = {a["path"]: a for s in manifest["steps"] for a in s["artifacts"]}
    listed.update({a["path"]: a for a in manifest.get("attachments", []) if "sha256" in a})
    found = set()
    for dirpath, _dirnames, filenames in os.walk(tree):
        assert stat.S_IMODE(Path(dirpath).lstat().st_mode) == 0o700, dirpath
        for name in filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600, p
            assert st.st_uid == os.geteuid()
            found.add(str(p.relative_to(tree)))
    assert found == set(listed) | {"manifest.json", "manifest.sig", "signer.pub"}
    for rel, meta in listed.items():
        assert hashlib.sha256((tree / rel).read_bytes()).hexdigest() == meta["sha256"], rel


# --- the README's stock-tool command -------------------------------------------------------

STOCK_CASES = [c for c in CASES if c.stock]


@pytest.fixture(scope="module")
def unprivileged() -> Iterator[str]:
    assert os.geteuid() == 0, "the stock-tool tests make a throwaway user: run them as root"
    with throwaway_user("ftb") as name:
        yield name


def test_readme_shows_the_tested_stock_command() -> None:
    readme = (REPO / "README.md").read_text()
    command = "age -d -i identity.txt B | " + " ".join(STOCK_TAR) + " B.d"
    assert "mkdir -m 700 B.d && " + command in readme


@pytest.mark.parametrize("as_root", [True, False], ids=["root", "unprivileged"])
@pytest.mark.parametrize("case", STOCK_CASES, ids=[c.name for c in STOCK_CASES])
def test_stock_tools_contain_the_hostile_bundle(
    case: Case, as_root: bool, keys: Keys, unprivileged: str
) -> None:
    import pwd

    user = pwd.getpwnam("root" if as_root else unprivileged)
    # not pytest's tmp_path: the unprivileged user cannot traverse its 0700 parents
    work = Path(tempfile.mkdtemp(prefix="ft-stock-"))
    try:
        box = make_sandbox(work / "box", case, keys)
        for p in [work, *work.rglob("*")]:
            os.chown(p, user.pw_uid, user.pw_gid, follow_symlinks=False)
        fresh = box.root / "B.d"
        before = snapshot(work)
        as_user: dict[str, Any] = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
        env = {"PATH": os.environ["PATH"], "HOME": str(box.root), "LC_ALL": "C"}
        subprocess.run(["mkdir", "-m", "700", str(fresh)], check=True, timeout=30, **as_user)
        age = subprocess.Popen(
            ["age", "-d", "-i", str(box.identity), str(box.bundle)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            **as_user,
        )
        tar = subprocess.run(
            [*STOCK_TAR, str(fresh)],
            stdin=age.stdout,
            capture_output=True,
            timeout=RUN_TIMEOUT,
            env=env,
            cwd=box.root,
            **as_user,
        )
        assert age.stdout is not None
        age.stdout.close()
        age.wait(timeout=RUN_TIMEOUT)

        after = snapshot(work)
        changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
        assert {k for k in changed if not k.startswith("box/B.d")} == set(), tar.stderr.decode(
            errors="replace"
        )
        for path in absolute_names(case):
            assert not path.exists(), f"{path} was written"
        st = fresh.lstat()
        assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o700
        assert st.st_uid == user.pw_uid
        if case.expect.get("extracted"):  # a bundle fieldtrace opens, stock tools open too
            assert (fresh / TOP / "manifest.json").is_file(), tar.stderr
        for p in fresh.rglob("*"):
            pst = p.lstat()
            assert pst.st_uid == user.pw_uid, f"{p} is owned by uid {pst.st_uid}"
            assert not pst.st_mode & (stat.S_ISUID | stat.S_ISGID), f"{p} is setuid/setgid"
    finally:
        shutil.rmtree(work)
