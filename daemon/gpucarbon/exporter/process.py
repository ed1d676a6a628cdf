"""The standard process_* families every Prometheus client exports, read from
/proc/self as client_python's ProcessCollector reads them (same names, help
texts and values), without importing client_python.

Linux only, like the daemon: where /proc cannot be read the families are left
out, as client_python leaves them out.
"""

from __future__ import annotations

import os

from gpucarbon.exporter.exposition import Family


class ProcessFamilies:
    """CPU, memory, start time and file descriptors of this process."""

    def __init__(self, proc: str = "/proc") -> None:
        self._proc = proc
        self._ticks = float(os.sysconf("SC_CLK_TCK"))  # clock ticks per second in /proc/*/stat
        self._page_bytes = os.sysconf("SC_PAGE_SIZE")
        self._boot_s = self._boot_time()  # Unix s; 0.0 when /proc/stat cannot be read

    def _boot_time(self) -> float:
        try:
            with open(os.path.join(self._proc, "stat"), "rb") as stat:
                for line in stat:
                    if line.startswith(b"btime "):
                        return float(line.split()[1])
        except OSError:
            pass
        return 0.0

    def families(self) -> list[Family]:
        if not self._boot_s:
            return []
        own = os.path.join(self._proc, "self")
        out: list[Family] = []
        try:
            with open(os.path.join(own, "stat"), "rb") as stat:
                # After the command name (which may hold spaces and parentheses): field 3 on.
                fields = stat.read().split(b")")[-1].split()
            out += [
                _gauge("process_virtual_memory_bytes", "Virtual memory size in bytes.", float(fields[20])),
                _gauge(
                    "process_resident_memory_bytes",
                    "Resident memory size in bytes.",
                    float(fields[21]) * self._page_bytes,
                ),
                _gauge(
                    "process_start_time_seconds",
                    "Start time of the process since unix epoch in seconds.",
                    float(fields[19]) / self._ticks + self._boot_s,
                ),
            ]
            cpu = Family("process_cpu_seconds", "counter", "Total user and system CPU time spent in seconds.")
            cpu.add_metric((), float(fields[11]) / self._ticks + float(fields[12]) / self._ticks)
            out.append(cpu)
        except OSError:
            pass
        try:
            max_fds = self._max_fds(own)
            out.append(_gauge("process_open_fds", "Number of open file descriptors.", len(os.listdir(f"{own}/fd"))))
            if max_fds is not None:
                out.append(_gauge("process_max_fds", "Maximum number of open file descriptors.", max_fds))
        except OSError:
            pass
        return out

    @staticmethod
    def _max_fds(own: str) -> float | None:
        with open(os.path.join(own, "limits"), "rb") as limits:
            for line in limits:
                if line.startswith(b"Max open file"):
                    return float(line.split()[3])
        return None


def _gauge(name: str, help_text: str, value: float) -> Family:
    family = Family(name, "gauge", help_text)
    family.add_metric((), value)
    return family
