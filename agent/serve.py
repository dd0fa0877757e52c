"""``fieldtrace serve``: the scheduler, the outbox worker and the request poller in one process.

The service opens no port: everything it learns from outside arrives by polling the
HelpDesk. It calls the same functions as the CLI (``agent.job.prepare``/``execute``, the
outbox, the backends), one collection at a time.

* **One per home.** ``$FIELDTRACE_HOME/serve.lock`` (flock) holds the PID; a second
  ``serve`` is refused with that PID.
* **Ledger.** ``state.db`` is opened (and migrated) before anything else; a corrupt file
  stops the service (exit 3) before the outbox is touched.
* **Crash recovery at start.** Jobs recorded as running are marked abandoned (a request's
  job is re-run; a health check's collection waits for the check's next failure), and
  HelpDesk writes recorded but never confirmed are searched for by their marker before
  anything is written again.
* **Signals.** SIGTERM/SIGINT: no new work; the running step gets a few seconds, then the
  process exits (within 10 s). The outbox is crash-safe at every point, so a delivery cut
  short resumes at the next start. SIGHUP: the config and the KB are loaded again; a file
  that does not validate keeps the old config running and the log says why.
* **systemd.** ``READY=1`` once running, ``WATCHDOG=1`` at half the unit's
  ``WatchdogSec``, ``STOPPING=1`` on the way out (``sdnotify``; no-ops outside systemd).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent import audit
from agent import remote_request as rr
from agent.errors import ConfigError, FieldtraceError, RuntimeFailure
from agent.health import HealthCheck, resolve_checks
from agent.health_engine import Action, Engine, marker_lines
from agent.kb import KnowledgeBase
from agent.settings import LoadedSettings, Settings, load_settings
from agent.state import State, dumps, open_state
from uploader.base import Backend, Note, capabilities

log = logging.getLogger("fieldtrace.serve")
LOCK_FILE = "serve.lock"
STOP_GRACE = 7.0  # seconds the running work gets after SIGTERM (systemd waits 90 s; we say 10)


class AlreadyRunning(RuntimeFailure):
    """Another ``serve`` holds this home's lock."""


@contextlib.contextmanager
def service_lock(home: Path) -> Iterator[None]:
    path = home / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise AlreadyRunning(
                f"another 'fieldtrace serve' (PID {pid}) is running on {home} (it holds "
                f"{path}); stop it first (systemctl stop fieldtrace, or kill {pid})"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


class _Notifier:
    def __init__(self) -> None:
        self._n: Any = None
        if os.environ.get("NOTIFY_SOCKET"):
            import sdnotify

            self._n = sdnotify.SystemdNotifier()

    def __call__(self, state: str) -> None:
        if self._n is not None:
            self._n.notify(state)

    @staticmethod
    def watchdog_interval() -> float | None:
        usec = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        if not usec or (pid and pid != str(os.getpid())):
            return None
        try:
            return max(0.5, int(usec) / 2e6)
        except ValueError:
            return None


@dataclass
class Loaded:
    """One consistent view of the config: what SIGHUP replaces as a whole."""

    loaded: LoadedSettings
    kb: KnowledgeBase
    checks: list[HealthCheck]
    backend: Backend
    scrubber: Any

    @property
    def settings(self) -> Settings:
        return self.loaded.settings


def load_all(config: Path | None, home: Path) -> Loaded:
    """Config, KB, checks and backend, validated; ConfigError names the file and field."""
    from agent.delivery import make_backend
    from agent.job import _secret_literals, load_context
    from agent.scrub import Scrubber

    loaded = load_settings(config)
    kb = load_context(loaded)
    checks = resolve_checks(loaded.settings, kb, loaded.source)
    for c in checks:  # the profile a failing check collects must exist
        kb_type = kb.get(next(d for d in loaded.settings.inventory() if d.name == c.device).type)
        if c.spec.profile not in kb_type.profiles:
            raise ConfigError(
                f"{loaded.source}: health check {c.key}: profile {c.spec.profile!r} does not "
                f"exist in KB type {kb_type.type}"
            )
    backend = make_backend(loaded.settings, home)
    scrubber = Scrubber(loaded.settings.scrub.keywords, _secret_literals(loaded.settings))
    return Loaded(loaded, kb, checks, backend, scrubber)


@dataclass
class Service:
    config: Path | None
    home: Path
    state: State
    current: Loaded
    clock: Callable[[], float] = time.time
    stop: threading.Event = field(default_factory=threading.Event)
    reload_requested: threading.Event = field(default_factory=threading.Event)
    _collect_lock: threading.Lock = field(default_factory=threading.Lock)
    _scheduler: Any = None
    _engine: Engine | None = None

    # --- life cycle ----------------------------------------------------------------------

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = self._make_engine()
        return self._engine

    def _make_engine(self) -> Engine:
        s = self.current.settings
        return Engine(
            self.state, s.site_slug(), self.clock, self._ticket_open,
            max_new_tickets_per_hour=s.service.max_new_tickets_per_hour,
        )  # fmt: skip

    def start(self) -> None:
        from apscheduler.schedulers.background import BackgroundScheduler

        self.recover()
        self._scheduler = BackgroundScheduler(
            timezone=UTC,
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 300},
        )
        self._schedule()
        self._scheduler.start()
        caps = capabilities(self.current.backend)
        log.info(
            "serving %s: %d device(s), %d health check(s), backend %s (%s), requests %s",
            self.current.loaded.source, len(self.current.settings.inventory()),
            len(self.current.checks), self.current.backend.name, ", ".join(sorted(caps)),
            "on" if self._polling() else "off",
        )  # fmt: skip

    def _schedule(self) -> None:
        from apscheduler.triggers.interval import IntervalTrigger

        sched = self._scheduler
        sched.remove_all_jobs()
        s = self.current.settings
        for c in self.current.checks:
            sched.add_job(self.run_check_job, IntervalTrigger(seconds=c.spec.interval,
                          jitter=min(30.0, c.spec.interval / 10)), args=[c.key],
                          id=f"health:{c.key}", next_run_time=datetime.now(UTC))  # fmt: skip
        sched.add_job(self.outbox_pass, IntervalTrigger(seconds=s.service.outbox_interval),
                      id="outbox", next_run_time=datetime.now(UTC))  # fmt: skip
        if self._polling():
            sched.add_job(self.poll_requests, IntervalTrigger(seconds=s.requests.poll_interval),
                          id="requests", next_run_time=datetime.now(UTC))  # fmt: skip

    def _polling(self) -> bool:
        return self.current.settings.requests.enabled and "read_notes" in capabilities(
            self.current.backend
        )

    def reload(self) -> bool:
        try:
            new = load_all(self.config, self.home)
        except FieldtraceError as exc:
            log.error("reload refused, the old config keeps running: %s", exc)
            return False
        self.current = new
        self._engine = self._make_engine()
        if self._scheduler is not None:
            self._schedule()
        log.info("reloaded %s: %d health check(s)", new.loaded.source, len(new.checks))
        return True

    def shutdown(self) -> None:
        self.stop.set()
        if self._scheduler is not None:
            with contextlib.suppress(Exception):
                self._scheduler.shutdown(wait=False)

    # --- recovery ------------------------------------------------------------------------

    def recover(self) -> None:
        for row in self.state.query("SELECT * FROM jobs WHERE state = 'running'"):
            what = f"job {row['id'][:8]} ({row['trigger']}, profile {row['profile']} on " \
                   f"{', '.join(json.loads(row['devices']))})"  # fmt: skip
            if row["trigger"] == "request":
                log.warning("%s was running when the service stopped; it will run again", what)
            else:
                log.warning("%s was running when the service stopped; marked abandoned "
                            "(the check runs again at its next interval)", what)  # fmt: skip
            self.state.execute(
                "UPDATE jobs SET state = 'abandoned', finished = ? WHERE id = ?",
                (self.clock(), row["id"]),
            )
        # nothing runs yet: a request left running was cut short. If its bundle reached the
        # outbox, the outbox delivers it (exactly once); otherwise the request runs again.
        box = self._outbox()
        items = box.items("queued") + box.items("parked") + box.items("sent")
        for row in self.state.query("SELECT id, ticket FROM requests WHERE state = 'running'"):
            line = f"fieldtrace-request: {row['id']}"
            queued = any(line in i.meta.markers for i in items)
            self.state.execute(
                "UPDATE requests SET state = ?, job_id = NULL WHERE id = ?",
                ("done" if queued else "accepted", row["id"]),
            )
            log.warning("request %s on ticket %s was cut short: %s", row["id"][:12], row["ticket"],
                        "its bundle is in the outbox" if queued else "it runs again")  # fmt: skip
        backend = self.current.backend
        caps = capabilities(backend)
        for op in self.engine.pending():
            info = json.loads(str(op["result"] or "{}"))
            line = f"fieldtrace-op: {op['id']}"
            ticket = self._sent_ticket(str(op["id"]))
            if ticket is None and "search" in caps:
                try:
                    ticket = backend.find_marker(line, info.get("ticket"))  # type: ignore[attr-defined]
                except Exception as exc:
                    log.warning("cannot search the HelpDesk for %s yet: %s", line, exc)
                    continue
            if ticket is not None:
                if op["kind"] == "open":
                    self.engine.ticket_opened(str(op["target"]), ticket, str(op["id"]))
                else:
                    self.engine.done(str(op["id"]), f"found on ticket {ticket} after a restart")
                log.info("operation %s had reached the HelpDesk (ticket %s)", op["id"], ticket)
            elif self._queued(str(op["id"])):
                log.info("operation %s waits in the outbox", op["id"])
            else:
                self.engine.done(str(op["id"]), "abandoned: never reached the HelpDesk")
                if op["kind"] == "open":  # let the next failure open the ticket
                    self.state.execute(
                        "UPDATE checks SET ticket_opened = NULL, state = 'unknown', "
                        "consecutive = 0 WHERE id = ?", (op["target"],),
                    )  # fmt: skip
                log.warning("operation %s (%s on %s) never reached the HelpDesk; dropped",
                            op["id"], op["kind"], op["target"])  # fmt: skip

    def _outbox(self) -> Any:
        from agent.delivery import make_outbox

        return make_outbox(self.current.settings, self.home)

    def _sent_ticket(self, op: str) -> str | None:
        line = f"fieldtrace-op: {op}"
        for item in self._outbox().items("sent"):
            if line in item.meta.markers:
                t = (item.record.get("receipt") or {}).get("ticket")
                return str(t) if t else None
        return None

    def _queued(self, op: str) -> bool:
        line = f"fieldtrace-op: {op}"
        box = self._outbox()
        return any(line in i.meta.markers for i in box.items("queued") + box.items("parked"))

    # --- the three jobs ------------------------------------------------------------------

    def run_check_job(self, key: str) -> None:
        if self.stop.is_set():
            return
        from agent.health_run import run_check

        cur = self.current
        check = next((c for c in cur.checks if c.key == key), None)
        if check is None:
            return
        try:
            result = run_check(check, cur.settings, cur.kb, self.home, cur.scrubber)
        except Exception:
            log.exception("bug while running health check %s", key)
            return
        log.info("health %s: %s: %s", key, {True: "ok", False: "FAIL", None: "undecided"}[
            result.ok], result.message)  # fmt: skip
        for action in self.engine.record(check, result) + self.engine.flush():
            self.execute(action)

    def execute(self, action: Action) -> None:
        """Carry out one HelpDesk action (its operation id is already in the ledger)."""
        markers = tuple(marker_lines(action.fingerprint, action.op).splitlines())
        if action.collect:
            self._collect_for(action, markers)
            return
        be = self.current.backend
        if action.ticket is None or "note" not in capabilities(be):
            self.engine.done(action.op, "skipped: the backend cannot add notes")
            return
        try:
            be.add_note(action.ticket, action.text + "\n\n" + "\n".join(markers))  # type: ignore[attr-defined]
        except Exception as exc:
            log.warning("note on ticket %s not written (will look for it after a restart): %s",
                        action.ticket, exc)  # fmt: skip
            return
        self.engine.done(action.op, f"note on ticket {action.ticket}")

    def _collect_for(self, action: Action, markers: tuple[str, ...]) -> None:
        from agent.job import JobRequest

        s = self.current.settings
        priority = getattr(s.helpdesk, "priorities", {}).get(action.severity, "")
        req = JobRequest(
            devices=(action.check.device,), profile=action.check.spec.profile,
            ticket=action.ticket, trigger="health",
            requested_by=f"health check {action.check.key}",
            subject=action.subject, preface=action.text, priority=priority, markers=markers,
        )  # fmt: skip
        result = self.run_job(req)
        if result is None:
            return
        if result.ticket and action.kind == "open":
            self.engine.ticket_opened(action.check.key, result.ticket, action.op)
        elif result.ticket:
            self.engine.done(action.op, f"bundle on ticket {result.ticket}")
        # else: queued in the outbox; outbox_pass reconciles once it is delivered

    def run_job(self, req: Any, job_id: str | None = None) -> Any:
        """One collection at a time, recorded in state.db before it starts."""
        from agent.job import execute, prepare

        job_id = job_id or uuid.uuid4().hex
        with self._collect_lock:
            if self.stop.is_set():
                return None
            self.state.execute(
                "INSERT INTO jobs(id, trigger, requested_by, profile, devices, ticket, state, "
                "created) VALUES (?, ?, ?, ?, ?, ?, 'running', ?)",
                (job_id, req.trigger, req.requested_by, req.profile or "",
                 json.dumps(list(req.devices)), req.ticket, self.clock()),
            )  # fmt: skip
            try:
                prep = prepare(self.current.loaded, req, kb=self.current.kb)
                result = execute(prep)
            except FieldtraceError as exc:
                log.error("job %s (%s) failed: %s", job_id[:8], req.requested_by, exc)
                self._finish_job(job_id, "failed", exc.exit_code, None, str(exc))
                return None
            except Exception as exc:
                log.exception("bug in job %s (%s)", job_id[:8], req.requested_by)
                self._finish_job(job_id, "failed", 3, None, f"{type(exc).__name__}: {exc}")
                return None
            self._finish_job(job_id, "done", result.exit_code, result.bundle, "")
            log.info("job %s (%s): bundle %s, ticket %s, exit %d", job_id[:8],
                     req.requested_by, result.bundle_id[:8], result.ticket or "-",
                     result.exit_code)  # fmt: skip
            return result

    def _finish_job(
        self, job_id: str, state: str, code: int, bundle: Path | None, detail: str
    ) -> None:
        self.state.execute(
            "UPDATE jobs SET state = ?, finished = ?, exit_code = ?, bundle = ?, detail = ? "
            "WHERE id = ?",
            (state, self.clock(), code, str(bundle) if bundle else None, detail, job_id),
        )

    def outbox_pass(self) -> None:
        if self.stop.is_set():
            return
        box = self._outbox()
        try:
            attempts = box.deliver(self.current.backend)
        except Exception:
            log.exception("bug in the outbox worker")
            return
        for a in attempts:
            if a.outcome in ("sent", "parked", "retry"):
                log.info("outbox: %s %s: %s", a.item.name, a.outcome, a.message)
        pending = {str(p["id"]): p for p in self.engine.pending()}
        for a in attempts:
            if a.outcome != "sent" or a.receipt is None or not a.receipt.ticket:
                continue
            for line in a.item.meta.markers:
                op = line.removeprefix("fieldtrace-op: ")
                if op in pending:
                    if pending[op]["kind"] == "open":
                        self.engine.ticket_opened(str(pending[op]["target"]), a.receipt.ticket, op)
                    else:
                        self.engine.done(op, f"bundle on ticket {a.receipt.ticket}")
        self.run_approved()

    # --- requests ------------------------------------------------------------------------

    def poll_requests(self) -> None:
        if self.stop.is_set():
            return
        be = self.current.backend
        since = self.state.cursor("notes")
        try:
            notes, cursor = be.notes_since(since)  # type: ignore[attr-defined]
        except Exception as exc:
            log.warning("cannot read ticket notes: %s", exc)
            return
        for n in notes:
            if self.state.one("SELECT 1 FROM seen_notes WHERE note_id = ?", (n.id,)):
                continue
            self.state.execute(
                "INSERT INTO seen_notes(note_id, seen) VALUES (?, ?)", (n.id, self.clock())
            )
            if rr.contains_request(n.text) and not n.text.startswith("fieldtrace:"):
                self.handle_request_note(n)
        self.state.set_cursor("notes", cursor)
        self.run_approved()

    def handle_request_note(self, note: Note) -> None:
        s = self.current.settings
        now = datetime.fromtimestamp(self.clock(), UTC)
        fields: dict[str, Any] = {"ticket": note.ticket, "note": note.id, "author": note.author}
        try:
            req, signer = rr.verify_note(note.text, s.vendor.request_keys, now,
                                         s.vendor.revoked_keys)  # fmt: skip
            fields |= {"signer": signer, "requested_by": req.requested_by,
                       "devices": list(req.devices), "profile": req.profile,
                       "nonce": req.nonce}  # fmt: skip
            self._check_request(req, note)
        except rr.RequestRefused as exc:
            audit.append(self.state, "request", decision="refused", code=exc.code,
                         reason=exc.reason, **fields)  # fmt: skip
            log.warning("request on ticket %s refused: %s", note.ticket, exc.reason)
            self._reply(note.ticket, f"fieldtrace: request refused: {exc.reason}")
            return
        decision = s.requests.decision(req.profile)
        with self.state.tx() as db:
            db.execute("INSERT INTO nonces(nonce, seen, ticket) VALUES (?, ?, ?)",
                       (req.nonce, self.clock(), note.ticket))  # fmt: skip
            db.execute(
                "INSERT INTO requests(id, ticket, note_id, state, received, signer, body) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (req.nonce, note.ticket, note.id,
                 {"auto": "accepted", "approve": "pending", "deny": "denied"}[decision],
                 self.clock(), signer, dumps(req.as_dict())),
            )  # fmt: skip
        audit.append(self.state, "request", decision=decision, **fields)
        if decision == "deny":
            self._reply(note.ticket, f"fieldtrace: request refused: the site's policy denies "
                        f"profile {req.profile!r}")  # fmt: skip
        elif decision == "approve":
            self._reply(note.ticket, f"fieldtrace: request {req.nonce[:12]} (profile "
                        f"{req.profile} on {', '.join(req.devices)}) waits for the site's "
                        "approval")  # fmt: skip
        else:
            self.run_approved()

    def _check_request(self, req: rr.Request, note: Note) -> None:
        s = self.current.settings
        if req.site != s.site_slug():
            raise rr.RequestRefused("the request is for another site", "other-site")
        if req.ticket != note.ticket:
            raise rr.RequestRefused("the request names another ticket than the one it is on",
                                    "other-ticket")  # fmt: skip
        if not note.ticket_open:
            raise rr.RequestRefused("the ticket is closed", "closed-ticket")
        if self.state.one("SELECT 1 FROM nonces WHERE nonce = ?", (req.nonce,)):
            raise rr.RequestRefused("this request was already received (replayed nonce)",
                                    "replay")  # fmt: skip
        by_name = {d.name: d for d in s.inventory()}
        unknown = [d for d in req.devices if d not in by_name]
        if unknown:
            raise rr.RequestRefused(f"unknown device(s): {', '.join(unknown)}", "unknown-device")
        for d in req.devices:
            if req.profile not in self.current.kb.get(by_name[d].type).profiles:
                raise rr.RequestRefused(f"device {d} has no profile {req.profile!r}",
                                        "unknown-profile")  # fmt: skip

    def _reply(self, ticket: str, text: str) -> None:
        be = self.current.backend
        if "note" not in capabilities(be):
            return
        try:
            be.add_note(ticket, text)  # type: ignore[attr-defined]
        except Exception as exc:
            log.warning("cannot answer on ticket %s: %s", ticket, exc)

    def run_approved(self) -> None:
        """Run accepted requests; expire the ones nobody approved in time."""
        from agent.job import JobRequest

        s = self.current.settings
        now = self.clock()
        for row in self.state.query("SELECT * FROM requests WHERE state = 'pending'"):
            body = json.loads(row["body"])
            not_after = datetime.strptime(body["not_after"], "%Y-%m-%dT%H:%M:%SZ")
            expired = now - row["received"] > s.requests.approve_within or (
                now >= not_after.replace(tzinfo=UTC).timestamp()
            )
            if expired:
                self.state.execute("UPDATE requests SET state = 'expired', decided = ? "
                                   "WHERE id = ?", (now, row["id"]))  # fmt: skip
                audit.append(self.state, "request-expired", request=row["id"],
                             ticket=row["ticket"])  # fmt: skip
                self._reply(row["ticket"], f"fieldtrace: request {row['id'][:12]} expired: "
                            "nobody on site approved it in time")  # fmt: skip
        for row in self.state.query("SELECT * FROM requests WHERE state = 'accepted'"):
            if self.stop.is_set():
                return
            body = json.loads(row["body"])
            req = JobRequest(
                devices=tuple(body["devices"]), profile=body["profile"], ticket=row["ticket"],
                trigger="request", requested_by=body["requested_by"],
                preface=f"Collected for request {row['id'][:12]} by {body['requested_by']}.",
                markers=(f"fieldtrace-request: {row['id']}",),
            )  # fmt: skip
            job_id = uuid.uuid4().hex
            self.state.execute("UPDATE requests SET state = 'running', job_id = ? WHERE id = ?",
                               (job_id, row["id"]))  # fmt: skip
            result = self.run_job(req, job_id)
            state = "done" if result is not None else "failed"
            self.state.execute("UPDATE requests SET state = ?, decided = COALESCE(decided, ?) "
                               "WHERE id = ?", (state, now, row["id"]))  # fmt: skip
            audit.append(self.state, "request-run", request=row["id"], ticket=row["ticket"],
                         result=state,
                         bundle=result.bundle_id if result is not None else None)  # fmt: skip
            if result is None:
                self._reply(row["ticket"], f"fieldtrace: request {row['id'][:12]} could not "
                            "run; the site's log says why")  # fmt: skip

    # --- the helpdesk's view ---------------------------------------------------------------

    def _ticket_open(self, ticket: str) -> bool | None:
        be = self.current.backend
        if "ticket_state" not in capabilities(be):
            return None
        try:
            return bool(be.ticket_state(ticket) == "open")  # type: ignore[attr-defined]
        except Exception as exc:
            log.warning("cannot read the state of ticket %s: %s", ticket, exc)
            return None


def serve(config: Path | None, home: Path) -> int:
    """Run until SIGTERM; the exit code follows the CLI's convention."""
    notify = _Notifier()
    with service_lock(home):
        state = open_state(home)  # StateError (exit 3) before the outbox is touched
        current = load_all(config, home)
        svc = Service(config, home, state, current)
        got: list[int] = []

        def on_signal(signum: int, frame: Any) -> None:
            got.append(signum)
            if signum == signal.SIGHUP:
                svc.reload_requested.set()
            else:
                svc.stop.set()

        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, on_signal)
        svc.start()
        notify("READY=1")
        watchdog = _Notifier.watchdog_interval()
        tick = min(watchdog or 1.0, 1.0)
        last_ping = 0.0
        while not svc.stop.wait(tick):
            if svc.reload_requested.is_set():
                svc.reload_requested.clear()
                notify("RELOADING=1")
                svc.reload()
                notify("READY=1")
            if watchdog and time.monotonic() - last_ping >= watchdog:
                notify("WATCHDOG=1")
                last_ping = time.monotonic()
        notify("STOPPING=1")
        log.info("stopping (signal %s)", got[-1] if got else "?")
        svc.shutdown()
        deadline = time.monotonic() + STOP_GRACE
        while svc._collect_lock.locked() and time.monotonic() < deadline:
            time.sleep(0.1)
        if svc._collect_lock.locked():
            log.warning("a collection was still running; abandoned (recorded; see the next start)")
        state.close()
        log.info("stopped")
    return 0
