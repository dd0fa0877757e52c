"""``host.snapshot``: the agent host's vital signs through psutil, as JSON artifacts."""

from __future__ import annotations

import json
import os
import platform
import socket
import time
from typing import Any

from collectors.base import Collector, DeviceInfo, Duration, Facts, Options, StepContext


class HostSnapshotOptions(Options):
    processes: int = 200
    cpu_interval: Duration = 0.5
    connections: bool = True


def _asdict(obj: Any) -> Any:
    return obj._asdict() if hasattr(obj, "_asdict") else obj


class HostSnapshot(Collector):
    """CPU, memory, disks and inodes, interfaces and counters, sockets, top processes."""

    name = "host.snapshot"
    transport = "local"
    Options = HostSnapshotOptions
    summary = "psutil snapshot: cpu, memory, disks+inodes, interfaces+counters, sockets, processes"

    def collect(self, ctx: StepContext, device: DeviceInfo, options: HostSnapshotOptions) -> Facts:
        import psutil

        def dump(name: str, data: Any) -> None:
            ctx.sink.write_text(name, json.dumps(data, indent=1, default=str, sort_keys=True))

        boot = psutil.boot_time()
        mem = psutil.virtual_memory()
        load = os.getloadavg()
        dump(
            "system.json",
            {
                "hostname": socket.gethostname(),
                "platform": platform.platform(),
                "kernel": platform.release(),
                "python": platform.python_version(),
                "boot_time": boot,
                "uptime_s": round(time.time() - boot),
                "cpu_count_logical": psutil.cpu_count(),
                "cpu_count_physical": psutil.cpu_count(logical=False),
                "loadavg": load,
                "cpu_percent": psutil.cpu_percent(
                    interval=min(options.cpu_interval, ctx.remaining())
                ),
                "cpu_times_percent": _asdict(psutil.cpu_times_percent(interval=None)),
                "memory": _asdict(mem),
                "swap": _asdict(psutil.swap_memory()),
            },
        )
        ctx.check()
        disks = []
        for part in psutil.disk_partitions(all=False):
            entry: dict[str, Any] = _asdict(part)
            try:
                entry["usage"] = _asdict(psutil.disk_usage(part.mountpoint))
                st = os.statvfs(part.mountpoint)
                entry["inodes"] = {
                    "total": st.f_files,
                    "free": st.f_ffree,
                    "percent": round(100 * (1 - st.f_ffree / st.f_files), 1)
                    if st.f_files
                    else None,
                }
            except OSError as exc:
                entry["error"] = str(exc)
            disks.append(entry)
        dump("disks.json", disks)
        io = psutil.net_io_counters(pernic=True)
        stats = psutil.net_if_stats()
        dump(
            "interfaces.json",
            {
                nic: {
                    "addresses": [_asdict(a) for a in addrs],
                    "stats": _asdict(stats.get(nic)),
                    "counters": _asdict(io.get(nic)),
                }
                for nic, addrs in psutil.net_if_addrs().items()
            },
        )
        ctx.check()
        n_conn = 0
        if options.connections:
            try:
                conns = [_asdict(c) for c in psutil.net_connections(kind="inet")]
            except psutil.AccessDenied:
                conns = []
            n_conn = len(conns)
            dump("connections.json", conns)
        procs = []
        for p in psutil.process_iter(
            [
                "pid",
                "ppid",
                "name",
                "username",
                "status",
                "create_time",
                "memory_info",
                "cpu_percent",
                "num_threads",
                "cmdline",
            ]
        ):
            info = p.info
            info["rss"] = info.pop("memory_info").rss if info.get("memory_info") else None
            procs.append(info)
        procs.sort(key=lambda i: i.get("rss") or 0, reverse=True)
        dump("processes.json", procs[: options.processes])
        return {
            "hostname": socket.gethostname(),
            "uptime_s": round(time.time() - boot),
            "memory_percent": mem.percent,
            "loadavg_1m": load[0],
            "processes": len(procs),
            "connections": n_conn,
        }
