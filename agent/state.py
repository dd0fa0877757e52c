"""The service's ledger: ``$FIELDTRACE_HOME/state.db`` (sqlite, WAL mode).

It holds what the daemon must remember across restarts and crashes:

* ``jobs``: every collection the service started, with its state, so a job that was
  running when the process died is found at the next start and marked (never lost
  silently);
* ``health_results`` and ``checks``: each check's results, its state machine (ok/fail,
  since when, consecutive failures) and the ticket it has open;
* ``operations``: every HelpDesk write gets an operation id recorded here *before* the
  request is sent, so after a crash the agent searches the HelpDesk for the operation's
  marker instead of writing twice;
* ``requests`` and ``nonces``: signed collection requests read from tickets, their decision,
  and every nonce ever accepted (replays are refused);
* ``audit``: the hash-chained audit log (see ``agent/audit.py``).

The schema is versioned with ``PRAGMA user_version`` and migrated forward by the scripts in
``MIGRATIONS`` (never edited once released: a change is a new script). A file that is not
a readable sqlite database, or one from a newer fieldtrace, is a ``StateError`` (exit 3):
the daemon stops before it touches the outbox.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from agent.errors import RuntimeFailure

STATE_FILE = "state.db"

MIGRATIONS: tuple[str, ...] = (
    # 1: the first schema
    """
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        trigger TEXT NOT NULL,
        requested_by TEXT NOT NULL DEFAULT '',
        profile TEXT NOT NULL,
        devices TEXT NOT NULL,            -- JSON list
        ticket TEXT,
        state TEXT NOT NULL,              -- running | done | failed | abandoned
        created REAL NOT NULL,
        finished REAL,
        exit_code INTEGER,
        bundle TEXT,
        detail TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX jobs_state ON jobs(state);
    CREATE TABLE checks (
        id TEXT PRIMARY KEY,              -- device/check
        state TEXT NOT NULL DEFAULT 'unknown',  -- ok | fail | unknown
        since REAL,
        consecutive INTEGER NOT NULL DEFAULT 0,
        failures INTEGER NOT NULL DEFAULT 0,   -- failures since the problem began
        fingerprint TEXT,
        ticket TEXT,
        ticket_opened REAL,
        last_note REAL,
        last_bundle REAL,
        suppressed INTEGER NOT NULL DEFAULT 0, -- repeats not yet reported in a note
        last_run REAL,
        last_message TEXT NOT NULL DEFAULT ''
    );
    CREATE TABLE health_results (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        check_id TEXT NOT NULL,
        at REAL NOT NULL,
        ok INTEGER,                       -- 1 ok, 0 failed, NULL could not be evaluated
        value TEXT,
        message TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX health_results_check ON health_results(check_id, at);
    CREATE TABLE events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        check_id TEXT NOT NULL,
        at REAL NOT NULL,
        kind TEXT NOT NULL,               -- transition | ticket | note | suppressed | ...
        detail TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX events_check ON events(check_id, at);
    CREATE TABLE tickets_opened (
        at REAL NOT NULL,
        check_id TEXT NOT NULL,
        ticket TEXT
    );
    CREATE TABLE operations (
        id TEXT PRIMARY KEY,              -- the marker written into the HelpDesk
        kind TEXT NOT NULL,               -- create | note | attach
        target TEXT NOT NULL DEFAULT '',  -- ticket, or check id for a create
        created REAL NOT NULL,
        done REAL,
        result TEXT
    );
    CREATE TABLE requests (
        id TEXT PRIMARY KEY,              -- the request's nonce
        ticket TEXT NOT NULL,
        note_id TEXT NOT NULL DEFAULT '',
        state TEXT NOT NULL,              -- pending | accepted | refused | denied | expired | done
        received REAL NOT NULL,
        decided REAL,
        decided_by TEXT NOT NULL DEFAULT '',
        reason TEXT NOT NULL DEFAULT '',
        signer TEXT NOT NULL DEFAULT '',
        body TEXT NOT NULL,               -- JSON of the verified fields
        job_id TEXT
    );
    CREATE TABLE nonces (
        nonce TEXT PRIMARY KEY,
        seen REAL NOT NULL,
        ticket TEXT NOT NULL
    );
    CREATE TABLE seen_notes (
        note_id TEXT PRIMARY KEY,
        seen REAL NOT NULL
    );
    CREATE TABLE cursors (
        name TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    CREATE TABLE audit (
        seq INTEGER PRIMARY KEY,
        at TEXT NOT NULL,
        event TEXT NOT NULL,
        entry TEXT NOT NULL,              -- canonical JSON of the entry
        prev TEXT NOT NULL,
        hash TEXT NOT NULL
    );
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


class StateError(RuntimeFailure):
    """state.db is missing its schema, corrupt, unreadable or from a newer version."""


class State:
    """One connection to state.db, shared by the service's threads (one lock)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.RLock()
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            os.close(fd)
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA busy_timeout = 5000")
            mode = self._db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal":
                raise sqlite3.DatabaseError(f"cannot use WAL mode (got {mode})")
            self._db.execute("PRAGMA synchronous = FULL")
            self._db.execute("PRAGMA foreign_keys = ON")
            check = self._db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise sqlite3.DatabaseError(f"integrity check: {check}")
            self._migrate()
        except OSError as exc:
            raise StateError(f"{path}: cannot open the state database: {exc.strerror}") from None
        except sqlite3.Error as exc:
            raise StateError(
                f"{path}: the state database is unreadable or corrupt ({exc}); the outbox "
                "was not touched. Move the file aside to start with an empty ledger "
                "(health history, open-ticket records and request nonces are then lost)"
            ) from None

    def _migrate(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StateError(
                f"{self.path}: written by a newer fieldtrace (schema {version}, this one "
                f"knows {SCHEMA_VERSION}); upgrade fieldtrace or restore the older file"
            )
        for number in range(version + 1, SCHEMA_VERSION + 1):
            script = MIGRATIONS[number - 1]
            # executescript commits; the whole migration and its version bump are one step
            self._db.executescript(
                f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version = {number};\nCOMMIT;"
            )

    @property
    def version(self) -> int:
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    @contextlib.contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (BEGIN IMMEDIATE ... COMMIT, rolled back on error)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def query(self, sql: str, params: tuple[Any, ...] | dict[str, Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return list(self._db.execute(sql, params))

    def one(self, sql: str, params: tuple[Any, ...] | dict[str, Any] = ()) -> sqlite3.Row | None:
        rows = self.query(sql, params)
        return rows[0] if rows else None

    def execute(self, sql: str, params: tuple[Any, ...] | dict[str, Any] = ()) -> None:
        with self.tx() as db:
            db.execute(sql, params)

    # --- small key/value cursors (the poller's "since") ---------------------------------

    def cursor(self, name: str) -> str | None:
        row = self.one("SELECT value FROM cursors WHERE name = ?", (name,))
        return str(row["value"]) if row else None

    def set_cursor(self, name: str, value: str) -> None:
        self.execute(
            "INSERT INTO cursors(name, value) VALUES (?, ?) "
            "ON CONFLICT(name) DO UPDATE SET value = excluded.value",
            (name, value),
        )

    def close(self) -> None:
        with self._lock:
            self._db.close()


def open_state(base: Path) -> State:
    return State(base / STATE_FILE)


def dumps(value: Any) -> str:
    """Canonical JSON for what the ledger stores (sorted keys, no spaces)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
