"""Health transitions and flood control, driven by an injected clock (no sleeps)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.health import CheckModel, HealthCheck, Result
from agent.health_engine import Engine
from agent.state import State


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def check(cid: str = "disk", device: str = "local", **spec: object) -> HealthCheck:
    model = CheckModel.model_validate({"host": {"metric": "disk_percent", "max": 90}, **spec})
    return HealthCheck(cid, device, f"{cid} check", "host", model)


FAIL = Result(False, "/ is 97.0% full (limit 90)", "97.0")
OK = Result(True, "/ is 40.0% full (limit 90)", "40.0")
DOWN = Result(False, "no answer from 10.0.0.1:161", unreachable=True)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def state(tmp_path: Path) -> State:
    return State(tmp_path / "state.db")


def engine(
    state: State, clock: Clock, open_tickets: set[str] | None = None, cap: int = 10
) -> Engine:
    tickets = open_tickets if open_tickets is not None else set()
    return Engine(state, "acme", clock, lambda t: t in tickets, max_new_tickets_per_hour=cap)


def test_one_ticket_per_problem_however_often_it_fails(state: State, clock: Clock) -> None:
    open_tickets: set[str] = set()
    eng = engine(state, clock, open_tickets)
    c = check()
    actions = eng.record(c, FAIL)
    assert [a.kind for a in actions] == ["open"]
    assert actions[0].collect and actions[0].ticket is None
    assert actions[0].subject == "disk check failing on local"
    eng.ticket_opened(c.key, "101", actions[0].op)
    open_tickets.add("101")
    notes = []
    for _ in range(200):  # every minute for 200 minutes
        clock.advance(60)
        for a in eng.record(c, FAIL):
            assert a.kind == "note" and a.ticket == "101"
            notes.append(a)
    # at most one note per repeat_interval (1h) and no second ticket
    assert len(notes) == 3
    assert "Still failing" in notes[0].text and "60 since the last note" in notes[0].text
    assert not notes[0].collect  # recollect_interval is 6h
    row = state.one("SELECT failures FROM checks WHERE id = ?", (c.key,))
    assert row is not None and row["failures"] == 201
    assert state.one("SELECT count(*) FROM tickets_opened")[0] == 1  # type: ignore[index]


def test_recovery_adds_a_note(state: State, clock: Clock) -> None:
    eng = engine(state, clock, {"7"})
    c = check()
    a = eng.record(c, FAIL)[0]
    eng.ticket_opened(c.key, "7", a.op)
    clock.advance(300)
    eng.record(c, FAIL)
    clock.advance(300)
    rec = eng.record(c, OK)
    assert [x.kind for x in rec] == ["recovered"]
    assert rec[0].ticket == "7" and "2 failure(s)" in rec[0].text
    assert eng.record(c, OK) == []  # staying OK says nothing


def test_fail_after_needs_consecutive_failures(state: State, clock: Clock) -> None:
    eng = engine(state, clock)
    c = check(fail_after=3)
    assert eng.record(c, FAIL) == [] and eng.record(c, FAIL) == []
    assert eng.record(c, OK) == []
    assert eng.record(c, FAIL) == [] and eng.record(c, FAIL) == []
    assert [a.kind for a in eng.record(c, FAIL)] == ["open"]


def test_next_failure_goes_to_the_open_ticket(state: State, clock: Clock) -> None:
    open_tickets = {"55"}
    eng = engine(state, clock, open_tickets)
    c = check()
    eng.ticket_opened(c.key, "55", eng.record(c, FAIL)[0].op)
    eng.record(c, OK)
    clock.advance(3600)
    again = eng.record(c, FAIL)
    assert [(a.kind, a.ticket, a.collect) for a in again] == [("note", "55", True)]


def test_closed_ticket_means_a_new_ticket_after_the_cooldown(state: State, clock: Clock) -> None:
    open_tickets = {"55"}
    eng = engine(state, clock, open_tickets)
    c = check(cooldown="6h")
    eng.ticket_opened(c.key, "55", eng.record(c, FAIL)[0].op)
    eng.record(c, OK)
    open_tickets.clear()  # the vendor closed it
    clock.advance(3600)
    assert eng.record(c, FAIL) == []  # within the cooldown: no second ticket
    eng.record(c, OK)
    clock.advance(6 * 3600)
    new = eng.record(c, FAIL)
    assert [(a.kind, a.ticket) for a in new] == [("open", None)]


def test_unknown_ticket_state_never_makes_a_second_ticket(state: State, clock: Clock) -> None:
    eng = Engine(state, "acme", clock, lambda t: None)  # the HelpDesk cannot say
    c = check()
    eng.ticket_opened(c.key, "9", eng.record(c, FAIL)[0].op)
    eng.record(c, OK)
    clock.advance(7 * 3600)
    assert [a.kind for a in eng.record(c, FAIL)] == ["note"]


def test_a_storm_respects_the_site_cap_and_is_summarised(state: State, clock: Clock) -> None:
    eng = engine(state, clock, cap=5)
    checks = [check(f"c{i}", device=f"sw{i}") for i in range(20)]
    opened = []
    for c in checks:
        for a in eng.record(c, FAIL):
            assert a.kind == "open"
            opened.append(a)
            eng.ticket_opened(c.key, str(100 + len(opened)), a.op)
    assert len(opened) == 5
    summary = eng.flush()
    assert len(summary) == 1 and summary[0].kind == "summary"
    assert summary[0].ticket == "101"
    assert summary[0].text.startswith("15 more check(s) failed")
    assert all(f"sw{i}/c{i}" in summary[0].text for i in range(5, 20))
    assert eng.flush() == []


def test_an_unreachable_device_makes_one_ticket(state: State, clock: Clock) -> None:
    eng = engine(state, clock)
    checks = [check(f"c{i}", device="gw1") for i in range(5)]
    actions = [a for c in checks for a in eng.record(c, DOWN)]
    assert [a.kind for a in actions] == ["open"]
    assert actions[0].check.key == "gw1/reachable" and actions[0].severity == "critical"
    eng.ticket_opened("gw1/reachable", "300", actions[0].op)
    # real failures while it is down are inhibited too... once it answers, they count
    back = eng.record(checks[0], OK)
    assert [a.kind for a in back] == ["recovered"] and back[0].ticket == "300"
    assert [a.kind for a in eng.record(checks[1], FAIL)] == ["open"]


def test_every_write_is_in_the_ledger_before_it_is_returned(state: State, clock: Clock) -> None:
    eng = engine(state, clock)
    c = check()
    a = eng.record(c, FAIL)[0]
    assert [p["id"] for p in eng.pending()] == [a.op]  # a crash here: search before writing
    eng.ticket_opened(c.key, "1", a.op)
    assert eng.pending() == []


def test_undecided_results_change_nothing(state: State, clock: Clock) -> None:
    eng = engine(state, clock)
    c = check()
    assert eng.record(c, Result(None, "cannot read disk_percent of /")) == []
    assert state.one("SELECT state FROM checks WHERE id = ?", (c.key,))["state"] == "unknown"  # type: ignore[index]
    kinds = [e["kind"] for e in eng.timeline(c.key)]
    assert kinds == ["result", "undecided"]
