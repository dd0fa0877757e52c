"""SNMP: a blocking session over pysnmp 7's asyncio hlapi, and ``snmp.get`` / ``snmp.walk``.

``SnmpSession`` hides asyncio: the open sessions share one event loop running in its own
thread (with the pysnmp engines bound to it, see ``_SharedLoop``); ``get``/``probe`` submit a
PDU with ``run_coroutine_threadsafe`` and wait for it from the calling (step) thread, and
``walk`` runs a task in that loop feeding the caller's thread through a bounded queue; the
waiting side checks the step's deadline and cancel event. Any number of threads may use a
session, and sessions to many devices run side by side.

Names: OIDs may be numeric or names of the standard MIBs (SNMPv2-MIB, IF-MIB,
HOST-RESOURCES-MIB, ENTITY-MIB) from a shipped table (``collectors/mibs/standard.yaml``,
see its header for why a table). Output is in the text format of net-snmp's ``snmpwalk``
(``IF-MIB::ifDescr.1 = STRING: lo``) plus JSON rows ``{oid, name, type, value}``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field, field_validator

from collectors.base import (
    Collector,
    DeviceInfo,
    Facts,
    Options,
    StepContext,
    StepError,
    StepFailed,
    StepPartial,
    StepTimeout,
)
from collectors.snmp_format import Oid, dotted, mib_table, render, resolve_oid

log = logging.getLogger(__name__)
_JSON = json.JSONEncoder(ensure_ascii=False).encode  # json.dumps(...) makes one per call

_WALK_AHEAD = 4  # responses a walk may receive before the caller took them
_GET_PER_PDU = 32  # OIDs per GET request (an agent answers tooBig past its message size)

# --- the session --------------------------------------------------------------------------

AuthProtocol = Literal["MD5", "SHA", "SHA224", "SHA256", "SHA384", "SHA512"]
PrivProtocol = Literal["DES", "3DES", "AES", "AES192", "AES256", "AES192C", "AES256C"]


@dataclass(frozen=True)
class SnmpCredentials:
    """Resolved credentials (secrets are kept out of repr)."""

    version: Literal["1", "2c", "3"] = "2c"
    community: str | None = field(default=None, repr=False)
    username: str | None = None
    auth_protocol: AuthProtocol | None = None
    auth_key: str | None = field(default=None, repr=False)
    priv_protocol: PrivProtocol | None = None
    priv_key: str | None = field(default=None, repr=False)
    context: str = ""

    @property
    def describe(self) -> str:
        if self.version != "3":
            return f"SNMP v{self.version}"
        level = (
            "authPriv"
            if self.priv_protocol
            else "authNoPriv"
            if self.auth_protocol
            else ("noAuthNoPriv")
        )
        return f"SNMPv3 {level} user {self.username}"


def _auth_data(cred: SnmpCredentials) -> Any:
    from pysnmp.hlapi.v3arch import asyncio as hl

    if cred.version in ("1", "2c"):
        return hl.CommunityData(cred.community or "", mpModel=0 if cred.version == "1" else 1)
    auth = {
        None: hl.usmNoAuthProtocol,
        "MD5": hl.usmHMACMD5AuthProtocol,
        "SHA": hl.usmHMACSHAAuthProtocol,
        "SHA224": hl.usmHMAC128SHA224AuthProtocol,
        "SHA256": hl.usmHMAC192SHA256AuthProtocol,
        "SHA384": hl.usmHMAC256SHA384AuthProtocol,
        "SHA512": hl.usmHMAC384SHA512AuthProtocol,
    }[cred.auth_protocol]
    priv = {
        None: hl.usmNoPrivProtocol,
        "DES": hl.usmDESPrivProtocol,
        "3DES": hl.usm3DESEDEPrivProtocol,
        "AES": hl.usmAesCfb128Protocol,
        # net-snmp's AES-192/256 localize keys as in draft-blumenthal; "C" = Cisco (Reeder)
        "AES192": hl.usmAesBlumenthalCfb192Protocol,
        "AES256": hl.usmAesBlumenthalCfb256Protocol,
        "AES192C": hl.usmAesCfb192Protocol,
        "AES256C": hl.usmAesCfb256Protocol,
    }[cred.priv_protocol]
    return hl.UsmUserData(
        cred.username or "",
        authKey=cred.auth_key if cred.auth_protocol else None,
        privKey=cred.priv_key if cred.priv_protocol else None,
        authProtocol=auth,
        privProtocol=priv,
    )


class SnmpSession:
    """A blocking SNMP session to one agent (see the module docstring for the threading)."""

    def __init__(
        self,
        device_name: str,
        address: str,
        port: int,
        credentials: SnmpCredentials,
        *,
        timeout: float = 2.0,
        retries: int = 1,
        walker: Literal["auto", "net-snmp", "pysnmp"] = "auto",
    ) -> None:
        self.device_name = device_name
        self.walker = walker
        self.address = address
        self.port = port
        self.credentials = credentials
        self.timeout = timeout
        self.retries = retries
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._engine: Any = None
        self._target: Any = None
        self._auth: Any = None
        self._context: Any = None
        self._addr_name: Any = None
        self._answered = False
        self._given_up: StepFailed | None = None
        self._closing = threading.Event()

    @property
    def where(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{self.port}"

    def _no_answer(self) -> str:
        tries = self.retries + 1
        what = "community" if self.credentials.version != "3" else "v3 user and keys"
        return (
            f"no answer from {self.where} after {tries} tr{'ies' if tries > 1 else 'y'} of "
            f"{self.timeout:g}s ({self.credentials.describe}): check the address, port, "
            f"{what} and that the SNMP agent is running"
        )

    # -- the event loop thread --

    def _start(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._closed:
                raise StepFailed("the SNMP session is closed")
            if self._loop is not None:
                return self._loop
            loop = _SharedLoop.acquire()
            try:
                asyncio.run_coroutine_threadsafe(self._setup(), loop).result(timeout=30)
            except Exception as exc:
                _SharedLoop.release()
                if "gaierror" in str(exc) or "Name or service not known" in str(exc):
                    raise StepFailed(
                        f"cannot resolve the address {self.address!r}: check the device's "
                        "address in the site config"
                    ) from exc
                raise StepFailed(f"cannot set up SNMP to {self.where}: {exc}") from exc
            self._loop = loop
            return loop

    async def _setup(self) -> None:
        from pysnmp.hlapi.v3arch import asyncio as hl
        from pysnmp.hlapi.v3arch.asyncio.cmdgen import LCD

        self._engine = _SharedLoop.engine(self.credentials)
        transport = hl.Udp6TransportTarget if ":" in self.address else hl.UdpTransportTarget
        self._target = await transport.create(
            (self.address, self.port), timeout=self.timeout, retries=self.retries
        )
        self._auth = _auth_data(self.credentials)
        self._context = hl.ContextData(contextName=self.credentials.context)
        # the walk's PDUs go through the command generators directly, with the target
        # configured once: hlapi's bulk_cmd would re-resolve the OID through the MIB view and
        # re-check the configuration for every PDU (about 15% of a walk's time)
        self._addr_name, _ = LCD.configure(
            self._engine, self._auth, self._target, self._context.contextName
        )

    async def _pdu(self, oid: Oid, reps: int) -> tuple[Any, Any, Any, Any]:
        """One GETBULK (v2c/v3) or GETNEXT (v1) for ``oid``, in the loop thread."""
        from pysnmp.entity.rfc3413 import cmdgen
        from pysnmp.proto.rfc1902 import Null, ObjectName

        fut: asyncio.Future[tuple[Any, Any, Any, Any]] = asyncio.get_running_loop().create_future()

        def done(_e: Any, _h: Any, ind: Any, status: Any, index: Any, vbs: Any, _c: Any) -> None:
            if not fut.done():
                fut.set_result((ind, status, index, vbs))

        varbinds = [(ObjectName(oid), Null(""))]
        ctx = self._context
        if self.credentials.version == "1":
            cmdgen.NextCommandGeneratorSingleRun().send_varbinds(
                self._engine,
                self._addr_name,
                ctx.contextEngineId,
                ctx.contextName,
                varbinds,
                done,
            )
        else:
            cmdgen.BulkCommandGeneratorSingleRun().send_varbinds(
                self._engine,
                self._addr_name,
                ctx.contextEngineId,
                ctx.contextName,
                0,
                reps,
                varbinds,
                done,
            )
        return await fut

    def _call(
        self,
        make: Callable[[], Coroutine[Any, Any, Any]],
        deadline: float | None,
        cancel: threading.Event | None,
    ) -> Any:
        if self._given_up is not None:
            raise self._given_up
        loop = self._start()
        fut = asyncio.run_coroutine_threadsafe(make(), loop)
        while True:
            try:
                return fut.result(timeout=0.05)
            except concurrent.futures.TimeoutError:
                if self._closed:
                    fut.cancel()
                    raise StepFailed("the SNMP session was closed") from None
                if cancel is not None and cancel.is_set():
                    fut.cancel()
                    raise StepTimeout("cancelled") from None
                if deadline is not None and time.monotonic() >= deadline:
                    fut.cancel()
                    raise StepTimeout(
                        f"the step's deadline passed while waiting for {self.where}"
                    ) from None

    def _check(self, result: tuple[Any, Any, Any, Any], request: Sequence[Oid]) -> list[Any]:
        error_indication, error_status, error_index, varbinds = result
        if error_indication:
            text = str(error_indication)
            error: StepFailed
            if "timed out" in text.lower() or type(error_indication).__name__ == "RequestTimedOut":
                error = _NoAnswer(self._no_answer())
            elif self.credentials.version == "3":
                error = StepFailed(
                    f"{self.where} refused the request ({self.credentials.describe}): {text}; "
                    "check the v3 username, auth/priv protocols and keys"
                )
            else:
                error = StepFailed(f"{self.where}: {text}")
            if not self._answered:
                # an agent that never answered this session will not answer the next step
                # either: later requests fail at once instead of waiting out the timeout again
                self._given_up = type(error)(f"{error} (not asked again in this job)")
            raise error
        self._answered = True
        if error_status:
            idx = int(error_index or 0)
            at = f" at {dotted(request[idx - 1])}" if 0 < idx <= len(request) else ""
            status = (
                error_status.prettyPrint()
                if hasattr(error_status, "prettyPrint")
                else str(error_status)
            )
            raise _ErrorStatus(f"{self.where} answered {status}{at}", status, idx)
        return list(varbinds)

    # -- requests --

    def get(
        self,
        oids: Sequence[Oid],
        *,
        deadline: float | None = None,
        cancel: threading.Event | None = None,
    ) -> list[tuple[Oid, Any]]:
        """GET ``oids`` ([(oid, value)] in order; a missing object is a noSuchObject or
        noSuchInstance value), _GET_PER_PDU of them per request."""
        out: list[tuple[Oid, Any]] = []
        for i in range(0, len(oids), _GET_PER_PDU):
            out += self._get_some(list(oids[i : i + _GET_PER_PDU]), deadline, cancel)
        return out

    def _get_some(
        self, oids: list[Oid], deadline: float | None, cancel: threading.Event | None
    ) -> list[tuple[Oid, Any]]:
        from pysnmp.hlapi.v3arch import asyncio as hl
        from pysnmp.proto.rfc1902 import Null, ObjectName
        from pysnmp.proto.rfc1905 import noSuchObject

        missing: dict[Oid, Any] = {}
        while True:
            asked = [o for o in oids if o not in missing]
            varbinds = [(ObjectName(o), Null("")) for o in asked]

            def make(varbinds: list[Any] = varbinds) -> Coroutine[Any, Any, Any]:
                coro: Coroutine[Any, Any, Any] = hl.get_cmd(
                    self._engine,
                    self._auth,
                    self._target,
                    self._context,
                    *varbinds,
                    lookupMib=False,
                )
                return coro

            if not asked:
                got: dict[Oid, Any] = {}
                break
            try:
                result = self._check(self._call(make, deadline, cancel), asked)
            except _ErrorStatus as exc:
                # SNMPv1 answers a GET with one missing object by failing the whole PDU
                if exc.pdu_status == "noSuchName" and 0 < exc.index <= len(asked):
                    missing[asked[exc.index - 1]] = noSuchObject
                    continue
                raise
            got = {tuple(name): value for name, value in result}
            break
        return [(o, missing[o] if o in missing else got.get(o, noSuchObject)) for o in oids]

    def walk(
        self,
        oid: Oid,
        *,
        max_repetitions: int = 25,
        deadline: float | None = None,
        cancel: threading.Event | None = None,
    ) -> Iterator[list[tuple[Oid, Any]]]:
        """The subtree under ``oid``, one list of (oid, value) per response PDU.

        GETBULK for v2c/v3, GETNEXT for v1. Stops at the end of the subtree or of the MIB
        view. Raises StepTimeout (deadline/cancel) or StepFailed (no answer, refused) from
        the PDU that failed: what was yielded before stays valid.

        The PDUs are sent by a task in the session's loop that runs ahead of the caller (a
        few responses at most): the next request is on the wire while the caller writes the
        previous rows, so the agent's time and ours overlap.
        """
        if self._given_up is not None:
            raise self._given_up
        if self.walk_engine == "net-snmp":
            yield from self._netsnmp_walk(oid, max(1, max_repetitions), deadline, cancel)
            return
        loop = self._start()
        rows: queue.Queue[list[tuple[Oid, Any]] | BaseException | None] = queue.Queue()
        stop = threading.Event()
        task = asyncio.run_coroutine_threadsafe(
            self._walk_task(oid, max(1, max_repetitions), rows, stop, deadline), loop
        )
        try:
            while True:
                try:
                    item = rows.get(timeout=0.05)
                except queue.Empty:
                    if self._closed:
                        raise StepFailed("the SNMP session was closed") from None
                    if cancel is not None and cancel.is_set():
                        raise StepTimeout("cancelled") from None
                    if deadline is not None and time.monotonic() >= deadline:
                        raise StepTimeout(
                            f"the step's deadline passed while walking {self.where}"
                        ) from None
                    if task.done() and rows.empty():
                        task.result()  # raises what killed it; else it ended without a word
                        return
                    continue
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            task.cancel()

    @functools.cached_property
    def walk_engine(self) -> Literal["net-snmp", "pysnmp"]:
        """What walks: net-snmp's snmpbulkwalk (~8x faster on a fast agent, see
        collectors/snmp_netsnmp.py) when installed and usable with these credentials."""
        from collectors import snmp_netsnmp

        if self.walker == "pysnmp":
            return "pysnmp"
        why_not = snmp_netsnmp.usable(self.credentials)
        if why_not is None:
            return "net-snmp"
        if self.walker == "net-snmp":
            raise StepFailed(f'walker = "net-snmp" cannot walk {self.where}: {why_not}')
        return "pysnmp"

    def _netsnmp_walk(
        self,
        oid: Oid,
        reps: int,
        deadline: float | None,
        cancel: threading.Event | None,
    ) -> Iterator[list[tuple[Oid, Any]]]:
        from collectors import snmp_netsnmp

        host = f"udp6:[{self.address}]" if ":" in self.address else f"udp:{self.address}"
        try:
            for batch in snmp_netsnmp.walk(
                f"{host}:{self.port}",
                self.where,
                self.credentials,
                oid,
                max_repetitions=reps,
                timeout=self.timeout,
                retries=self.retries,
                deadline=deadline,
                cancel=cancel,
                closed=self._closing,
            ):
                self._answered = True
                yield batch
        except snmp_netsnmp.NoAnswer:
            error = _NoAnswer(self._no_answer())
            if not self._answered:
                self._given_up = _NoAnswer(f"{error} (not asked again in this job)")
            raise error from None

    async def _walk_task(
        self,
        oid: Oid,
        reps: int,
        out: queue.Queue[list[tuple[Oid, Any]] | BaseException | None],
        stop: threading.Event,
        deadline: float | None,
    ) -> None:
        bulk = self.credentials.version != "1"
        last = oid
        n = len(oid)
        try:
            while not stop.is_set():
                if deadline is not None and time.monotonic() >= deadline:
                    return  # the caller reports it
                while out.qsize() >= _WALK_AHEAD and not stop.is_set():
                    await asyncio.sleep(0.002)  # the caller is behind: wait for it
                try:
                    result = self._check(await self._pdu(last, reps), [last])
                except _ErrorStatus as exc:
                    if exc.pdu_status == "noSuchName" and not bulk:
                        break  # SNMPv1 end of MIB
                    if exc.pdu_status == "tooBig" and bulk and reps > 1:
                        reps = max(1, reps // 2)
                        continue
                    raise
                batch: list[tuple[Oid, Any]] = []
                done = not result
                for name, value in result:
                    key = name.asTuple()  # the OID's own tuple (tuple() iterates arcs)
                    if type(value).__name__ == "EndOfMibView" or key[:n] != oid:
                        done = True
                        break
                    if key <= last:
                        raise StepFailed(
                            f"{self.where} returned OID {dotted(key)} not after "
                            f"{dotted(last)} (agent bug); stopped the walk there"
                        )
                    batch.append((key, value))
                    last = key
                if batch:
                    out.put(batch)
                if done:
                    break
            out.put(None)
        except StepError as exc:
            out.put(exc)

    def probe(self, timeout: float | None = None) -> str:
        """GET sysName.0 and sysUpTime.0: ``"sysName=gw1 uptime=3d 4h"``; StepFailed if not."""
        deadline = time.monotonic() + (timeout or self.timeout * (self.retries + 1) + 5)
        try:
            got = dict(
                self.get(
                    [(1, 3, 6, 1, 2, 1, 1, 5, 0), (1, 3, 6, 1, 2, 1, 1, 3, 0)], deadline=deadline
                )
            )
        except StepTimeout as exc:
            raise StepFailed(f"{self.device_name}: {self._no_answer()}") from exc
        except StepFailed as exc:
            raise StepFailed(f"{self.device_name}: {exc}") from exc
        name = got.get((1, 3, 6, 1, 2, 1, 1, 5, 0))
        up = got.get((1, 3, 6, 1, 2, 1, 1, 3, 0))
        name_text = "?"
        if name is not None and hasattr(name, "asOctets"):
            name_text = bytes(name.asOctets()).decode("utf-8", "replace")
        try:
            secs = int(up) // 100 if up is not None else None
        except (TypeError, ValueError):  # noSuchObject and the like
            secs = None
        return f"sysName={name_text or '?'} uptime={_short_duration(secs)}"

    def close(self) -> None:
        self._closing.set()
        with self._lock:
            self._closed = True
            loop, self._loop = self._loop, None
        if loop is not None:
            _SharedLoop.release()


class _SharedLoop:
    """The process's SNMP event loop (one thread) and its pysnmp engines, shared by the open
    sessions: an engine costs ~0.1 s of CPU to create, a session on a shared one ~1 ms.

    v1/v2c sessions share one engine (communities and targets are separate entries in its
    configuration); v3 sessions share an engine only with the same user and keys, since an
    engine holds one set of keys per user name. The thread ends with the last session.
    """

    _lock = threading.Lock()
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _users = 0
    _engines: dict[tuple[str | None, ...], Any] = {}

    @classmethod
    def acquire(cls) -> asyncio.AbstractEventLoop:
        with cls._lock:
            if cls._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name="snmp-loop", daemon=True)
                thread.start()
                cls._loop, cls._thread = loop, thread
            cls._users += 1
            return cls._loop

    @classmethod
    def engine(cls, cred: SnmpCredentials) -> Any:
        """The engine for these credentials (call in the loop thread)."""
        from pysnmp.hlapi.v3arch import asyncio as hl

        key: tuple[str | None, ...] = ("community",)
        if cred.version == "3":
            key = (
                "usm",
                cred.username,
                cred.auth_protocol,
                cred.auth_key,
                cred.priv_protocol,
                cred.priv_key,
            )
        if key not in cls._engines:
            from collectors.snmp_asn1 import narrow_response_specs

            engine = hl.SnmpEngine()
            narrow_response_specs(engine)  # ~40% less response decoding
            cls._engines[key] = engine
        return cls._engines[key]

    @classmethod
    def release(cls) -> None:
        with cls._lock:
            cls._users -= 1
            if cls._users > 0 or cls._loop is None or cls._thread is None:
                return
            loop, thread, engines = cls._loop, cls._thread, list(cls._engines.values())
            cls._loop, cls._thread, cls._engines = None, None, {}

            async def shutdown() -> None:
                for engine in engines:
                    engine.close_dispatcher()

            try:
                asyncio.run_coroutine_threadsafe(shutdown(), loop).result(timeout=5)
            except Exception:  # closing must not fail the job
                log.debug("closing the SNMP engines failed", exc_info=True)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(5)
            if not thread.is_alive():
                loop.close()


class _NoAnswer(StepFailed):
    """The agent did not answer within timeout x tries."""


class _ErrorStatus(StepFailed):
    def __init__(self, message: str, status: str, index: int = 0) -> None:
        super().__init__(message)
        self.pdu_status = status
        self.index = index


def _short_duration(secs: int | None) -> str:
    if secs is None:
        return "?"
    days, rest = divmod(secs, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {secs}s"


# --- the collectors -----------------------------------------------------------------------


def _check_oids(value: str | tuple[str, ...]) -> str | tuple[str, ...]:
    items = (value,) if isinstance(value, str) else value
    if not items:
        raise ValueError("give at least one OID")
    for item in items:
        resolve_oid(item)  # ValueError with the reason
    return value


class SnmpGetOptions(Options):
    oid: str | tuple[str, ...]
    numeric: bool = False  # numeric OIDs and raw values, like `snmpget -On` without MIBs
    output: str = Field("get", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")

    _oids = field_validator("oid")(_check_oids)


class SnmpWalkOptions(Options):
    oid: str | tuple[str, ...]
    max_repetitions: int = Field(25, ge=1, le=1000)
    max_rows: int = Field(1_000_000, ge=1)
    numeric: bool = False
    output: str = Field("walk", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")

    _oids = field_validator("oid")(_check_oids)


def _as_tuple(value: str | tuple[str, ...]) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else value


class _Writer:
    """Streams rows into ``NAME.txt`` (snmpwalk format) and ``NAME.json`` (one row a line)."""

    def __init__(self, ctx: StepContext, name: str, numeric: bool) -> None:
        self.mibs = None if numeric else mib_table()
        self.rows = 0
        self.missing: list[str] = []  # names the agent has no object/instance for
        self._stack = contextlib.ExitStack()
        self._text = self._stack.enter_context(ctx.sink.open(f"{name}.txt"))
        self._json = self._stack.enter_context(ctx.sink.open(f"{name}.json"))
        self._json.write(b"[")

    def add(self, batch: list[tuple[Oid, Any]]) -> None:
        lines, items = [], []
        for oid, value in batch:
            row = render(oid, value, self.mibs)
            lines.append(row.line())
            items.append(_JSON(row.as_json()))
            if not row.type:
                self.missing.append(row.name)
        sep = ",\n" if self.rows else "\n"
        self.rows += len(batch)
        self._text.write("".join(lines).encode("utf-8", "replace"))
        self._json.write((sep + ",\n".join(items)).encode("utf-8", "replace"))

    def truncated(self) -> None:
        self._text.artifact.truncated = self._json.artifact.truncated = True

    def close(self) -> None:
        try:
            self._json.write(b"\n]\n" if self.rows else b"]\n")
        finally:
            self._stack.close()


def _stop_deadline(ctx: StepContext) -> float:
    # leave a moment to write the artifacts before the runner's deadline
    return ctx.deadline - min(0.5, 0.1 * ctx.remaining())


class SnmpGet(Collector):
    """GET one or more OIDs."""

    name = "snmp.get"
    transport = "snmp"
    Options = SnmpGetOptions
    default_deadline = 30.0
    summary = "SNMP GET of OIDs (numeric or standard MIB names); snmpget text + JSON"

    def collect(self, ctx: StepContext, device: DeviceInfo, options: SnmpGetOptions) -> Facts:
        session: SnmpSession = ctx.session("snmp")
        oids = [resolve_oid(o) for o in _as_tuple(options.oid)]
        started = time.monotonic()
        got = session.get(oids, deadline=_stop_deadline(ctx), cancel=ctx.cancel)
        writer = _Writer(ctx, options.output, options.numeric)
        writer.add(got)
        writer.close()
        missing = writer.missing
        facts: Facts = {
            "rows": len(got),
            "seconds": round(time.monotonic() - started, 3),
            "stop": "done",
        }
        if missing and len(missing) == len(got):
            raise StepFailed(f"the agent has none of {', '.join(missing)}")
        if missing:
            raise StepPartial(f"the agent has no {', '.join(missing)}", facts)
        return facts


class SnmpWalk(Collector):
    """Walk subtrees (GETBULK; GETNEXT for v1)."""

    name = "snmp.walk"
    transport = "snmp"
    Options = SnmpWalkOptions
    default_deadline = 120.0
    summary = "SNMP walk of subtrees/tables (GETBULK), snmpwalk text + JSON, row cap"

    def collect(self, ctx: StepContext, device: DeviceInfo, options: SnmpWalkOptions) -> Facts:
        session: SnmpSession = ctx.session("snmp")
        engine = session.walk_engine
        started = time.monotonic()
        writer = _Writer(ctx, options.output, options.numeric)
        rows = pdus = 0
        stop = "end of subtree"
        error: StepFailed | StepTimeout | None = None
        try:
            for text in _as_tuple(options.oid):
                batches = session.walk(
                    resolve_oid(text),
                    max_repetitions=options.max_repetitions,
                    deadline=_stop_deadline(ctx),
                    cancel=ctx.cancel,
                )
                for batch in batches:
                    pdus += 1
                    room = options.max_rows - rows
                    writer.add(batch[:room])
                    rows += min(len(batch), room)
                    if rows >= options.max_rows:
                        stop = "max_rows"
                        break
                if stop == "max_rows":
                    break
        except StepTimeout as exc:
            stop, error = ("cancelled" if ctx.cancel.is_set() else "deadline"), exc
        except _NoAnswer as exc:
            stop, error = "no answer", exc
        except StepFailed as exc:
            stop, error = "error", exc
        finally:
            writer.close()
        facts: Facts = {
            "rows": rows,
            "seconds": round(time.monotonic() - started, 3),
            "stop": stop,
            "engine": engine,
        }
        if engine == "pysnmp":
            facts["pdus"] = pdus  # snmpbulkwalk does not say how many it sent
        if error is not None:
            if rows == 0:
                raise error
            raise StepPartial(f"walk stopped after {rows} rows: {error}", facts)
        if stop == "max_rows":
            writer.truncated()
        return facts
