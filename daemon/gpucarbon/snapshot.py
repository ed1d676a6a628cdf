"""The immutable picture of one poll, and the pure function that builds it
from explicit inputs. The exporter renders it; nothing mutates it."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

from gpucarbon.accounting import AccountingState, Rates
from gpucarbon.attribution.energy import POWER_INTEGRATION
from gpucarbon.carbon.model import IntensityReading, ProviderHealth
from gpucarbon.device.reader import DeviceState
from gpucarbon.identity.health import HealthSnapshot
from gpucarbon.ledger import Ledger

UNKNOWN = "unknown"

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
    # What the energy counter (and every energy/emissions figure from it) covers:
    # "gpu", or "module" on Grace superchips (CPU + GPU + memory; docs/nvml.md).
    energy_scope: str = "gpu"
    module_power_w: float | None = None  # module-scope instant power, superchips only


class WorkloadView(NamedTuple):
    """One workload series of one GPU. A NamedTuple, not a frozen dataclass:
    64 and more are built every poll, and a frozen dataclass's __init__ sets
    each of the 19 fields through object.__setattr__ (about ten times the
    cost of a tuple; bench/README.md, "CPU per poll"). Immutable all the same."""

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
    mig_instance: str = ""  # GPU instance id the workload's processes ran in, "" off MIG
    mig_uuid: str = ""  # that MIG device's UUID
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
    # podresources only: allocated device IDs no GPU of this node explains, by resource name
    unmapped_devices: tuple[tuple[str, int], ...] | None = None


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
    state: StateCounters | None = None  # None: no state directory, checkpoints off
    receipts: ReceiptsView | None = None  # None: receipts off


@dataclass(frozen=True, slots=True)
class ReceiptsView:
    """Counters from the receipts of finished runs (receipts/tracker.py, dispatcher.py)."""

    finished: tuple[Any, ...] = ()  # receipts.tracker.WasteRow: team, outcome, runs, energy_j, grams
    repeated: tuple[tuple[str, float], ...] = ()  # (team, J)
    sinks: tuple[tuple[str, str, int], ...] = ()  # (sink, result, count)


@dataclass(frozen=True, slots=True)
class StateCounters:
    save_failures: int = 0
    restore_failures: int = 0


def carbon_view(rates: Rates, intensity: IntensityReading, health: ProviderHealth) -> CarbonView:
    return CarbonView(
        intensity=intensity,
        pue=rates.pue_for(intensity.zone),
        source=health.source,
        source_up=health.up,
        source_errors=tuple(sorted(health.errors.items())),
        age_s=health.age_seconds,
        fallbacks=health.fallbacks,
        embodied_enabled=rates.embodied_on,
        currency=rates.currency if rates.costs_on else None,
    )


def source_views(health: Iterable[HealthSnapshot]) -> tuple[SourceView, ...]:
    return tuple(SourceView(h.source, h.up, tuple(sorted(h.errors_total.items())), h.unmapped_devices) for h in health)


def build_snapshot(
    *,
    sequence: int,
    ready: bool,
    devices: DeviceState,
    accounting: AccountingState,
    ledger: Ledger,
    carbon: CarbonView,
    sources: tuple[SourceView, ...],
    poll: PollStats,
    state: StateCounters | None,
    receipts: ReceiptsView | None = None,
) -> Snapshot:
    """The snapshot of one poll; reads its inputs, changes none of them."""
    return Snapshot(
        sequence=sequence,
        ready=ready,
        nvml_up=devices.backend_up,
        nvml_reason=devices.reason,
        gpus=tuple(_gpu_view(devices, accounting, ledger, uuid) for uuid in devices.uuids),
        workloads=_workload_views(devices, accounting, ledger),
        teams=tuple(
            TeamView(team, t.energy_mj / 1000.0, t.grams, t.embodied_grams, t.cost)
            for team, t in sorted(ledger.teams.items())
        ),
        carbon=carbon,
        sources=sources,
        nvml_errors=devices.errors,
        dropped_series=ledger.dropped_series,
        poll=poll,
        state=state,
        receipts=receipts,
    )


def _gpu_view(devices: DeviceState, accounting: AccountingState, ledger: Ledger, uuid: str) -> GpuView:
    reading = devices.latest.get(uuid)
    totals = ledger.gpus.get(uuid)
    up = devices.up.get(uuid, False) and reading is not None
    live = reading if up else None  # never export stale gauges for a lost GPU
    return GpuView(
        index=reading.index if reading else devices.uuids.index(uuid),
        uuid=uuid,
        model=reading.name if reading else UNKNOWN,
        driver_version=(reading.driver_version if reading else None) or UNKNOWN,
        mig_mode=_mig_label(reading.mig_mode if reading else None),
        energy_source=accounting.energy_source.get(uuid, POWER_INTEGRATION),
        up=up,
        power_w=live.power_w if live else None,
        power_limit_w=live.power_limit_w if live else None,
        utilization=live.utilization if live else None,
        memory_used_bytes=live.memory_used_bytes if live else None,
        memory_total_bytes=live.memory_total_bytes if live else None,
        temperature_c=live.temperature_c if live else None,
        idle_power_w=accounting.idle_watts.get(uuid),
        energy_j=(totals.energy_mj if totals else 0) / 1000.0,
        unattributed_j=(totals.unattributed_mj if totals else 0) / 1000.0,
        retired_j=(totals.retired_mj if totals else 0) / 1000.0,
        grams=totals.grams if totals else 0.0,
        unattributed_grams=totals.unattributed_grams if totals else 0.0,
        retired_grams=totals.retired_grams if totals else 0.0,
        resets=totals.resets if totals else 0,
        energy_scope=reading.energy_scope if reading else "gpu",
        module_power_w=live.module_power_w if live else None,
    )


def _workload_views(devices: DeviceState, accounting: AccountingState, ledger: Ledger) -> tuple[WorkloadView, ...]:
    """One view per workload series. Built every poll for every series, so
    arguments go by position (cheaper than keywords; bench/poll_profile.py);
    the order is WorkloadView's field order (tests/test_poller.py checks it)."""
    index = {
        uuid: str(devices.latest[uuid].index) if uuid in devices.latest else str(i)
        for i, uuid in enumerate(devices.uuids)
    }
    mig = accounting.mig_instances
    default_team = ledger.default_team
    views = []
    for uuid, entry in ledger.workload_entries():
        c = entry.consumer
        mig_instance, mig_uuid = mig.get((uuid, c.key), _NO_MIG) if mig else _NO_MIG
        views.append(
            WorkloadView(
                index.get(uuid, ""),  # gpu
                uuid,
                c.namespace,
                c.pod,
                c.container,
                c.workload,
                c.team or default_team,
                entry.energy_mj / 1000.0,  # energy_j
                entry.grams,
                entry.power_w,
                entry.held_s,
                entry.busy_s,
                entry.embodied_grams,
                entry.cost,
                entry.holding,
                mig_instance,
                mig_uuid,
                c.key,
                entry.idle_mj / 1000.0,  # idle_j
            )
        )
    return tuple(views)


_NO_MIG = ("", "")


def _mig_label(mode: bool | None) -> str:
    return UNKNOWN if mode is None else ("enabled" if mode else "disabled")
