"""What the benchmarks read about the daemon's process from /proc."""

from __future__ import annotations

import os
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")  # clock ticks per second, for /proc/<pid>/stat


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def status_kib(pid: int, field: str) -> int:
    """A kB figure from /proc/<pid>/status, e.g. VmRSS (now) or VmHWM (peak)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} line in /proc/{pid}/status")


def peak_rss_mib(pid: int) -> float:
    return status_kib(pid, "VmHWM") / 1024
