"""A net-snmp ``pass_persist`` handler serving a synthetic interface-like table (benchmarks).

snmpd runs it as ``pass_persist .1.3.6.1.4.1.99999.1 python3 THIS_FILE ROWS [DELAY_MS]``:
ROWS indexes x 5 columns (INTEGER, STRING, Counter32, Gauge32, Timeticks) under
``.1.3.6.1.4.1.99999.1.1.COLUMN.INDEX``. DELAY_MS adds a pause per answered variable, like
the slow CPU of a real device. Protocol: ``PING`` -> ``PONG``; ``get``/``getnext`` + OID ->
OID, type, value or ``NONE``.
"""

from __future__ import annotations

import bisect
import sys
import time

BASE = (1, 3, 6, 1, 4, 1, 99999, 1)
COLUMNS = (
    ("integer", lambda i: str(i)),
    ("string", lambda i: f"port-{i} uplink to rack {i % 40}"),
    ("counter", lambda i: str((i * 7919) % 2**32)),
    ("gauge", lambda i: str(1_000_000_000 if i % 2 else 100_000_000)),
    ("timeticks", lambda i: str(i * 123)),
)


def main() -> None:
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    delay = float(sys.argv[2]) / 1000 if len(sys.argv) > 2 else 0.0
    oids = [(*BASE, 1, c + 1, i) for c in range(len(COLUMNS)) for i in range(1, rows + 1)]
    oids.sort()
    out = sys.stdout
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "PING":
            out.write("PONG\n")
        elif cmd in ("get", "getnext"):
            text = sys.stdin.readline().strip()
            oid = tuple(int(p) for p in text.strip(".").split(".") if p)
            if cmd == "get":
                pos = bisect.bisect_left(oids, oid)
                found = oids[pos] if pos < len(oids) and oids[pos] == oid else None
            else:
                pos = bisect.bisect_right(oids, oid)
                found = oids[pos] if pos < len(oids) else None
            if found is None:
                out.write("NONE\n")
            else:
                if delay:
                    time.sleep(delay)
                kind, value = COLUMNS[found[len(BASE) + 1] - 1]
                out.write(f".{'.'.join(map(str, found))}\n{kind}\n{value(found[-1])}\n")
        elif cmd == "set":
            sys.stdin.readline()
            sys.stdin.readline()
            out.write("not-writable\n")
        elif not cmd:
            break
        out.flush()


if __name__ == "__main__":
    main()
