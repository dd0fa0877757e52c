"""state.db: versioned schema, WAL, corrupt files refused; the hash-chained audit log."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from agent import audit
from agent.state import SCHEMA_VERSION, State, StateError


def test_new_database_is_migrated_in_wal_mode_and_private(tmp_path: Path) -> None:
    st = State(tmp_path / "state.db")
    assert st.version == SCHEMA_VERSION
    assert st.one("PRAGMA journal_mode")[0] == "wal"  # type: ignore[index]
    assert (tmp_path / "state.db").stat().st_mode & 0o077 == 0
    st.close()
    assert State(tmp_path / "state.db").version == SCHEMA_VERSION  # reopening is a no-op


def test_old_schema_is_migrated_forward(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from agent import state as state_mod

    State(tmp_path / "state.db").close()
    extra = "CREATE TABLE later_thing (x INTEGER);"
    monkeypatch.setattr(state_mod, "MIGRATIONS", (*state_mod.MIGRATIONS, extra))
    monkeypatch.setattr(state_mod, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    st = State(tmp_path / "state.db")
    assert st.version == SCHEMA_VERSION + 1
    assert st.query("SELECT * FROM later_thing") == []


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    State(tmp_path / "state.db").close()
    with sqlite3.connect(tmp_path / "state.db") as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 5}")
    with pytest.raises(StateError, match="newer fieldtrace"):
        State(tmp_path / "state.db")


@pytest.mark.parametrize(
    "content",
    [b"this is not a database at all\n" * 100, b"SQLite format 3\x00" + b"\xff" * 4000],
    ids=["text", "truncated-header"],
)
def test_corrupt_database_is_a_clear_error(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "state.db").write_bytes(content)
    with pytest.raises(StateError) as info:
        State(tmp_path / "state.db")
    assert info.value.exit_code == 3
    assert "corrupt" in str(info.value) and "outbox was not touched" in str(info.value)


def test_unreadable_database_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "state.db").mkdir()
    with pytest.raises(StateError, match="cannot open"):
        State(tmp_path / "state.db")


def test_audit_chain_verifies_and_shows_edits(tmp_path: Path) -> None:
    st = State(tmp_path / "state.db")
    for i in range(5):
        audit.append(st, "request", ticket=str(i), decision="refused", reason="unsigned")
    assert audit.verify(st) == []
    got = audit.entries(st)
    assert [e.fields["ticket"] for e in got] == ["0", "1", "2", "3", "4"]
    assert got[1].prev == got[0].hash
    # an edit in the middle breaks that entry
    st.execute("UPDATE audit SET entry = replace(entry, 'refused', 'accepted') WHERE seq = 3")
    problems = audit.verify(st)
    assert problems and problems[0].startswith("audit entry 3:")
    assert "changed" in problems[0]


def test_audit_chain_shows_a_deleted_entry(tmp_path: Path) -> None:
    st = State(tmp_path / "state.db")
    for i in range(4):
        audit.append(st, "approval", request=str(i))
    st.execute("DELETE FROM audit WHERE seq = 2")
    problems = audit.verify(st)
    assert any("missing" in p for p in problems)
    assert any("chain broken" in p for p in problems)
