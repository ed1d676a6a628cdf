"""A simulated GPU node for --simulate and the tests. It plays three roles,
each through the same interface the real source implements:

- the GPUs (`SimulatedGpus`, a GpuBackend like NVML),
- the scheduler (`SimulatedScheduler`, an AllocationSource and the owner of
  synthetic PIDs),
- /proc (`SimulatedProcFS`, a process lookup for pid-backed workloads).
"""

from __future__ import annotations

from dataclasses import dataclass

from gpucarbon.clock import Clock
from gpucarbon.simulation.gpu import SimTime, SimulatedGpus
from gpucarbon.simulation.procfs import SimulatedProcFS
from gpucarbon.simulation.scenario import Scenario
from gpucarbon.simulation.scheduler import SimulatedScheduler
from gpucarbon.teams import TeamRules


@dataclass(frozen=True)
class SimulatedNode:
    scenario: Scenario
    gpus: SimulatedGpus
    scheduler: SimulatedScheduler
    time: SimTime

    @classmethod
    def build(cls, scenario: Scenario, clock: Clock, teams: TeamRules | None = None) -> SimulatedNode:
        """`teams`: the configured team rules, which decide for workloads without `team`."""
        sim_time = SimTime(clock, clock.monotonic())
        scheduler = SimulatedScheduler(scenario, sim_time, teams)
        return cls(scenario, SimulatedGpus(scenario, sim_time), scheduler, sim_time)


__all__ = ["SimTime", "SimulatedGpus", "SimulatedNode", "SimulatedProcFS", "SimulatedScheduler"]
