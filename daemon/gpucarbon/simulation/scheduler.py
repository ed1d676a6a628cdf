"""The simulated node's scheduler: who holds each GPU (allocations, running or
allocated idle) and who owns each synthetic PID, so the identity stage needs
no /proc for simulated workloads. Workloads with `pid:` are left to the real
identity path (procfs, Kubernetes)."""

from __future__ import annotations

from collections.abc import Mapping

from gpucarbon.identity.model import Consumer
from gpucarbon.simulation.gpu import SimTime, gpu_uuids, workload_of_pid
from gpucarbon.simulation.scenario import Scenario, SimWorkload
from gpucarbon.teams import TeamRules


class SimulatedScheduler:
    """An AllocationSource, and the owner of every synthetic PID."""

    def __init__(self, scenario: Scenario, sim_time: SimTime, teams: TeamRules | None = None) -> None:
        self._scenario = scenario
        self._time = sim_time
        self._uuids = gpu_uuids(scenario)
        self._consumers = {i: _consumer(i, w, teams) for i, w in enumerate(scenario.workloads)}
        self._by_pid: dict[int, Consumer] = {}  # synthetic PID -> its workload's consumer
        self._by_gpu = [
            [i for i, w in enumerate(scenario.workloads) if g in w.gpus and w.pid is None]
            for g in range(len(scenario.gpus))
        ]

    def allocations(self) -> Mapping[str, tuple[Consumer, ...]]:
        """GPU UUID -> consumers holding it now (running or allocated idle)."""
        now = self._time.now()
        held: dict[str, tuple[Consumer, ...]] = {}
        for g, uuid in enumerate(self._uuids):
            holders = tuple(self._consumers[i] for i in self._by_gpu[g] if self._scenario.workloads[i].running_at(now))
            if holders:
                held[uuid] = holders
        return held

    def run_ending(self, run_id: str) -> tuple[SimWorkload, bool] | None:
        """For receipts: the workload behind a `sim/<i>` run and whether it has
        ended (reached its `end`); None for any other run."""
        if not run_id.startswith("sim/") or not run_id[4:].isdigit():
            return None
        index = int(run_id[4:])
        if index >= len(self._scenario.workloads):
            return None
        workload = self._scenario.workloads[index]
        return workload, workload.end is not None and self._time.now() >= workload.end

    def consumer_for_pid(self, pid: int) -> Consumer | None:
        """Owner of a synthetic PID; None for real (pid-backed) processes.
        Asked twice per process per poll (MPS server? whose?): remembered, at
        most one entry per synthetic PID of the scenario."""
        found = self._by_pid.get(pid)
        if found is None:
            index = workload_of_pid(self._scenario, pid)
            if index is None:  # a real PID: not remembered, they come and go
                return None
            found = self._by_pid[pid] = self._consumers[index]
        return found


def _consumer(i: int, w: SimWorkload, teams: TeamRules | None) -> Consumer:
    """A workload without `team` gets what the configured team rules decide from its
    namespace and workload (namespace map, workload patterns, default), so rules can
    be tried with --simulate before they meet a cluster."""
    team = w.team
    if not team and teams is not None:
        team = teams.decide(namespace=w.namespace, workload=w.workload).team
    return Consumer(
        key=f"sim/{i}", namespace=w.namespace, pod=w.pod, container=w.container, workload=w.workload, team=team
    )
