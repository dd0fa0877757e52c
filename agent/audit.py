"""The audit log: every remote request, decision and approval, hash-chained in state.db.

Each entry is canonical JSON (sorted keys) holding its time, event and fields, plus the
sha256 of the previous entry; its own hash covers both. Editing, deleting or reordering
an entry breaks the chain from that point, which ``verify`` reports. (The chain shows an
edit; it cannot stop someone who can write state.db from rewriting the whole chain; the
notes the agent posts on the tickets are the copy outside the site.)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from agent.state import State, dumps

GENESIS = "0" * 64


@dataclass(frozen=True)
class AuditEntry:
    seq: int
    at: str
    event: str
    fields: dict[str, Any]
    prev: str
    hash: str


def _digest(prev: str, entry: str) -> str:
    return hashlib.sha256(f"{prev}\n{entry}".encode()).hexdigest()


def append(state: State, event: str, **fields: Any) -> AuditEntry:
    """Add one entry at the end of the chain (atomic with reading the previous hash)."""
    at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    entry = dumps({"at": at, "event": event, **fields})
    with state.tx() as db:
        row = db.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        seq, prev = (row["seq"] + 1, row["hash"]) if row else (1, GENESIS)
        digest = _digest(prev, entry)
        db.execute(
            "INSERT INTO audit(seq, at, event, entry, prev, hash) VALUES (?, ?, ?, ?, ?, ?)",
            (seq, at, event, entry, prev, digest),
        )
    return AuditEntry(seq, at, event, fields, prev, digest)


def entries(state: State, limit: int | None = None) -> list[AuditEntry]:
    sql = "SELECT seq, at, event, entry, prev, hash FROM audit ORDER BY seq"
    rows = state.query(sql)
    if limit is not None:
        rows = rows[-limit:]
    out = []
    for r in rows:
        try:
            data = json.loads(r["entry"])
        except ValueError:
            data = {}
        fields = {k: v for k, v in data.items() if k not in ("at", "event")}
        out.append(AuditEntry(r["seq"], r["at"], r["event"], fields, r["prev"], r["hash"]))
    return out


def verify(state: State) -> list[str]:
    """Problems in the chain, first one first (an empty list: the chain is whole)."""
    problems: list[str] = []
    prev = GENESIS
    expected_seq = 1
    for r in state.query("SELECT seq, at, event, entry, prev, hash FROM audit ORDER BY seq"):
        where = f"audit entry {r['seq']}"
        if r["seq"] != expected_seq:
            problems.append(f"{where}: entries {expected_seq}..{r['seq'] - 1} are missing")
        if r["prev"] != prev:
            problems.append(f"{where}: does not follow the previous entry (chain broken)")
        if _digest(r["prev"], r["entry"]) != r["hash"]:
            problems.append(f"{where}: its content was changed after it was written")
        try:
            data = json.loads(r["entry"])
            if data.get("event") != r["event"] or data.get("at") != r["at"]:
                problems.append(f"{where}: its time or event column was changed")
        except ValueError:
            problems.append(f"{where}: not valid JSON")
        prev = r["hash"]
        expected_seq = r["seq"] + 1
    return problems
