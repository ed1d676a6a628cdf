"""How a simulated run ended: the scenario's `outcome` once the workload
reached its `end` (simulation/scheduler.py knows which workload a `sim/<i>`
run is)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from gpucarbon.receipts.fingerprint import simulated_fingerprint
from gpucarbon.receipts.kubernetes import top_owner
from gpucarbon.receipts.model import RunFacts
from gpucarbon.receipts.tracker import STILL_RUNNING, RunRef, StillRunning

# What a simulated run's receipt says by outcome unless the scenario sets them:
# (reason, exit code), as a pod status or Slurm would report them.
SIM_ENDINGS = {
    "succeeded": ("Completed", 0),
    "failed": ("Error", 1),
    "preempted": ("PreemptionByScheduler", 143),
    "evicted": ("Evicted", 137),
    "deleted": ("Deleted", 143),
    "cancelled": ("CANCELLED", 0),
    "timeout": ("DeadlineExceeded", 137),
}


class SimWorkloadEnding(Protocol):
    @property
    def workload(self) -> str: ...
    @property
    def outcome(self) -> str: ...
    @property
    def reason(self) -> str | None: ...
    @property
    def exit_code(self) -> int | None: ...
    @property
    def image(self) -> str | None: ...
    @property
    def command(self) -> Sequence[str]: ...


class SimulatedRunStatus:
    def __init__(self, run_ending: Callable[[str], tuple[SimWorkloadEnding, bool] | None]) -> None:
        self._run_ending = run_ending

    def facts(self, run: RunRef) -> RunFacts | StillRunning | None:
        found = self._run_ending(run.run_id)
        if found is None:
            return None
        workload, ended = found
        if not ended:
            return STILL_RUNNING
        reason, exit_code = SIM_ENDINGS[workload.outcome]
        return RunFacts(
            outcome=workload.outcome,
            reason=workload.reason or reason,
            exit_code=workload.exit_code if workload.exit_code is not None else exit_code,
            fingerprint=simulated_fingerprint(workload.image, workload.command),
            owner=top_owner((), workload.workload),
        )
