"""GPUs shared below the process level: MIG instances and CUDA MPS. Pure
functions, integer mJ; docs/attribution.md states the rules for users.

MIG. Energy is measured for the whole board only. The board's interval energy E
is first divided between its instances, then each instance's part is split among
that instance's consumers with the ordinary rule (policy.split_interval):
  * idle part = min(E, idle cap): between instances by slice count (an idle 3g
    instance holds 3/7 of the board), then among the instance's holders;
  * active part: between instances by GPM SM utilization x SM count where NVML
    has GPM for every busy instance (Hopper and newer), else by slice count among
    instances with running processes (an estimate: a busy 1g instance and a
    nearly idle one with a process weigh the same);
  * an instance nobody holds passes its share to the board's unattributed energy.
Every division is largest-remainder, so the parts sum to E exactly.

MPS. `nvidia-cuda-mps-server` is a compute process beside its clients; it runs
their kernels. It is never charged: it holds no idle share, and any SM
utilization NVML reports for it is divided equally among the GPU's MPS clients
(NVML cannot say which client the server worked for; equal is the rule that
cannot favour one). Its clients keep their own samples too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from gpucarbon.attribution.policy import Split, split_exact, split_interval


@dataclass(frozen=True, slots=True)
class InstanceShare:
    """What one MIG instance contributes to the board's split."""

    instance: str  # a label for the instance, e.g. its GPU instance id
    holders: Sequence[str]  # consumer keys, sorted
    running: Mapping[str, float] = field(default_factory=dict)  # key -> SM share within the instance
    slice_count: int | None = None
    sm_count: int | None = None
    sm_util: float | None = None  # GPM, 0..1


def split_mig_board(
    energy_mj: int, idle_cap_mj: int, instances: Sequence[InstanceShare]
) -> tuple[Split, dict[str, int]]:
    """Divide a MIG board's interval energy; returns the merged split and each
    instance's part of E (mJ), which also sum to E."""
    if energy_mj < 0 or idle_cap_mj < 0:
        raise ValueError("energy and idle cap must be non-negative")
    if not instances:
        return Split({}, energy_mj, 0, 0), {}
    idle = min(energy_mj, idle_cap_mj)
    active = energy_mj - idle
    idle_parts = split_exact(idle, [float(_slices(i)) for i in instances])
    active_parts = split_exact(active, _active_weights(instances))
    parts: dict[str, int] = {}
    unattributed = 0
    by_instance: dict[str, int] = {}
    for share, idle_mj, active_mj in zip(instances, idle_parts, active_parts, strict=True):
        inner = split_interval(idle_mj + active_mj, idle_mj, list(share.holders), share.running)
        by_instance[share.instance] = idle_mj + active_mj
        unattributed += inner.unattributed_mj
        for key, mj in inner.parts.items():
            parts[key] = parts.get(key, 0) + mj
    return Split(parts, unattributed, idle, active), by_instance


def _slices(share: InstanceShare) -> int:
    return share.slice_count or 1


def _active_weights(instances: Sequence[InstanceShare]) -> list[float]:
    busy = [i for i in instances if i.running]
    if busy and all(i.sm_util is not None for i in busy):
        weights = [(i.sm_util or 0.0) * (i.sm_count or _slices(i)) if i.running else 0.0 for i in instances]
        if sum(weights) > 0.0:
            return weights
    if busy:
        return [float(_slices(i)) if i.running else 0.0 for i in instances]
    # Nobody runs anything: the active remainder follows holders, like idle.
    return [float(_slices(i)) if i.holders else 0.0 for i in instances]


def share_mps_server(util_by_pid: Mapping[int, float], servers: set[int], clients: Sequence[int]) -> dict[int, float]:
    """Per-process SM utilization with each MPS server's share moved, equally,
    to the MPS clients. With no client listed the server's share is dropped
    (it is then part of the idle/active split among the other processes)."""
    moved = sum(util for pid, util in util_by_pid.items() if pid in servers)
    result = {pid: util for pid, util in util_by_pid.items() if pid not in servers}
    if moved > 0.0 and clients:
        each = moved / len(clients)
        for pid in clients:
            result[pid] = result.get(pid, 0.0) + each
    return result
