"""Run inside a test namespace: ``listen`` (TCP accept + UDP echo) or ``probe`` (connect).

listen ADDR,... TCPPORTS UDPPORTS: binds every address x port, prints "ready", serves until
stdin closes. probe TIMEOUT: reads [[src, dst, proto, port], ...] as JSON on stdin, tries them
all at once, prints [verdict, ...]: accept (connected / echoed), reject (refused or an ICMP
error), drop (no answer within TIMEOUT).
"""

from __future__ import annotations

import errno
import json
import selectors
import socket
import sys
import threading
from concurrent.futures import ThreadPoolExecutor


def listen(addrs: list[str], tcp: list[int], udp: list[int]) -> None:
    sel = selectors.DefaultSelector()
    for addr in addrs:
        fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
        for port in tcp:
            s = socket.socket(fam, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((addr, port))
            s.listen(128)
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ, "tcp")
        for port in udp:
            u = socket.socket(fam, socket.SOCK_DGRAM)
            u.bind((addr, port))
            u.setblocking(False)
            sel.register(u, selectors.EVENT_READ, "udp")
    print("ready", flush=True)
    threading.Thread(target=lambda: (sys.stdin.read(), sel.close()), daemon=True).start()
    while True:
        try:
            events = sel.select(1.0)
        except (OSError, ValueError):
            return
        for key, _ in events:
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                if key.data == "tcp":
                    conn, _ = sock.accept()
                    conn.close()
                else:
                    data, peer = sock.recvfrom(2048)
                    sock.sendto(data, peer)
            except OSError:
                pass


IP_RECVERR = getattr(socket, "IP_RECVERR", 11)
IPV6_RECVERR = getattr(socket, "IPV6_RECVERR", 25)
REJECTS = {
    errno.ECONNREFUSED,
    errno.EHOSTUNREACH,
    errno.ENETUNREACH,
    errno.EACCES,
    errno.EPERM,
    errno.EADDRNOTAVAIL,
}


def probe_one(src: str, dst: str, proto: str, port: int, timeout: float) -> str:
    fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    with socket.socket(fam, kind) as s:
        s.bind((src, 0))
        s.settimeout(timeout)
        # report every ICMP error (e.g. ICMPv6 address-unreachable is "soft" otherwise)
        if fam == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVERR, 1)
        else:
            s.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
        try:
            s.connect((dst, port))
            if proto == "udp":
                s.send(b"ping")
                s.recv(64)
            return "accept"
        except TimeoutError:
            return "drop"
        except OSError as exc:
            if exc.errno in REJECTS:
                return "reject"
            return f"error:{exc}"


def main() -> None:
    if sys.argv[1] == "listen":
        listen(
            sys.argv[2].split(","),
            [int(p) for p in sys.argv[3].split(",") if p],
            [int(p) for p in sys.argv[4].split(",") if p],
        )
        return
    timeout = float(sys.argv[2])
    probes = json.loads(sys.stdin.read())
    with ThreadPoolExecutor(max(1, len(probes))) as pool:
        futures = [pool.submit(probe_one, *p, timeout) for p in probes]
        print(json.dumps([f.result() for f in futures]))


if __name__ == "__main__":
    main()
