"""Names and text of SNMP data: the shipped name table of standard MIB objects, and varbinds
rendered the way net-snmp's ``snmpwalk`` prints them (plus a JSON row)."""

from __future__ import annotations

import functools
import re
import string
import struct
from dataclasses import dataclass
from importlib import resources
from typing import Any, NamedTuple

Oid = tuple[int, ...]

# --- the name table -----------------------------------------------------------------------

_NUMERIC = re.compile(r"^\.?\d+(?:\.\d+)*$")
_NAMED = re.compile(r"^(?:([A-Za-z][\w-]*)::)?([A-Za-z][\w-]*)((?:\.\d+)*)$")


@dataclass(frozen=True)
class MibObject:
    module: str
    name: str
    oid: Oid
    hint: str | None = None

    @property
    def label(self) -> str:
        return f"{self.module}::{self.name}"


class MibTable:
    """Name <-> OID for the objects of the shipped table; longest-prefix naming of results."""

    NAMING_EXCLUDED = ("SNMPv2-SMI",)  # accepted in input, never used to name results

    def __init__(self, data: dict[str, Any]) -> None:
        self.by_name: dict[str, MibObject] = {}
        self.by_oid: dict[Oid, MibObject] = {}
        self.enums: dict[str, dict[int, str]] = {
            k: {int(n): str(v) for n, v in values.items()}
            for k, values in (data.get("enums") or {}).items()
        }
        for module, objects in data["modules"].items():
            for name, spec in objects.items():
                oid_text, _, hint = str(spec).partition(" ")
                obj = MibObject(module, name, _parse_numeric(oid_text), hint or None)
                if hint and hint not in ("d", "x", "date") and hint not in self.enums:
                    raise ValueError(f"{obj.label}: unknown hint {hint!r}")
                self.by_name[obj.label] = obj
                self.by_name.setdefault(name, obj)
                if module not in self.NAMING_EXCLUDED:
                    self.by_oid[obj.oid] = obj
        self.modules = sorted(m for m in data["modules"] if m not in self.NAMING_EXCLUDED)
        self.max_len = max(len(o) for o in self.by_oid)
        # objects no other named object is under: a row under one is named by it, no need to
        # look for a longer prefix (a walk's rows mostly share their column's prefix)
        parents = {o[:n] for o in self.by_oid for n in range(1, len(o))}
        self._leaves = {o for o in self.by_oid if o not in parents}
        self._prefixes = parents | set(self.by_oid)  # an OID off these has no name
        self._last: MibObject | None = None

    def resolve(self, text: str) -> Oid:
        """``"IF-MIB::ifDescr.1"``, ``"ifXTable"``, ``"1.3.6.1.2.1.1"`` -> OID; ValueError."""
        text = text.strip()
        if _NUMERIC.match(text):
            return _parse_numeric(text)
        m = _NAMED.match(text)
        if not m:
            raise ValueError(
                f"not an OID: {text!r} (expected 1.3.6.1.2.1.2.2 or a name like IF-MIB::ifTable)"
            )
        module, name, suffix = m.groups()
        obj = self.by_name.get(f"{module}::{name}" if module else name)
        if obj is None:
            raise ValueError(
                f"unknown MIB object {text!r}: fieldtrace knows the names of "
                f"{', '.join(self.modules)} (and SNMPv2-SMI roots like enterprises); "
                "give other objects numerically (1.3.6.1.4.1....)"
            )
        return obj.oid + (_parse_numeric(suffix) if suffix else ())

    def lookup(self, oid: Oid) -> tuple[MibObject, Oid] | None:
        """The longest known prefix of ``oid`` and the rest (the index), or None."""
        last = self._last
        if last is not None:
            n = len(last.oid)
            if oid[:n] == last.oid:
                return last, oid[n:]
        found: MibObject | None = None
        for n in range(1, min(len(oid), self.max_len) + 1):
            prefix = oid[:n]
            if prefix not in self._prefixes:
                break
            found = self.by_oid.get(prefix, found)
        if found is None:
            return None
        if found.oid in self._leaves:
            self._last = found
        return found, oid[len(found.oid) :]

    def name(self, oid: Oid) -> str:
        found = self.lookup(oid)
        if found is None:
            return dotted(oid)
        obj, index = found
        return obj.label + "".join(f".{i}" for i in index)


def _parse_numeric(text: str) -> Oid:
    parts = text.strip().lstrip(".").split(".")
    if not parts or not all(p.isdigit() for p in parts):
        raise ValueError(f"not a numeric OID: {text!r}")
    return tuple(int(p) for p in parts)


def dotted(oid: Oid) -> str:
    return "." + ".".join(map(str, oid))


@functools.cache
def mib_table() -> MibTable:
    import yaml

    text = resources.files("collectors").joinpath("mibs/standard.yaml").read_text("utf-8")
    return MibTable(yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)))


def resolve_oid(text: str) -> Oid:
    return mib_table().resolve(text)


# --- rendering values like net-snmp ------------------------------------------------------

_PRINTABLE = frozenset(string.printable.encode())  # C isprint() or isspace(), in the C locale


class Row(NamedTuple):
    """One varbind as shown to users: ``name = text`` and a JSON row (a tuple: thousands
    are made per second during a walk)."""

    oid: Oid
    name: str
    type: str  # net-snmp's label: STRING, Hex-STRING, INTEGER, Counter32 ... ("" for none)
    value: Any  # JSON value: int, str, hex digits for Hex-STRING, dotted OID, None
    text: str  # what snmpwalk prints after "= "

    def line(self) -> str:
        return f"{self.name} = {self.text}\n"

    def as_json(self) -> dict[str, Any]:
        return {
            "oid": ".".join(map(str, self.oid)),
            "name": self.name,
            "type": self.type,
            "value": self.value,
        }


def _timeticks(ticks: int) -> str:
    cs = ticks % 100
    secs = ticks // 100
    days, secs = divmod(secs, 86400)
    hours, secs = divmod(secs, 3600)
    minutes, secs = divmod(secs, 60)
    hms = f"{hours}:{minutes:02d}:{secs:02d}.{cs:02d}"
    if days == 0:
        return hms
    return f"{days} day{'s' if days > 1 else ''}, {hms}"


def _hex(data: bytes) -> str:
    return "\n".join(
        "".join(f"{b:02X} " for b in data[i : i + 16]) for i in range(0, len(data), 16)
    )


def _date_and_time(b: bytes) -> str:
    if len(b) not in (8, 11):
        return _hex(b)
    text = f"{b[0] * 256 + b[1]}-{b[2]}-{b[3]},{b[4]}:{b[5]}:{b[6]}.{b[7]}"
    if len(b) == 11:
        text += f",{chr(b[8])}{b[9]}:{b[10]}"
    return text


def _octets(data: bytes, hint: str | None) -> tuple[str, Any, str]:
    if hint == "d":
        text = data.decode("utf-8", "replace")
        return "STRING", text, f"STRING: {text}"
    if hint == "x":
        text = ":".join(f"{b:x}" for b in data)
        return "STRING", text, f"STRING: {text}"
    if hint == "date" and data:
        text = _date_and_time(data)
        return "STRING", text, f"STRING: {text}"
    if not data:
        return "STRING", "", '""'
    if _PRINTABLE.issuperset(data):
        text = data.decode("latin-1")
        quoted = text.replace("\\", "\\\\").replace('"', '\\"')
        return "STRING", text, f'STRING: "{quoted}"'
    return "Hex-STRING", data.hex(), f"Hex-STRING: {_hex(data)}"


def _opaque(data: bytes) -> tuple[str, Any, str]:
    # net-snmp's opaque-wrapped float/double (tag 0x9f78/0x9f79)
    if len(data) == 7 and data[:3] == b"\x9f\x78\x04":
        value = struct.unpack(">f", data[3:])[0]
        return "Opaque", value, f"Opaque: Float: {value:f}"
    if len(data) == 11 and data[:3] == b"\x9f\x79\x08":
        value = struct.unpack(">d", data[3:])[0]
        return "Opaque", value, f"Opaque: Double: {value:f}"
    return "Opaque", data.hex(), f"Opaque: {_hex(data)}"


_EXCEPTIONS = {
    "NoSuchObject": "No Such Object available on this agent at this OID",
    "NoSuchInstance": "No Such Instance currently exists at this OID",
    "EndOfMibView": "No more variables left in this MIB View (It is past the end of the MIB tree)",
}


def render(oid: Oid, value: Any, mibs: MibTable | None) -> Row:
    """A varbind as snmpwalk prints it; ``mibs=None`` renders like ``snmpwalk -On`` without
    MIB files (numeric names, no display hints)."""
    found = mibs.lookup(oid) if mibs else None
    if found:
        obj, index = found
        name = obj.label + "." + ".".join(map(str, index)) if index else obj.label
        hint = obj.hint
    else:
        name, hint = "." + ".".join(map(str, oid)), None
    kind = type(value).__name__
    vtype: str
    jvalue: Any
    if kind == "OctetString":  # the most common first
        vtype, jvalue, text = _octets(value.asOctets(), hint)
    elif kind in ("Integer", "Integer32"):
        jvalue = int(value)
        enum = mibs.enums.get(hint or "") if mibs else None
        label = enum.get(jvalue) if enum else None
        vtype, text = "INTEGER", f"INTEGER: {label}({jvalue})" if label else f"INTEGER: {jvalue}"
    elif kind in ("Counter32", "Gauge32", "Unsigned32", "Counter64"):
        vtype = "Gauge32" if kind == "Unsigned32" else kind
        jvalue = int(value)
        text = f"{vtype}: {jvalue}"
    elif kind == "TimeTicks":
        vtype, jvalue = "Timeticks", int(value)
        text = f"Timeticks: ({jvalue}) {_timeticks(jvalue)}"
    elif kind == "IpAddress":
        vtype, jvalue = "IpAddress", ".".join(str(b) for b in bytes(value))
        text = f"IpAddress: {jvalue}"
    elif kind == "Opaque":
        vtype, jvalue, text = _opaque(bytes(value))
    elif kind in ("ObjectIdentifier", "ObjectName"):
        target = tuple(value)
        vtype, jvalue = "OID", ".".join(map(str, target))
        text = f"OID: {mibs.name(target) if mibs else dotted(target)}"
    elif kind in _EXCEPTIONS:
        vtype, jvalue, text = "", None, _EXCEPTIONS[kind]
    elif kind == "Null":
        vtype, jvalue, text = "NULL", None, "NULL"
    elif kind in ("OctetString", "Bits") or hasattr(value, "asOctets"):
        vtype, jvalue, text = _octets(bytes(value), hint)
    else:
        vtype, jvalue = kind, value.prettyPrint()
        text = f"{kind}: {jvalue}"
    return Row(oid, name, vtype, jvalue, text)
