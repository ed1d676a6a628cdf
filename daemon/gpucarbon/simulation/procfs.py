"""The simulated node's /proc: what /proc would say of a pid-backed workload
that gives `cgroup:`. Its cgroup file's text goes through the real parser, so
the rest of the identity path (Kubernetes, Slurm) runs as on a real node
without a fixture procfs tree. Every other PID is asked of the real /proc."""

from __future__ import annotations

from collections.abc import Callable

from gpucarbon.identity.cgroup import parse_cgroup
from gpucarbon.identity.procfs import ProcessInfo, ReadFailure
from gpucarbon.simulation.scenario import Scenario

SIM_USER = "root"
COMM_MAX_CHARS = 15  # the kernel's TASK_COMM_LEN - 1

LookupResult = ProcessInfo | ReadFailure


class SimulatedProcFS:
    def __init__(self, scenario: Scenario, fallback: Callable[[int], LookupResult]) -> None:
        self._by_pid = {w.pid: w for w in scenario.workloads if w.pid is not None and w.cgroup}
        self._fallback = fallback

    def lookup(self, pid: int) -> LookupResult:
        workload = self._by_pid.get(pid)
        if workload is None or workload.cgroup is None:
            return self._fallback(pid)
        return ProcessInfo(
            pid=pid,
            start_time_ticks=0,
            uid=0,
            user=SIM_USER,
            comm=(workload.container or "sim")[:COMM_MAX_CHARS],
            cgroup=parse_cgroup(workload.cgroup),
        )
