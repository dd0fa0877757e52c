"""Faults during collection and packing: partial bundles keep what was collected; a failed
pack leaves no bundle and no plaintext; Ctrl-C keeps what was collected."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Cli
from tests.e2e.helpers import collect_json, manifest_of, open_with_stock_tools, step, write_site

pytestmark = pytest.mark.e2e
MARKER = "PLAINTEXT-MARKER-7f3a9c"


def test_hang_failure_and_missing_file_give_a_partial_bundle(cli: Cli, tmp_path: Path) -> None:
    failing = cli.cwd / "fail.sh"
    failing.write_text("echo oops >&2\nexit 3\n")
    write_site(
        cli,
        [
            '{id: before, collector: local.command, command: "echo ' + MARKER + '"}',
            '{id: hang, collector: local.command, command: "sleep 60", deadline: 1s}',
            f'{{id: fails, collector: local.command, command: "sh {failing}"}}',
            "{id: missing, collector: local.file, path: /nonexistent/fieldtrace/*.log}",
            "{id: notinstalled, collector: local.command, command: no-such-tool-xyz}",
            '{id: after, collector: local.command, command: "echo still here"}',
        ],
        allow=[f"sh {failing}", "no-such-tool-xyz"],  # beyond the read-only defaults
    )
    t0 = time.monotonic()
    data = collect_json(cli, check=1)
    assert time.monotonic() - t0 < 30  # the hang ended at its deadline
    top = open_with_stock_tools(Path(data["bundle"]), cli.home / "identity.txt", tmp_path / "o")
    m = manifest_of(top)
    assert step(m, "before")["status"] == "ok"
    hang = step(m, "hang")
    assert hang["status"] == "timeout" and "killed" in hang["error"]
    assert hang["seconds"] < 5
    fails = step(m, "fails")
    assert fails["status"] == "failed" and fails["error"] == "exit status 3: oops"
    assert fails["facts"] == {} and (top / "local/fails/stderr.txt").read_text() == "oops\n"
    missing = step(m, "missing")
    assert missing["status"] == "failed" and "no file matches" in missing["error"]
    nt = step(m, "notinstalled")
    assert nt["status"] == "failed" and "command not found" in nt["error"]
    assert step(m, "after")["status"] == "ok"
    assert (top / "local/after/output.txt").read_text() == "still here\n"
    assert m["summary"] == {"steps": 6, "failed": 3, "ok": 2, "timeout": 1}
    assert m["devices"][0]["status"] == "failed"
    # the human output lists each failure
    proc = cli.run("collect", check=1)
    assert "local/hang: timeout" in proc.stdout and "local/fails: failed: exit status 3" in (
        proc.stdout
    )


def test_output_cap_truncates_and_records_it(cli: Cli, tmp_path: Path) -> None:
    big = tmp_path / "big.log"
    big.write_text("".join(f"line {i}\n" for i in range(100000)))
    write_site(
        cli,
        [
            f"{{id: head, collector: local.file, path: {big}, max_bytes: 1KiB}}",
            f"{{id: tail, collector: local.file, path: {big}, max_bytes: 1KiB, tail: true}}",
            f'{{id: cmd, collector: local.command, command: "cat {big}", max_bytes: 2KiB}}',
        ],
    )
    data = collect_json(cli, check=0)
    top = open_with_stock_tools(Path(data["bundle"]), cli.home / "identity.txt", tmp_path / "o")
    m = manifest_of(top)
    for sid in ("head", "tail", "cmd"):
        art = step(m, sid)["artifacts"][0]
        assert art["truncated"] is True, sid
    head = (top / step(m, "head")["artifacts"][0]["path"]).read_text()
    tail = (top / step(m, "tail")["artifacts"][0]["path"]).read_text()
    assert head.startswith("line 0\n") and len(head) == 1024
    assert tail.endswith("line 99999\n") and tail.startswith("line ") and len(tail) <= 1024
    assert step(m, "cmd")["artifacts"][0]["size"] == 2048


@pytest.fixture
def full_outbox(cli: Cli) -> Iterator[Path]:
    """The outbox on a 256 KiB tmpfs: packing a bigger bundle fails with ENOSPC midway."""
    outbox = cli.home / "outbox"
    outbox.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(outbox)], check=True)
    try:
        yield outbox
    finally:
        subprocess.run(["umount", "-l", str(outbox)], check=True)


def test_disk_full_while_packing_leaves_no_bundle_and_no_plaintext(
    cli: Cli, full_outbox: Path
) -> None:
    write_site(
        cli,
        [
            '{id: marker, collector: local.command, command: "echo ' + MARKER + '"}',
            '{id: noise, collector: local.command, command: "head -c 3000000 /dev/urandom"}',
        ],
    )
    proc = cli.run("collect", check=3)
    assert "packing the bundle failed: No space left on device" in proc.stderr
    assert "nothing was kept" in proc.stderr
    leftovers = [
        p
        for p in cli.home.rglob("*")
        if p.is_file() and (p.suffix in (".age", ".partial") or MARKER.encode() in p.read_bytes())
    ]
    assert leftovers == []
    assert not any((cli.home / "staging").iterdir())
    assert list((full_outbox / "queue").iterdir()) == []


def test_unwritable_outbox_is_refused_before_collecting(cli: Cli) -> None:
    write_site(cli, ['{id: marker, collector: local.command, command: "echo ' + MARKER + '"}'])
    (cli.home / "outbox").write_text("not a directory")
    proc = cli.run("collect", check=3)
    assert "cannot write bundles there" in proc.stderr and "nothing was collected" in proc.stderr
    assert not (cli.home / "staging").exists() or not any((cli.home / "staging").iterdir())


def test_ctrl_c_keeps_what_was_collected(cli: Cli, tmp_path: Path) -> None:
    write_site(
        cli,
        [
            '{id: first, collector: local.command, command: "echo ' + MARKER + '"}',
            '{id: slow, collector: local.command, command: "sleep 30"}',
            '{id: never, collector: local.command, command: "echo never"}',
        ],
    )
    proc = cli.start("collect", "--json")
    staging = cli.home / "staging"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # wait until the slow step runs
        if staging.exists() and any(staging.glob("*/local/slow")):
            break
        time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("the slow step never started")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 1, err
    import json

    data = json.loads(out)
    assert data["interrupted"] is True
    top = open_with_stock_tools(Path(data["bundle"]), cli.home / "identity.txt", tmp_path / "o")
    m = manifest_of(top)
    assert m["job"]["interrupted"] is True
    assert step(m, "first")["status"] == "ok"
    assert step(m, "slow")["status"] == "partial"
    assert step(m, "slow")["error"] == "interrupted by the user"
    never = step(m, "never")
    assert never["status"] == "skipped" and "interrupted" in never["error"]
    assert not any(staging.iterdir())
