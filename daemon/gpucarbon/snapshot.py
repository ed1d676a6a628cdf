"""The immutable picture of one poll. The exporter renders it; nothing mutates it."""

from __future__ import annotations

from dataclasses import dataclass

from gpucarbon.carbon.model import IntensityReading

LABELS_WORKLOAD = ("gpu", "uuid", "namespace", "pod", "container", "workload", "team")


@dataclass(frozen=True, slots=True)
class GpuView:
    index: int
    uuid: str
    model: str
    driver_version: str
    mig_mode: str  # "enabled", "disabled" or "unknown"
    energy_source: str
    up: bool
    power_w: float | None
    power_limit_w: float | None
    utilization: float | None
    memory_used_bytes: int | None
    memory_total_bytes: int | None
    temperature_c: float | None
    idle_power_w: float | None
    energy_j: float
    unattributed_j: float
    retired_j: float
    grams: float
    unattributed_grams: float
    retired_grams: float
    resets: int


@dataclass(frozen=True, slots=True)
class WorkloadView:
    gpu: str  # index, as a label value
    uuid: str
    namespace: str
    pod: str
    container: str
    workload: str
    team: str
    energy_j: float
    grams: float
    power_w: float
    held_s: float
    busy_s: float
    embodied_grams: float
    cost: float
    holding: bool
    key: str = ""  # the consumer's stable key (pod/<uid>/<container>, slurm/<id>, ...): receipts group by it
    idle_j: float = 0.0  # the part of energy_j that was its share of the GPU's idle draw

    def labels(self) -> tuple[str, ...]:
        return (self.gpu, self.uuid, self.namespace, self.pod, self.container, self.workload, self.team)


@dataclass(frozen=True, slots=True)
class TeamView:
    team: str
    energy_j: float
    grams: float
    embodied_grams: float
    cost: float


@dataclass(frozen=True, slots=True)
class SourceView:
    source: str
    up: bool
    errors: tuple[tuple[str, int], ...]  # (reason, count)


@dataclass(frozen=True, slots=True)
class CarbonView:
    intensity: IntensityReading | None
    pue: float
    source: str
    source_up: bool
    source_errors: tuple[tuple[str, int], ...]  # (reason, count)
    age_s: float | None
    fallbacks: int
    embodied_enabled: bool
    currency: str | None  # None: cost accounting off


@dataclass(frozen=True, slots=True)
class ReceiptsView:
    """Counters from the receipts of finished runs (receipts/tracker.py, dispatcher.py)."""

    finished: tuple = ()  # receipts.tracker.WasteRow: team, outcome, runs, energy_j, grams
    repeated: tuple[tuple[str, float], ...] = ()  # (team, J)
    sinks: tuple[tuple[str, str, int], ...] = ()  # (sink, result, count)
    enabled: bool = False


@dataclass(frozen=True, slots=True)
class PollStats:
    buckets: tuple[float, ...]  # upper bounds, seconds
    counts: tuple[int, ...]  # cumulative, one per bucket (+Inf last)
    count: int
    sum_s: float
    last_poll_wall: float | None


@dataclass(frozen=True, slots=True)
class Snapshot:
    sequence: int
    ready: bool
    nvml_up: bool
    nvml_reason: str
    gpus: tuple[GpuView, ...]
    workloads: tuple[WorkloadView, ...]
    teams: tuple[TeamView, ...]
    carbon: CarbonView
    sources: tuple[SourceView, ...]
    nvml_errors: tuple[tuple[str, str, int], ...]  # (call, error, count)
    dropped_series: int
    poll: PollStats
    extra_counters: tuple[tuple[str, int], ...] = ()  # e.g. state checkpoint failures
    receipts: ReceiptsView = ReceiptsView()


EMPTY_POLL = PollStats((), (), 0, 0.0, None)
