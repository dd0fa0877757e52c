"""snmp.get / snmp.walk and SnmpSession against a real net-snmp snmpd on loopback.

Differential: what the collectors write (numeric mode) must equal what the stock
``snmpget``/``snmpbulkwalk -On`` print for the same agent. Walks run with both engines
(net-snmp's snmpbulkwalk driven as a child, and pysnmp).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from collectors import registry
from collectors.base import (
    ArtifactSink,
    DeviceInfo,
    StepContext,
    StepError,
    StepFailed,
    StepPartial,
)
from collectors.snmp import SnmpCredentials, SnmpSession
from collectors.snmp_format import Oid
from collectors.snmp_netsnmp import private_base
from tests.fixtures.snmpd import EXTRA_V3_USERS, SYSDESCR, SYSNAME, Snmpd, snmpd, snmpd_server

__all__ = ["snmpd"]  # the fixture, imported for pytest

pytestmark = pytest.mark.integration

DEVICE = DeviceInfo("gw1", "snmp-box", "127.0.0.1")
# subtrees whose values do not change while the tests run
STABLE = [
    "1.3.6.1.2.1.1.9",  # sysORTable: OID, STRING, Timeticks
    "1.3.6.1.2.1.2.2.1.2",  # ifDescr
    "1.3.6.1.2.1.2.2.1.3",  # ifType
    "1.3.6.1.2.1.2.2.1.6",  # ifPhysAddress: Hex-STRING and ""
    "1.3.6.1.4.1.8072.1.2.1",  # nsModuleTable: STRING, Hex-STRING, INTEGER
    "1.3.6.1.6.3.10.2.1.1",  # snmpEngineID: Hex-STRING over two lines
]


WALKERS = ["net-snmp", "pysnmp"]


@pytest.fixture(params=WALKERS)
def walker(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def v2c(server: Snmpd, **kw: Any) -> SnmpSession:
    return SnmpSession(
        "gw1", "127.0.0.1", server.port, SnmpCredentials("2c", community=server.community), **kw
    )


def v3(server: Snmpd, **kw: Any) -> SnmpSession:
    cred = SnmpCredentials(
        "3",
        username=server.v3_user,
        auth_protocol="SHA",
        auth_key=server.v3_auth,
        priv_protocol="AES",
        priv_key=server.v3_priv,
    )
    return SnmpSession("gw1", "127.0.0.1", server.port, cred, **kw)


@pytest.fixture
def session(snmpd: Snmpd, walker: str) -> Iterator[SnmpSession]:
    s = v2c(snmpd, walker=walker)
    try:
        yield s
    finally:
        s.close()


@dataclass
class Outcome:
    facts: dict[str, Any] | None
    error: StepError | None
    dir: Path
    sink: ArtifactSink
    seconds: float

    def text(self, name: str) -> str:
        return (self.dir / name).read_text()

    def rows(self, name: str) -> list[dict[str, Any]]:
        data: list[dict[str, Any]] = json.loads((self.dir / name).read_text())
        return data


def collect(
    name: str, options: dict[str, Any], session: Any, tmp_path: Path, deadline: float = 30.0
) -> Outcome:
    collector = registry.get(name)
    sink = ArtifactSink(tmp_path / "staging", "gw1/step")
    ctx = StepContext(
        sink=sink,
        deadline=time.monotonic() + deadline,
        cancel=threading.Event(),
        opener=lambda kind: session,
    )
    t0 = time.monotonic()
    facts: dict[str, Any] | None = None
    error: StepError | None = None
    try:
        facts = collector.collect(ctx, DEVICE, collector.Options.model_validate(options))
    except StepError as exc:
        error = exc
    return Outcome(facts, error, tmp_path / "staging/gw1/step", sink, time.monotonic() - t0)


def reference(server: Snmpd, tool: str, *args: str) -> str:
    proc = server.tool(tool, *args)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


# --- v2c ----------------------------------------------------------------------------------


def test_v2c_get_equals_snmpget(snmpd: Snmpd, session: SnmpSession, tmp_path: Path) -> None:
    oids = ["1.3.6.1.2.1.1.1.0", "1.3.6.1.2.1.1.2.0", "1.3.6.1.2.1.1.5.0", "1.3.6.1.2.1.2.1.0"]
    out = collect("snmp.get", {"oid": oids, "numeric": True}, session, tmp_path)
    assert out.error is None and out.facts and out.facts["rows"] == 4
    expected = reference(snmpd, "snmpget", *snmpd.v2c_args(), "-On", snmpd.target, *oids)
    assert out.text("get.txt") == expected
    assert f'STRING: "{SYSDESCR}"' in expected


def test_v2c_get_by_name_in_snmpwalk_format(session: SnmpSession, tmp_path: Path) -> None:
    opts = {"oid": ["SNMPv2-MIB::sysName.0", "sysDescr.0", "IF-MIB::ifDescr.1", "ifNumber.0"]}
    out = collect("snmp.get", opts, session, tmp_path)
    assert out.error is None
    assert out.text("get.txt").splitlines() == [
        f"SNMPv2-MIB::sysName.0 = STRING: {SYSNAME}",
        f"SNMPv2-MIB::sysDescr.0 = STRING: {SYSDESCR}",
        "IF-MIB::ifDescr.1 = STRING: lo",
        f"IF-MIB::ifNumber.0 = INTEGER: {len(_if_descr(session))}",
    ]
    rows = out.rows("get.json")
    assert rows[0] == {
        "oid": "1.3.6.1.2.1.1.5.0",
        "name": "SNMPv2-MIB::sysName.0",
        "type": "STRING",
        "value": SYSNAME,
    }
    assert rows[3]["type"] == "INTEGER" and isinstance(rows[3]["value"], int)


def _if_descr(session: SnmpSession) -> list[Any]:
    return [v for batch in session.walk((1, 3, 6, 1, 2, 1, 2, 2, 1, 2)) for _, v in batch]


def test_get_of_a_missing_object_is_partial(session: SnmpSession, tmp_path: Path) -> None:
    out = collect("snmp.get", {"oid": ["sysName.0", "1.3.6.1.2.1.1.5.99"]}, session, tmp_path)
    assert isinstance(out.error, StepPartial), out.error
    assert "the agent has no SNMPv2-MIB::sysName.99" in str(out.error)
    assert "No Such Instance currently exists at this OID" in out.text("get.txt")


def test_get_of_many_oids_spans_requests(
    snmpd: Snmpd, session: SnmpSession, tmp_path: Path
) -> None:
    oids = [f"1.3.6.1.2.1.1.9.1.{col}.{i}" for col in (2, 3) for i in range(1, 11)]
    oids += [f"1.3.6.1.2.1.2.2.1.{col}.1" for col in range(1, 21)]
    out = collect("snmp.get", {"oid": oids, "numeric": True}, session, tmp_path)
    assert out.error is None and out.facts and out.facts["rows"] == 40
    expected = reference(snmpd, "snmpget", *snmpd.v2c_args(), "-On", snmpd.target, *oids)
    assert out.text("get.txt") == expected


def test_v1_get_with_a_missing_object(snmpd: Snmpd, tmp_path: Path) -> None:
    s = SnmpSession("gw1", "127.0.0.1", snmpd.port, SnmpCredentials("1", community=snmpd.community))
    try:
        out = collect("snmp.get", {"oid": ["sysName.0", "sysName.7", "sysDescr.0"]}, s, tmp_path)
    finally:
        s.close()
    assert isinstance(out.error, StepPartial) and "SNMPv2-MIB::sysName.7" in str(out.error)
    assert out.text("get.txt").splitlines() == [
        f"SNMPv2-MIB::sysName.0 = STRING: {SYSNAME}",
        "SNMPv2-MIB::sysName.7 = No Such Object available on this agent at this OID",
        f"SNMPv2-MIB::sysDescr.0 = STRING: {SYSDESCR}",
    ]


def test_v2c_walk_equals_snmpbulkwalk(snmpd: Snmpd, session: SnmpSession, tmp_path: Path) -> None:
    out = collect("snmp.walk", {"oid": STABLE, "numeric": True}, session, tmp_path)
    assert out.error is None, out.error
    expected = "".join(
        reference(snmpd, "snmpbulkwalk", *snmpd.v2c_args(), "-On", "-Cr25", snmpd.target, oid)
        for oid in STABLE
    )
    assert out.text("walk.txt") == expected
    assert "Hex-STRING" in expected and "OID: ." in expected and "Timeticks: (" in expected
    assert out.facts and out.facts["rows"] == len(out.rows("walk.json"))
    assert out.facts["stop"] == "end of subtree" and out.facts["engine"] == session.walker


def test_whole_tree_walk_matches_snmpbulkwalk(
    snmpd: Snmpd, session: SnmpSession, tmp_path: Path
) -> None:
    """Every type net-snmp serves renders the same; only live counters may differ."""
    out = collect(
        "snmp.walk", {"oid": "1.3.6.1", "numeric": True, "max_repetitions": 50}, session, tmp_path
    )
    assert out.error is None, out.error
    ref = reference(
        snmpd, "snmpbulkwalk", *snmpd.v2c_args(), "-On", "-Cr50", snmpd.target, "1.3.6.1"
    )

    def by_oid(text: str) -> dict[str, str]:
        rows = {}
        for entry in text.replace("\n.1.", "\x00.1.").split("\x00"):
            oid, _, value = entry.partition(" = ")
            rows[oid] = value
        return rows

    # snmpbulkwalk repeats the last OID with the end-of-MIB exception; the collector stops
    end = ref.rindex("\n.1.3.6.1.") + 1
    assert "No more variables left in this MIB View" in ref[end:]
    ours, theirs = by_oid(out.text("walk.txt")), by_oid(ref[:end])
    common = ours.keys() & theirs.keys()
    assert len(common) > 0.95 * len(theirs) > 1000
    types = {k for k in common if ours[k].split(":")[0] != theirs[k].split(":")[0]}
    assert not types, [(k, ours[k], theirs[k]) for k in sorted(types)[:5]]
    same = sum(ours[k] == theirs[k] for k in common)
    assert same > 0.95 * len(common)


def test_walk_by_name_if_table(session: SnmpSession, tmp_path: Path) -> None:
    out = collect("snmp.walk", {"oid": "IF-MIB::ifTable"}, session, tmp_path)
    assert out.error is None
    text = out.text("walk.txt")
    assert "IF-MIB::ifDescr.1 = STRING: lo\n" in text
    assert "IF-MIB::ifAdminStatus.1 = INTEGER: up(1)\n" in text
    assert "IF-MIB::ifType.1 = INTEGER: 24\n" in text
    assert all(line.startswith("IF-MIB::if") for line in text.splitlines())
    rows = out.rows("walk.json")
    speed = next(r for r in rows if r["name"] == "IF-MIB::ifSpeed.1")
    assert speed["type"] == "Gauge32" and speed["oid"] == "1.3.6.1.2.1.2.2.1.5.1"


def test_walk_max_rows_caps_and_marks_truncated(session: SnmpSession, tmp_path: Path) -> None:
    out = collect(
        "snmp.walk", {"oid": "1.3.6.1", "max_rows": 30, "max_repetitions": 25}, session, tmp_path
    )
    assert out.error is None and out.facts
    assert out.facts["rows"] == 30 and out.facts["stop"] == "max_rows"
    assert len(out.text("walk.txt").splitlines()) >= 30
    assert len(out.rows("walk.json")) == 30
    assert all(a.truncated for a in out.sink.artifacts)


def test_v1_walk_uses_getnext(snmpd: Snmpd, tmp_path: Path) -> None:
    s = SnmpSession("gw1", "127.0.0.1", snmpd.port, SnmpCredentials("1", community=snmpd.community))
    try:
        assert s.walk_engine == "pysnmp"  # auto: snmpbulkwalk does not do v1
        out = collect("snmp.walk", {"oid": "1.3.6.1.2.1.2.2.1.2", "numeric": True}, s, tmp_path)
    finally:
        s.close()
    assert out.error is None
    expected = reference(
        snmpd, "snmpwalk", "-v1", "-c", snmpd.community, "-On", snmpd.target, "1.3.6.1.2.1.2.2.1.2"
    )
    assert out.text("walk.txt") == expected
    assert out.facts and out.facts["pdus"] == out.facts["rows"]  # one row per GETNEXT


# --- v3 -----------------------------------------------------------------------------------


def test_v3_authpriv_get_and_walk(snmpd: Snmpd, walker: str, tmp_path: Path) -> None:
    s = v3(snmpd, walker=walker)
    try:
        assert s.probe().startswith(f"sysName={SYSNAME} uptime=")
        got = collect("snmp.get", {"oid": "sysName.0"}, s, tmp_path / "g")
        walked = collect(
            "snmp.walk", {"oid": "1.3.6.1.2.1.2.2.1", "numeric": True}, s, tmp_path / "w"
        )
    finally:
        s.close()
    assert got.error is None and walked.error is None
    assert got.text("get.txt") == f"SNMPv2-MIB::sysName.0 = STRING: {SYSNAME}\n"
    args = [*snmpd.v3_args(), "-x", "AES", "-X", snmpd.v3_priv, "-On", "-Cr25"]
    expected = reference(snmpd, "snmpbulkwalk", *args, snmpd.target, "1.3.6.1.2.1.2.2.1.2")
    assert expected and expected in walked.text("walk.txt")


PROTOCOLS = {
    "SHA-256": "SHA256",
    "SHA-512": "SHA512",
    "SHA": "SHA",
    "": None,
    "AES-256": "AES256",
    "DES": "DES",
}


@pytest.mark.parametrize("user", EXTRA_V3_USERS, ids=[u[0] for u in EXTRA_V3_USERS])
def test_v3_security_levels_and_protocols(snmpd: Snmpd, user: tuple[str, ...]) -> None:
    name, auth, apass, priv, ppass, _level = user
    cred = SnmpCredentials(
        "3",
        username=name,
        auth_protocol=PROTOCOLS[auth],  # type: ignore[arg-type]
        auth_key=apass or None,
        priv_protocol=PROTOCOLS[priv],  # type: ignore[arg-type]
        priv_key=ppass or None,
    )
    s = SnmpSession("gw1", "127.0.0.1", snmpd.port, cred, timeout=1.0, retries=1)
    fast = SnmpSession(
        "gw1", "127.0.0.1", snmpd.port, cred, timeout=1.0, retries=1, walker="net-snmp"
    )
    try:
        assert s.probe().startswith(f"sysName={SYSNAME} ")
        # both walk engines speak every protocol pair the same way
        walks = [
            [(o, bytes(v)) for b in x.walk((1, 3, 6, 1, 2, 1, 2, 2, 1, 2)) for o, v in b]
            for x in (s, fast)
        ]
    finally:
        s.close()
        fast.close()
    assert walks[0] and walks[0] == walks[1]
    assert s.walk_engine == "net-snmp"  # auto picks it when installed


# --- failures -----------------------------------------------------------------------------


def test_wrong_community_fails_fast_with_what_to_check(
    snmpd: Snmpd, walker: str, tmp_path: Path
) -> None:
    s = SnmpSession(
        "gw1",
        "127.0.0.1",
        snmpd.port,
        SnmpCredentials("2c", community="wrong"),
        timeout=0.5,
        retries=1,
        walker=walker,  # type: ignore[arg-type]
    )
    try:
        out = collect("snmp.walk", {"oid": "IF-MIB::ifTable"}, s, tmp_path)
        with pytest.raises(StepFailed) as probe:
            s.probe()
    finally:
        s.close()
    assert isinstance(out.error, StepFailed)
    msg = str(out.error)
    assert f"no answer from 127.0.0.1:{snmpd.port} after 2 tries of 0.5s" in msg
    assert "community" in msg and "snmp agent is running" in msg.lower()
    assert out.seconds < 3.0
    assert "gw1: no answer" in str(probe.value)
    assert out.facts is None and out.text("walk.txt") == ""


def wrong_key(server: Snmpd, **kw: Any) -> SnmpSession:
    """The v3 user with a wrong auth key."""
    cred = SnmpCredentials(
        "3",
        username=server.v3_user,
        auth_protocol="SHA",
        auth_key="not-the-key-123",
        priv_protocol="AES",
        priv_key=server.v3_priv,
    )
    return SnmpSession("gw1", "127.0.0.1", server.port, cred, timeout=0.5, retries=0, **kw)


def test_wrong_v3_key_on_a_walk_says_so(snmpd: Snmpd, walker: str, tmp_path: Path) -> None:
    s = wrong_key(snmpd, walker=walker)
    try:
        out = collect("snmp.walk", {"oid": "ifTable"}, s, tmp_path)
    finally:
        s.close()
    assert isinstance(out.error, StepFailed), out.error
    msg = str(out.error)
    assert "refused the request (SNMPv3 authPriv user ftv3user)" in msg, msg
    assert "check the v3 username, auth/priv protocols and keys" in msg
    assert "not-the-key-123" not in msg


def test_net_snmp_walker_refuses_what_it_cannot_do(snmpd: Snmpd) -> None:
    v1 = SnmpCredentials("1", community=snmpd.community)
    s = SnmpSession("gw1", "127.0.0.1", snmpd.port, v1, walker="net-snmp")
    with pytest.raises(StepFailed, match=r'walker = "net-snmp" cannot walk .*GETNEXT'):
        list(s.walk((1, 3, 6, 1, 2, 1, 1)))
    s.close()
    # a community snmp.conf cannot carry: auto falls back to pysnmp
    odd = SnmpSession("gw1", "127.0.0.1", snmpd.port, SnmpCredentials("2c", community='a"b'))
    assert odd.walk_engine == "pysnmp"
    odd.close()


def test_a_walk_sweeps_configs_left_by_a_killed_process(snmpd: Snmpd) -> None:
    import subprocess

    dead = subprocess.Popen(["true"])  # a pid that no longer runs
    dead.wait()
    stale = private_base() / f"ft-snmp-{dead.pid}-abc123"
    stale.mkdir()
    (stale / "snmp.conf").write_text("defCommunity left-behind\n")
    mine = private_base() / "ft-snmp-1-keep"  # pid 1 runs: not swept
    mine.mkdir()
    s = v2c(snmpd, walker="net-snmp")
    try:
        assert list(s.walk((1, 3, 6, 1, 2, 1, 1, 5)))
    finally:
        s.close()
        keep = mine.exists()
        mine.rmdir()
    assert not stale.exists() and keep


def test_wrong_v3_key_says_so(snmpd: Snmpd, tmp_path: Path) -> None:
    s = wrong_key(snmpd)
    try:
        out = collect("snmp.get", {"oid": "sysName.0"}, s, tmp_path)
    finally:
        s.close()
    assert isinstance(out.error, StepFailed)
    assert "Wrong SNMP PDU digest" in str(out.error) and "keys" in str(out.error)
    assert "not-the-key-123" not in str(out.error)


def test_unknown_v3_user_says_so(snmpd: Snmpd, tmp_path: Path) -> None:
    cred = SnmpCredentials("3", username="nobody", auth_protocol="SHA", auth_key="whatever123")
    s = SnmpSession("gw1", "127.0.0.1", snmpd.port, cred, timeout=0.5, retries=0)
    try:
        with pytest.raises(StepFailed, match=r"(?i)unknown.*user"):
            s.probe()
    finally:
        s.close()


def test_unreachable_port(tmp_path: Path) -> None:
    from tests.fixtures.snmpd import free_udp_port

    port = free_udp_port()
    s = SnmpSession(
        "gw1", "127.0.0.1", port, SnmpCredentials("2c", community="x"), timeout=0.3, retries=0
    )
    try:
        out = collect("snmp.get", {"oid": "sysName.0"}, s, tmp_path)
    finally:
        s.close()
    assert isinstance(out.error, StepFailed)
    assert f"no answer from 127.0.0.1:{port} after 1 try of 0.3s" in str(out.error)


def test_ipv6_agent(walker: str, tmp_path: Path) -> None:
    from tests.fixtures.snmpd import COMMUNITY, free_udp_port

    port = free_udp_port()
    extra = [
        f"agentAddress udp:127.0.0.1:{port},udp6:[::1]:{port}",
        f"rocommunity6 {COMMUNITY} ::1",
    ]
    with snmpd_server(extra) as server:
        cred = SnmpCredentials("2c", community=server.community)
        s = SnmpSession("gw1", "::1", port, cred, walker=walker)  # type: ignore[arg-type]
        try:
            assert s.probe().startswith(f"sysName={SYSNAME} ")
            out = collect("snmp.walk", {"oid": "ifDescr"}, s, tmp_path)
        finally:
            s.close()
    assert out.error is None and "IF-MIB::ifDescr.1 = STRING: lo\n" in out.text("walk.txt")


def test_unresolvable_address() -> None:
    s = SnmpSession("gw1", "gw1.invalid", 161, SnmpCredentials("2c", community="x"))
    with pytest.raises(StepFailed, match=r"cannot resolve the address 'gw1\.invalid'"):
        s.probe()
    s.close()


class PausingSession:
    """Pauses the agent (SIGSTOP) once the first response of a walk has arrived."""

    def __init__(self, session: SnmpSession, server: Snmpd) -> None:
        self.session, self.server = session, server
        self.walk_engine = session.walk_engine
        self.children: list[str] = []  # command lines of walk children seen while paused
        self.configs: list[list[Path]] = []  # config files of walks seen while paused

    def walk(self, oid: Oid, **kw: Any) -> Iterator[list[tuple[Oid, Any]]]:
        for n, batch in enumerate(self.session.walk(oid, **kw)):
            if n == 0:
                self.server.pause()
                self.children = _walk_children()
                self.configs = [list(d.glob("*.conf")) for d in private_base().glob("ft-snmp-*")]
            yield batch


def _walk_children() -> list[str]:
    import psutil

    me = psutil.Process()
    return [
        " ".join(p.cmdline()) for p in me.children(recursive=True) if "snmpbulkwalk" in p.name()
    ]


@pytest.fixture
def own_snmpd() -> Iterator[Snmpd]:
    with snmpd_server() as server:
        yield server


def test_agent_stops_mid_walk_step_ends_by_its_deadline(
    own_snmpd: Snmpd, walker: str, tmp_path: Path
) -> None:
    # the agent's timeout is longer than the step
    s = v2c(own_snmpd, timeout=5.0, retries=1, walker=walker)
    pausing = PausingSession(s, own_snmpd)
    before = set(private_base().glob("ft-snmp-*"))
    try:
        out = collect(
            "snmp.walk",
            {"oid": "1.3.6.1", "max_repetitions": 10, "numeric": True},
            pausing,
            tmp_path,
            deadline=2.0,
        )
    finally:
        own_snmpd.resume()
        s.close()
    assert isinstance(out.error, StepPartial), out.error
    assert out.seconds < 2.5  # it stops before the deadline; the runner would allow 2s more
    rows = out.error.facts["rows"]
    if walker == "pysnmp":
        # the session reads a few responses ahead, so the agent may have sent more than one
        assert 10 <= rows <= 60 and rows % 10 == 0
    else:
        # snmpbulkwalk writes each row as it gets it: all of them are kept
        assert rows >= 10
        assert len(pausing.children) == 1, pausing.children
        assert own_snmpd.community not in pausing.children[0]  # not on the command line
        assert not _walk_children()  # killed at the deadline
        assert set(private_base().glob("ft-snmp-*")) == before  # config removed
        assert pausing.configs == [[]]  # the secrets were gone while the walk ran
    assert f"walk stopped after {rows} rows" in str(out.error) and "deadline" in str(out.error)
    assert out.error.facts["stop"] == "deadline"
    assert len(out.text("walk.txt").splitlines()) == rows
    assert len(out.rows("walk.json")) == rows


def test_agent_stops_mid_walk_no_answer_keeps_rows(
    own_snmpd: Snmpd, walker: str, tmp_path: Path
) -> None:
    s = v2c(own_snmpd, timeout=0.4, retries=1, walker=walker)
    try:
        out = collect(
            "snmp.walk",
            {"oid": "1.3.6.1", "max_repetitions": 10},
            PausingSession(s, own_snmpd),
            tmp_path,
            deadline=30.0,
        )
    finally:
        own_snmpd.resume()
        s.close()
    assert isinstance(out.error, StepPartial), out.error
    assert "no answer from" in str(out.error) and "after 2 tries of 0.4s" in str(out.error)
    rows = out.error.facts["rows"]
    assert out.error.facts["stop"] == "no answer" and rows >= 10
    if walker == "pysnmp":
        assert rows <= 60 and rows % 10 == 0
    assert len(out.rows("walk.json")) == rows
    assert 0.7 < out.seconds < 3.0


# --- the session --------------------------------------------------------------------------


def test_many_sessions_from_many_threads(snmpd: Snmpd) -> None:
    first = v2c(snmpd)
    expected = [bytes(v) for v in _if_descr(first)]
    first.close()
    results: dict[int, Any] = {}

    def device(i: int) -> None:
        s = v2c(snmpd) if i % 2 else v3(snmpd)
        try:
            for _ in range(3):
                results[i] = [bytes(v) for v in _if_descr(s)]
            results[i] = (results[i], s.probe())
        except Exception as exc:  # collected and asserted below
            results[i] = exc
        finally:
            s.close()

    threads = [threading.Thread(target=device, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 16
    for value in results.values():
        assert not isinstance(value, Exception), value
        assert value[0] == expected and value[1].startswith(f"sysName={SYSNAME}")
    # the sessions shared one loop thread, which ended with the last of them
    assert not [t for t in threading.enumerate() if t.name == "snmp-loop"]


def test_closed_session_refuses(snmpd: Snmpd) -> None:
    s = v2c(snmpd)
    s.probe()
    s.close()
    with pytest.raises(StepFailed, match="closed"):
        s.probe()
