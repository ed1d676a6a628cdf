"""The simulated node's GPUs: the same GpuBackend Protocol as NVML.

Power follows the issue's model: base + (max - base) * min(1, sum of SM
utilizations of the workloads running on the GPU), where base is the idle draw,
or `context_watts` while a process holds a CUDA context (an H100 measured on
2026-11-27 drew 72 W bare and 118 W with a context open and no kernels running;
docs/simulation.md). The energy counter integrates
that power exactly (piecewise constant between breakpoints), so attribution
tests can check results against hand computations. A seeded +-5% jitter per
5-simulated-second bucket keeps series lifelike and runs reproducible.
"""

from __future__ import annotations

import functools
import hashlib
import threading
import time
import uuid as uuidlib
from dataclasses import dataclass, field

from gpucarbon.clock import Clock
from gpucarbon.device.model import GpuProcess, GpuReadError, GpuReading, ProcessSample
from gpucarbon.simulation.scenario import Scenario

JITTER_BUCKET_S = 5.0  # simulated seconds over which the jitter is constant
JITTER = 0.05  # +-5% of a workload's utilization
SYNTHETIC_PID_BASE = 200_000
PIDS_PER_WORKLOAD = 64  # one synthetic PID per GPU a workload runs on


@dataclass
class _GpuState:
    last_t: float
    energy_mj: float = 0.0
    reset_offset_mj: float = 0.0
    resets_applied: set[int] = field(default_factory=set)
    util_integral: dict[int, float] = field(default_factory=dict)  # workload index -> util*s


@dataclass(frozen=True)
class SimTime:
    """Simulated seconds since the node was made, on the daemon's clock."""

    clock: Clock
    t0: float

    def now(self) -> float:
        return self.clock.monotonic() - self.t0


class SimulatedGpus:
    def __init__(self, scenario: Scenario, sim_time: SimTime) -> None:
        self._scenario = scenario
        self._time = sim_time
        self._uuids = gpu_uuids(scenario)
        self._index = {u: i for i, u in enumerate(self._uuids)}
        self._by_gpu = [[i for i, w in enumerate(scenario.workloads) if g in w.gpus] for g in range(len(scenario.gpus))]
        self._states = [_GpuState(last_t=0.0) for _ in scenario.gpus]
        self._lock = threading.Lock()

    # --- GpuBackend ---------------------------------------------------------

    def open(self) -> None:
        return None

    def close(self) -> None:
        return None

    def list_gpus(self) -> tuple[str, ...]:
        return self._uuids

    def read_gpu(self, uuid: str) -> GpuReading:
        index = self._index.get(uuid)
        if index is None:
            raise GpuReadError(uuid, "nvmlDeviceGetHandleByUUID", "NotFound")
        self._wait_out_hang(uuid, index)
        now = self.sim_time()
        with self._lock:
            averages, dt = self._advance(index, now)
            state = self._states[index]
            fault = self._fault(index, now, "lost")
            if fault:
                raise GpuReadError(uuid, "nvmlDeviceGetTotalEnergyConsumption", "GpuIsLost")
            return self._reading(index, now, averages, dt, state)

    def sim_time(self) -> float:
        return self._time.now()

    # --- the physics --------------------------------------------------------

    def _advance(self, g: int, now: float) -> tuple[dict[int, float], float]:
        """Integrate power and utilization from the last read to `now`."""
        state = self._states[g]
        self._apply_resets(g, state, now)
        start = state.last_t
        if now <= start:
            return {}, 0.0
        gpu = self._scenario.gpus[g]
        candidates = [i for i in self._by_gpu[g] if self._overlaps(i, start, now)]
        integrals: dict[int, float] = {}
        for a, b in self._segments(g, candidates, start, now):
            mid = (a + b) / 2.0
            total_util = 0.0
            has_process = False
            for i in candidates:
                workload = self._scenario.workloads[i]
                if workload.allocated_only or not workload.running_at(mid):
                    continue
                has_process = True
                util = self._jittered(i, g, mid, workload.util_at(mid))
                integrals[i] = integrals.get(i, 0.0) + util * (b - a)
                total_util += util
            state.energy_mj += gpu.power(total_util, has_process) * (b - a) * 1000.0
        state.last_t = now
        dt = now - start
        return {i: v / dt for i, v in integrals.items()}, dt

    def _overlaps(self, i: int, start: float, end: float) -> bool:
        workload = self._scenario.workloads[i]
        return workload.start < end and (workload.end is None or workload.end > start)

    def _segments(self, g: int, candidates: list[int], start: float, end: float) -> list[tuple[float, float]]:
        points = {start, end}
        bucket = (int(start // JITTER_BUCKET_S) + 1) * JITTER_BUCKET_S
        while bucket < end:
            points.add(bucket)
            bucket += JITTER_BUCKET_S
        for i in candidates:
            workload = self._scenario.workloads[i]
            edges = [workload.start, workload.end] + [t for t, _ in workload.sm_util]
            points.update(t for t in edges if t is not None and start < t < end)
        ordered = sorted(points)
        return list(zip(ordered, ordered[1:], strict=False))

    def _jittered(self, i: int, g: int, t: float, util: float) -> float:
        if util <= 0.0:
            return 0.0
        unit = _jitter_unit(self._scenario.seed, i, g, int(t // JITTER_BUCKET_S))
        return min(1.0, max(0.0, util * (1.0 + JITTER * unit)))

    def _apply_resets(self, g: int, state: _GpuState, now: float) -> None:
        for n, fault in enumerate(self._scenario.faults):
            if fault.gpu == g and fault.kind == "reset" and fault.start <= now and n not in state.resets_applied:
                # The driver reloads: the counter restarts from zero at this read.
                state.resets_applied.add(n)
                self._advance_to(g, state, fault.start)
                state.reset_offset_mj = state.energy_mj

    def _advance_to(self, g: int, state: _GpuState, t: float) -> None:
        if t > state.last_t:
            saved = state.reset_offset_mj
            self._advance(g, t)
            state.reset_offset_mj = saved

    def _fault(self, g: int, now: float, kind: str) -> bool:
        return any(
            f.gpu == g and f.kind == kind and f.start <= now and (f.end is None or now < f.end)
            for f in self._scenario.faults
        )

    def _wait_out_hang(self, uuid: str, g: int) -> None:
        """A 'hang' fault blocks the call, like a stuck NVML call, until it ends."""
        while self._fault(g, self.sim_time(), "hang"):
            time.sleep(0.01)

    def _reading(self, g: int, now: float, averages: dict[int, float], dt: float, state: _GpuState) -> GpuReading:
        gpu = self._scenario.gpus[g]
        running = [
            i
            for i in self._by_gpu[g]
            if self._scenario.workloads[i].running_at(now) and not self._scenario.workloads[i].allocated_only
        ]
        processes = tuple(GpuProcess(self._pid(i, g), self._scenario.workloads[i].memory_bytes) for i in running)
        stamp = int(self._time.t0 * 1e6 + now * 1e6)
        samples = tuple(
            ProcessSample(self._pid(i, g), stamp, min(1.0, avg)) for i, avg in sorted(averages.items()) if avg > 0.0
        )
        total_util = min(1.0, sum(self._jittered(i, g, now, self._scenario.workloads[i].util_at(now)) for i in running))
        power = gpu.power(total_util, bool(running))
        used = min(gpu.memory_bytes, sum(p.used_memory_bytes or 0 for p in processes))
        return GpuReading(
            uuid=self._uuids[g],
            index=g,
            name=gpu.model,
            timestamp_s=self._time.t0 + now,
            driver_version="simulated",
            mig_mode=False,
            energy_mj=int(state.energy_mj - state.reset_offset_mj),
            power_w=power,
            power_limit_w=gpu.max_watts,
            utilization=float(min(1.0, sum(averages.values()))) if dt > 0 else float(total_util),
            memory_used_bytes=used,
            memory_total_bytes=gpu.memory_bytes,
            temperature_c=round(30.0 + 50.0 * power / gpu.max_watts, 1),
            processes=processes,
            samples=samples,
            minor_number=gpu.minor_number if gpu.minor_number is not None else g,
        )

    def _pid(self, i: int, g: int) -> int:
        return pid_of(self._scenario, i, g)


@functools.lru_cache(maxsize=4096)  # pure; each (workload, GPU) asks several times per bucket
def _jitter_unit(seed: int, i: int, g: int, bucket: int) -> float:
    """The seeded jitter of workload `i` on GPU `g` in a jitter bucket: -1..1."""
    digest = hashlib.blake2b(f"{seed}/{i}/{g}/{bucket}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big") / 0xFFFFFFFF * 2.0 - 1.0


def pid_of(scenario: Scenario, i: int, g: int) -> int:
    """The PID of workload `i` on GPU `g`: its own `pid:`, else a synthetic one."""
    workload = scenario.workloads[i]
    return workload.pid if workload.pid is not None else SYNTHETIC_PID_BASE + PIDS_PER_WORKLOAD * i + g


def workload_of_pid(scenario: Scenario, pid: int) -> int | None:
    """The index of the workload a synthetic PID belongs to (None: not synthetic)."""
    offset = pid - SYNTHETIC_PID_BASE
    if offset < 0:
        return None
    index = offset // PIDS_PER_WORKLOAD
    if index >= len(scenario.workloads) or scenario.workloads[index].pid is not None:
        return None
    return index


def gpu_uuids(scenario: Scenario) -> tuple[str, ...]:
    return tuple(gpu_uuid(scenario.seed, i) for i in range(len(scenario.gpus)))


def gpu_uuid(seed: int, index: int) -> str:
    return "GPU-" + str(uuidlib.uuid5(uuidlib.NAMESPACE_OID, f"gpucarbon-sim/{seed}/{index}"))
