"""Health check transitions, flood control and the ledger of HelpDesk writes.

``Engine.record(check, result)`` stores the result in state.db, moves the check's state
machine and returns the HelpDesk actions to take. It writes nothing to the HelpDesk
itself: the service executes each action (collect, open a ticket, add a note) and reports
back. Every action carries an operation id recorded in state.db *before* it is returned,
with the check's problem fingerprint; both go into the ticket as marker lines, so after a
crash the service searches the HelpDesk for them before writing again.

Rules (times from an injected clock, so tests drive time without sleeping):

* **OK -> FAIL** after ``fail_after`` consecutive failures: collect the check's profile
  and open a ticket, or add a note with the bundle to the check's ticket if it is still
  open (asked through the HelpDesk; when the HelpDesk cannot tell, the ticket is taken as
  open, so an outage never makes a second ticket).
* **A ticket the vendor closed:** the next failure opens a new ticket, but never more than
  one new ticket per check per ``cooldown``.
* **Repeats** while failing are counted; at most one note per ``repeat_interval`` reports
  them, with a new bundle only after ``recollect_interval``.
* **Site cap:** at most ``max_new_tickets_per_hour`` new tickets in any hour; the checks
  that were refused a ticket are listed in one summary note on the first ticket of that
  hour (``flush`` after each round).
* **Inhibition:** a result that says the device cannot be reached is booked on the
  device's ``reachable`` check (one ticket: the device is down); the device's other checks
  are recorded but raise nothing until it answers again.
* **FAIL -> OK:** a note on the ticket: recovered at T, failing since T0, N failures.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Literal

from agent.health import CheckModel, HealthCheck, Result
from agent.state import State

log = logging.getLogger(__name__)

ActionKind = Literal["open", "note", "recovered", "summary"]
HOUR = 3600.0


def fingerprint(site: str, check_key: str) -> str:
    """A check's problem fingerprint: stable per (site, device, check)."""
    return hashlib.sha256(f"{site}\n{check_key}".encode()).hexdigest()[:16]


def marker_lines(fp: str, op: str) -> str:
    return f"fieldtrace-problem: {fp}\nfieldtrace-op: {op}"


def when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


@dataclass(frozen=True)
class Action:
    kind: ActionKind
    check: HealthCheck
    op: str  # operation id, recorded before the action is returned
    fingerprint: str
    text: str  # the note or the ticket description's first lines
    subject: str = ""
    ticket: str | None = None  # the ticket to write on (None: open a new one)
    collect: bool = False  # make a bundle with the check's profile and send it with this
    severity: str = "major"


class Engine:
    def __init__(
        self,
        state: State,
        site: str,
        clock: Callable[[], float],
        ticket_open: Callable[[str], bool | None] = lambda ticket: None,
        max_new_tickets_per_hour: int = 10,
    ) -> None:
        self.state = state
        self.site = site
        self.clock = clock
        self.ticket_open = ticket_open
        self.cap = max_new_tickets_per_hour
        self._capped: list[str] = []

    # --- the state machine ---------------------------------------------------------------

    def record(self, check: HealthCheck, result: Result) -> list[Action]:
        now = self.clock()
        self.state.execute(
            "INSERT INTO health_results(check_id, at, ok, value, message) VALUES (?,?,?,?,?)",
            (check.key, now, None if result.ok is None else int(result.ok), result.value,
             result.message),
        )  # fmt: skip
        if result.unreachable and check.id != "reachable":
            self._event(check.key, now, "inhibited", f"device unreachable: {result.message}")
            self._row(check.key, now)
            self.state.execute(
                "UPDATE checks SET last_run = ?, last_message = ? WHERE id = ?",
                (now, result.message, check.key),
            )
            check = self._reachable(check)
            result = replace(result, ok=False)
        actions: list[Action] = []
        if not result.unreachable and check.id != "reachable" and self._down(check.device):
            # the device answered this check: it is reachable again
            up = Result(True, f"{check.device} answers again ({check.id})")
            actions += self.record(self._reachable(check), up)
        row = self._row(check.key, now)
        spec = check.spec
        if result.ok is None:
            self.state.execute(
                "UPDATE checks SET last_run = ?, last_message = ? WHERE id = ?",
                (now, result.message, check.key),
            )
            self._event(check.key, now, "undecided", result.message)
            return actions
        if result.ok:
            if row["state"] == "fail":
                self._event(check.key, now, "transition", f"FAIL -> OK: {result.message}")
                if row["ticket"]:
                    text = (
                        f"Recovered at {when(now)}: {check.title} on {check.device}. Failing "
                        f"since {when(row['since'])}, {row['failures']} failure(s).\n"
                        f"{result.message}"
                    )
                    actions.append(self._action("recovered", check, text, row["ticket"]))
            with self.state.tx() as db:
                db.execute(
                    "UPDATE checks SET state = 'ok', since = CASE WHEN state = 'ok' THEN since "
                    "ELSE ? END, consecutive = 0, failures = 0, suppressed = 0, last_run = ?, "
                    "last_message = ? WHERE id = ?",
                    (now, now, result.message, check.key),
                )
            return actions
        consecutive = row["consecutive"] + 1
        self.state.execute(
            "UPDATE checks SET consecutive = ?, last_run = ?, last_message = ? WHERE id = ?",
            (consecutive, now, result.message, check.key),
        )
        if row["state"] != "fail":
            if consecutive < spec.fail_after:
                self._event(check.key, now, "failing",
                            f"{consecutive}/{spec.fail_after}: {result.message}")  # fmt: skip
                return actions
            self.state.execute(
                "UPDATE checks SET state = 'fail', since = ?, failures = ?, suppressed = 0 "
                "WHERE id = ?",
                (now, consecutive, check.key),
            )
            self._event(check.key, now, "transition", f"OK -> FAIL: {result.message}")
            action = self._problem(check, row, result, now)
            return actions + ([action] if action else [])
        # still failing
        failures = row["failures"] + 1
        self.state.execute(
            "UPDATE checks SET failures = ?, suppressed = suppressed + 1 WHERE id = ?",
            (failures, check.key),
        )
        if row["ticket"] is None:
            self._event(check.key, now, "suppressed", f"failure {failures}, no ticket")
            return actions
        last = row["last_note"] or row["ticket_opened"] or 0.0
        if now - last < spec.repeat_interval:
            self._event(check.key, now, "suppressed", f"failure {failures}")
            return actions
        suppressed = row["suppressed"] + 1
        collect = now - (row["last_bundle"] or 0.0) >= spec.recollect_interval
        text = (
            f"Still failing: {check.title} on {check.device}, {failures} failure(s) since "
            f"{when(row['since'])} ({suppressed} since the last note).\n{result.message}"
        )
        self.state.execute(
            "UPDATE checks SET last_note = ?, suppressed = 0, last_bundle = CASE WHEN ? THEN ? "
            "ELSE last_bundle END WHERE id = ?",
            (now, int(collect), now, check.key),
        )
        return [*actions, self._action("note", check, text, row["ticket"], collect)]

    def _problem(
        self, check: HealthCheck, row: dict[str, Any], result: Result, now: float
    ) -> Action | None:
        """A new problem: a note on the check's open ticket, or a new ticket."""
        ticket = row["ticket"]
        text = f"{check.title} on {check.device} is failing since {when(now)}.\n{result.message}"
        if isinstance(ticket, str):
            is_open = self.ticket_open(ticket)
            if is_open is not False:
                self.state.execute(
                    "UPDATE checks SET last_note = ?, last_bundle = ? WHERE id = ?",
                    (now, now, check.key),
                )
                return self._action("note", check, text, ticket, collect=True)
            self._event(check.key, now, "ticket", f"ticket {ticket} was closed by the vendor")
            self.state.execute("UPDATE checks SET ticket = NULL WHERE id = ?", (check.key,))
        opened = row["ticket_opened"]
        if isinstance(opened, float) and now - opened < check.spec.cooldown:
            self._event(check.key, now, "cooldown",
                        f"no new ticket before {when(opened + check.spec.cooldown)}")  # fmt: skip
            return None
        recent = self.state.one(
            "SELECT count(*) AS n FROM tickets_opened WHERE at > ?", (now - HOUR,)
        )
        if recent is not None and recent["n"] >= self.cap:
            self._capped.append(f"{check.key}: {result.message}")
            self._event(check.key, now, "capped", f"site cap of {self.cap} new tickets per hour")
            return None
        with self.state.tx() as db:
            db.execute(
                "INSERT INTO tickets_opened(at, check_id, ticket) VALUES (?, ?, NULL)",
                (now, check.key),
            )
            db.execute(
                "UPDATE checks SET ticket_opened = ?, last_note = ?, last_bundle = ? WHERE id = ?",
                (now, now, now, check.key),
            )
        subject = f"{check.title or check.id} failing on {check.device}"
        return self._action("open", check, text, None, collect=True, subject=subject)

    def flush(self) -> list[Action]:
        """After a round: one summary note for the checks the site cap kept from a ticket."""
        if not self._capped:
            return []
        now = self.clock()
        first = self.state.one(
            "SELECT check_id, ticket FROM tickets_opened WHERE at > ? ORDER BY at LIMIT 1",
            (now - HOUR,),
        )
        lines, self._capped = self._capped, []
        if first is None:
            return []
        owner = self.state.one("SELECT ticket FROM checks WHERE id = ?", (first["check_id"],))
        ticket = first["ticket"] or (owner["ticket"] if owner else None)
        text = (
            f"{len(lines)} more check(s) failed, but the site's cap of {self.cap} new tickets "
            "per hour kept them from opening tickets:\n" + "\n".join(f"- {ln}" for ln in lines)
        )
        check = self._synthetic(str(first["check_id"]), "site ticket cap")
        return [self._action("summary", check, text, ticket)]

    # --- what the service reports back ---------------------------------------------------

    def ticket_opened(self, check_key: str, ticket: str, op: str) -> None:
        with self.state.tx() as db:
            db.execute("UPDATE checks SET ticket = ? WHERE id = ?", (ticket, check_key))
            db.execute(
                "UPDATE tickets_opened SET ticket = ? WHERE check_id = ? AND ticket IS NULL",
                (ticket, check_key),
            )
            db.execute(
                "UPDATE operations SET done = ?, result = ? WHERE id = ?",
                (self.clock(), ticket, op),
            )
        self._event(check_key, self.clock(), "ticket", f"opened ticket {ticket}")

    def done(self, op: str, result: str = "ok") -> None:
        self.state.execute(
            "UPDATE operations SET done = ?, result = ? WHERE id = ?", (self.clock(), result, op)
        )
        row = self.state.one("SELECT kind, target FROM operations WHERE id = ?", (op,))
        if row:
            self._event(str(row["target"]), self.clock(), row["kind"], result)

    def pending(self) -> list[dict[str, object]]:
        """Operations recorded but never confirmed (after a crash: search before writing)."""
        return [dict(r) for r in self.state.query(
            "SELECT * FROM operations WHERE done IS NULL ORDER BY created")]  # fmt: skip

    # --- status and history --------------------------------------------------------------

    def status(self) -> list[dict[str, object]]:
        return [dict(r) for r in self.state.query("SELECT * FROM checks ORDER BY id")]

    def timeline(self, check_key: str, limit: int = 200) -> list[dict[str, object]]:
        rows = self.state.query(
            "SELECT at, 0 AS o, seq, 'result' AS kind, CASE ok WHEN 1 THEN 'ok' WHEN 0 THEN "
            "'FAIL' ELSE 'undecided' END || ': ' || message AS detail FROM health_results "
            "WHERE check_id = ? UNION ALL SELECT at, 1 AS o, seq, kind, detail FROM events "
            "WHERE check_id = ? ORDER BY at DESC, o DESC, seq DESC LIMIT ?",
            (check_key, check_key, limit),
        )
        return [{k: r[k] for k in ("at", "kind", "detail")} for r in reversed(rows)]

    # --- helpers -------------------------------------------------------------------------

    def _row(self, key: str, now: float) -> dict[str, Any]:
        self.state.execute("INSERT OR IGNORE INTO checks(id, since) VALUES (?, ?)", (key, now))
        row = self.state.one("SELECT * FROM checks WHERE id = ?", (key,))
        assert row is not None
        return dict(row)

    def _event(self, key: str, now: float, kind: str, detail: str) -> None:
        self.state.execute(
            "INSERT INTO events(check_id, at, kind, detail) VALUES (?, ?, ?, ?)",
            (key, now, kind, detail),
        )
        log.info("health %s: %s: %s", key, kind, detail)

    def _down(self, device: str) -> bool:
        row = self.state.one("SELECT state FROM checks WHERE id = ?", (f"{device}/reachable",))
        return row is not None and row["state"] == "fail"

    def _reachable(self, check: HealthCheck) -> HealthCheck:
        spec = CheckModel(title=f"{check.device} reachable", reachable="ssh",
                          profile=check.spec.profile, severity="critical")  # fmt: skip
        return HealthCheck("reachable", check.device, f"{check.device} reachable", "reachable",
                           spec)  # fmt: skip

    def _synthetic(self, key: str, title: str) -> HealthCheck:
        device, _, cid = key.partition("/")
        spec = CheckModel(title=title, reachable="ssh")
        return HealthCheck(cid or "summary", device, title, "summary", spec)

    def _action(
        self,
        kind: ActionKind,
        check: HealthCheck,
        text: str,
        ticket: str | None,
        collect: bool = False,
        subject: str = "",
    ) -> Action:
        op = uuid.uuid4().hex
        fp = fingerprint(self.site, check.key)
        self.state.execute(
            "INSERT INTO operations(id, kind, target, created, result) VALUES (?, ?, ?, ?, ?)",
            (op, kind, check.key, self.clock(),
             json.dumps({"ticket": ticket, "fingerprint": fp, "collect": collect})),
        )  # fmt: skip
        return Action(kind, check, op, fp, text, subject, ticket, collect, check.spec.severity)
