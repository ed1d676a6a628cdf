"""The daemon's metric families, built from the latest snapshot.

It never calls NVML or Kubernetes: collect() only reads an immutable snapshot,
so a scrape costs the same however slow the GPUs or the API server are.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol

from gpucarbon import __version__
from gpucarbon.exporter.exposition import Family
from gpucarbon.snapshot import LABELS_WORKLOAD, GpuView, Snapshot, StateCounters

GPU_LABELS = ("gpu", "uuid")


class ReasonCounts(Protocol):
    def counts(self) -> tuple[tuple[str, int], ...]: ...


class SnapshotCollector:
    """Every metric the daemon exports (bar the process_* ones) is declared here."""

    def __init__(
        self,
        latest: Callable[[], Snapshot],
        auth_failures: ReasonCounts | None = None,
        connections: ReasonCounts | None = None,
        certificate_expiry: float | None = None,
    ) -> None:
        self._latest = latest
        self._auth_failures = auth_failures
        self._connections = connections  # closed by the listener, by reason (exporter/listener.py)
        self._certificate_expiry = certificate_expiry  # Unix s, read at start (exporter/certificate.py)

    def families(self) -> Iterator[Family]:
        """Every family, in exposition order, for exposition.TextWriter."""
        snap = self._latest()
        yield from _self_metrics(snap)
        yield from _gpu_metrics(snap)
        yield from _workload_metrics(snap)
        yield from _team_metrics(snap)
        yield from _receipt_metrics(snap)
        yield from _carbon_metrics(snap)
        yield from _source_metrics(snap)
        if self._auth_failures is not None:
            yield from _auth_metrics(self._auth_failures.counts())
        if self._connections is not None:
            yield from _connection_metrics(self._connections.counts())
        if self._certificate_expiry is not None:
            expiry = _gauge(
                "gpucarbon_web_tls_certificate_expiry_timestamp_seconds",
                "Unix time the serving TLS certificate expires (notAfter), read at start.",
            )
            expiry.add_metric([], self._certificate_expiry)
            yield expiry


def _gauge(name: str, doc: str, labels=(), unit: str = "") -> Family:
    return Family(name, "gauge", doc, labels, unit)


def _counter(name: str, doc: str, labels=()) -> Family:
    # As in client_python, the family's name has no _total; its samples do.
    return Family(name.removesuffix("_total"), "counter", doc, labels)


def _self_metrics(snap: Snapshot) -> Iterator[Family]:
    build = _gauge("gpucarbon_build_info", "Build of the exporter; value is always 1.", ["version"])
    build.add_metric([__version__], 1)
    yield build
    poll = snap.poll
    if poll.count:  # before the first poll nobody knows yet: no series rather than a false 0
        nvml = _gauge("gpucarbon_nvml_up", "1 if the GPU backend (NVML or simulation) is initialised.")
        nvml.add_metric([], 1 if snap.nvml_up else 0)
        yield nvml
    errors = _counter("gpucarbon_nvml_errors_total", "NVML calls that failed, by call and error.", ["call", "error"])
    for call, error, count in snap.nvml_errors:
        errors.add_metric([call, error], count)
    yield errors
    if poll.count:
        bounds = [str(b) for b in poll.buckets] + ["+Inf"]
        hist = Family(
            "gpucarbon_poll_duration_seconds", "histogram", "Wall time of one poll of all GPUs.", unit="seconds"
        )
        hist.add_histogram(list(zip(bounds, poll.counts, strict=True)), poll.sum_s)
        yield hist
    if poll.last_poll_wall is not None:
        last = _gauge("gpucarbon_last_poll_timestamp_seconds", "Unix time the last poll finished.")
        last.add_metric([], poll.last_poll_wall)
        yield last
    dropped = _counter(
        "gpucarbon_workload_series_dropped_total",
        'Workload label sets folded into workload="overflow" by the series cap.',
    )
    dropped.add_metric([], snap.dropped_series)
    yield dropped
    if snap.state is not None:
        yield from _state_metrics(snap.state)


def _state_metrics(state: StateCounters) -> Iterator[Family]:
    for name, value in (
        ("gpucarbon_state_save_failures_total", state.save_failures),
        ("gpucarbon_state_restore_failures_total", state.restore_failures),
    ):
        family = _counter(name, f"See docs/metrics.md ({name}).")
        family.add_metric([], value)
        yield family


def _auth_metrics(counts: tuple[tuple[str, int], ...]) -> Iterator[Family]:
    family = _counter("gpucarbon_web_auth_failures_total", "Requests refused by basic auth, by reason.", ["reason"])
    for reason, count in counts:
        family.add_metric([reason], count)
    yield family


def _connection_metrics(counts: tuple[tuple[str, int], ...]) -> Iterator[Family]:
    family = _counter(
        "gpucarbon_web_connections_closed_total",
        "Connections the listener closed before a response: refused (connection cap), evicted (waiting "
        "connection closed for a new one at the cap), timed_out (no complete request in time), oversized "
        "(request head too large).",
        ["reason"],
    )
    for reason, count in counts:
        family.add_metric([reason], count)
    yield family


_GPU_GAUGES: tuple[tuple[str, str, Callable[[GpuView], float | None]], ...] = (
    (
        "gpucarbon_gpu_power_watts",
        "Power draw of the GPU (instantaneous where the GPU offers it), measured.",
        lambda g: g.power_w,
    ),
    (
        "gpucarbon_gpu_module_power_watts",
        "Power draw of the whole Grace superchip module (CPU, GPU, memory), measured; "
        'only where energy_scope="module".',
        lambda g: g.module_power_w,
    ),
    ("gpucarbon_gpu_power_limit_watts", "Enforced power limit.", lambda g: g.power_limit_w),
    (
        "gpucarbon_gpu_utilization_ratio",
        "Fraction of time a kernel ran on the GPU (0..1), measured.",
        lambda g: g.utilization,
    ),
    ("gpucarbon_gpu_memory_used_bytes", "Device memory in use.", lambda g: g.memory_used_bytes),
    ("gpucarbon_gpu_memory_total_bytes", "Device memory in total.", lambda g: g.memory_total_bytes),
    ("gpucarbon_gpu_temperature_celsius", "GPU core temperature.", lambda g: g.temperature_c),
    (
        "gpucarbon_gpu_idle_power_watts",
        "Idle draw that attribution charges to holders (configured, learned or default).",
        lambda g: g.idle_power_w,
    ),
)

_GPU_COUNTERS: tuple[tuple[str, str, Callable[[GpuView], float]], ...] = (
    ("gpucarbon_gpu_energy_joules_total", "Energy the GPU used, measured by its energy counter.", lambda g: g.energy_j),
    (
        "gpucarbon_gpu_unattributed_energy_joules_total",
        "Energy no workload held the GPU for, or spanning a gap.",
        lambda g: g.unattributed_j,
    ),
    (
        "gpucarbon_gpu_retired_energy_joules_total",
        "Energy of workload series removed after retention.",
        lambda g: g.retired_j,
    ),
    (
        "gpucarbon_gpu_emissions_grams_total",
        "Operational emissions of the GPU's energy, grams CO2e (estimated).",
        lambda g: g.grams,
    ),
    (
        "gpucarbon_gpu_unattributed_emissions_grams_total",
        "Emissions of the unattributed energy, grams CO2e.",
        lambda g: g.unattributed_grams,
    ),
    (
        "gpucarbon_gpu_retired_emissions_grams_total",
        "Emissions of retired workload series, grams CO2e.",
        lambda g: g.retired_grams,
    ),
    ("gpucarbon_gpu_energy_resets_total", "Energy counter drops (driver reloads) seen.", lambda g: g.resets),
)


def _gpu_metrics(snap: Snapshot) -> Iterator[Family]:
    info = _gauge(
        "gpucarbon_gpu_info",
        "GPU identity; value is always 1.",
        ["gpu", "uuid", "model", "driver_version", "mig_mode", "energy_source", "energy_scope"],
    )
    up = _gauge("gpucarbon_gpu_up", "1 if the GPU answered the last poll.", GPU_LABELS)
    for g in snap.gpus:
        info.add_metric(
            [str(g.index), g.uuid, g.model, g.driver_version, g.mig_mode, g.energy_source, g.energy_scope], 1
        )
        up.add_metric([str(g.index), g.uuid], 1 if g.up else 0)
    yield info
    yield up
    for name, doc, value in _GPU_GAUGES:
        family = _gauge(name, doc, GPU_LABELS)
        for g in snap.gpus:
            v = value(g)
            if v is not None:
                family.add_metric([str(g.index), g.uuid], v)
        yield family
    for name, doc, count in _GPU_COUNTERS:
        counter = _counter(name, doc, GPU_LABELS)
        for g in snap.gpus:
            counter.add_metric([str(g.index), g.uuid], count(g))
        yield counter


def _workload_metrics(snap: Snapshot) -> Iterator[Family]:
    energy = _counter(
        "gpucarbon_workload_energy_joules_total", "GPU energy attributed to the workload.", LABELS_WORKLOAD
    )
    grams = _counter(
        "gpucarbon_workload_emissions_grams_total", "Emissions of the attributed energy, g CO2e.", LABELS_WORKLOAD
    )
    power = _gauge("gpucarbon_workload_power_watts", "Attributed power over the last interval.", LABELS_WORKLOAD)
    mig = _gauge(
        "gpucarbon_workload_mig_instance_info",
        "The MIG instance a workload on a MIG board ran in; "
        "value is always 1. Board power is not repeated per instance.",
        [*LABELS_WORKLOAD, "gpu_instance", "mig_uuid"],
    )
    held = _counter("gpucarbon_workload_held_seconds_total", "Time the workload held this GPU.", LABELS_WORKLOAD)
    busy = _counter(
        "gpucarbon_workload_busy_seconds_total",
        "SM-utilization fraction times time (busy/held is utilization), estimated from samples.",
        LABELS_WORKLOAD,
    )
    alloc = _gauge("gpucarbon_gpu_allocation_info", "1 while the workload holds the GPU.", LABELS_WORKLOAD)
    embodied = _counter(
        "gpucarbon_workload_embodied_emissions_grams_total",
        "Embodied emissions of the GPU amortised over held time, g CO2e.",
        LABELS_WORKLOAD,
    )
    cost = _counter(
        "gpucarbon_workload_energy_cost_total", "Cost of the attributed energy.", LABELS_WORKLOAD + ("currency",)
    )
    currency = snap.carbon.currency
    for w in snap.workloads:
        labels = list(w.labels())
        if w.mig_instance:
            mig.add_metric(labels + [w.mig_instance, w.mig_uuid], 1)
        energy.add_metric(labels, w.energy_j)
        grams.add_metric(labels, w.grams)
        power.add_metric(labels, w.power_w)
        held.add_metric(labels, w.held_s)
        busy.add_metric(labels, w.busy_s)
        if w.holding:
            alloc.add_metric(labels, 1)
        if snap.carbon.embodied_enabled:
            embodied.add_metric(labels, w.embodied_grams)
        if currency is not None:
            cost.add_metric(labels + [currency], w.cost)
    yield from (energy, grams, power, held, busy, alloc)
    if any(w.mig_instance for w in snap.workloads):
        yield mig
    if snap.carbon.embodied_enabled:
        yield embodied
    if currency is not None:
        yield cost


def _team_metrics(snap: Snapshot) -> Iterator[Family]:
    energy = _counter("gpucarbon_team_energy_joules_total", "GPU energy attributed to the team.", ["team"])
    grams = _counter("gpucarbon_team_emissions_grams_total", "Emissions of the team's energy, g CO2e.", ["team"])
    embodied = _counter("gpucarbon_team_embodied_emissions_grams_total", "Embodied emissions, g CO2e.", ["team"])
    cost = _counter("gpucarbon_team_energy_cost_total", "Cost of the team's energy.", ["team", "currency"])
    currency = snap.carbon.currency
    for t in snap.teams:
        energy.add_metric([t.team], t.energy_j)
        grams.add_metric([t.team], t.grams)
        embodied.add_metric([t.team], t.embodied_grams)
        if currency is not None:
            cost.add_metric([t.team, currency], t.cost)
    yield energy
    yield grams
    if snap.carbon.embodied_enabled:
        yield embodied
    if currency is not None:
        yield cost


def _receipt_metrics(snap: Snapshot) -> Iterator[Family]:
    """Finished runs, from their receipts (docs/receipts.md): counted once, when a run ends."""
    view = snap.receipts
    if view is None:
        return
    runs = _counter(
        "gpucarbon_team_finished_runs_total", "Runs (pods, Slurm jobs) that ended, by outcome.", ["team", "outcome"]
    )
    energy = _counter(
        "gpucarbon_team_finished_energy_joules_total",
        "Whole-run GPU energy of runs that ended, by outcome, J.",
        ["team", "outcome"],
    )
    grams = _counter(
        "gpucarbon_team_finished_emissions_grams_total",
        "Emissions of runs that ended, by outcome, g CO2e.",
        ["team", "outcome"],
    )
    for row in view.finished:
        runs.add_metric([row.team, row.outcome], row.runs)
        energy.add_metric([row.team, row.outcome], row.energy_j)
        grams.add_metric([row.team, row.outcome], row.grams)
    repeated = _counter(
        "gpucarbon_team_repeated_energy_joules_total",
        "Energy of runs repeating a computation that already succeeded within the repeat window, J.",
        ["team"],
    )
    for team, joules in view.repeated:
        repeated.add_metric([team], joules)
    sinks = _counter(
        "gpucarbon_receipts_total", "Receipts handed to each sink, by result (ok, error, dropped).", ["sink", "result"]
    )
    for sink, result, count in view.sinks:
        sinks.add_metric([sink, result], count)
    yield from (runs, energy, grams, repeated, sinks)


def _carbon_metrics(snap: Snapshot) -> Iterator[Family]:
    carbon = snap.carbon
    pue = _gauge(
        "gpucarbon_pue_ratio", "Power usage effectiveness applied to GPU energy (configured; per zone when set)."
    )
    pue.add_metric([], carbon.pue)
    yield pue
    if carbon.intensity is not None:
        i = carbon.intensity
        gauge = _gauge(
            "gpucarbon_grid_carbon_intensity_grams_per_kwh",
            "Grid carbon intensity used for the last interval, g CO2e/kWh.",
            ["zone", "source", "signal"],
        )
        gauge.add_metric([i.zone, i.source, i.signal], i.grams_per_kwh)
        yield gauge
    up = _gauge("gpucarbon_carbon_source_up", "1 if the carbon intensity source answered recently.", ["source"])
    up.add_metric([carbon.source], 1 if carbon.source_up else 0)
    yield up
    errors = _counter(
        "gpucarbon_carbon_source_errors_total", "Carbon intensity fetch failures, by reason.", ["source", "reason"]
    )
    for reason, count in carbon.source_errors:
        errors.add_metric([carbon.source, reason], count)
    yield errors
    if carbon.age_s is not None:
        age = _gauge("gpucarbon_carbon_intensity_age_seconds", "Age of the intensity value in use.")
        age.add_metric([], carbon.age_s)
        yield age
    fallbacks = _counter("gpucarbon_carbon_fallbacks_total", "Times a stale live intensity fell back to the table.")
    fallbacks.add_metric([], carbon.fallbacks)
    yield fallbacks


def _source_metrics(snap: Snapshot) -> Iterator[Family]:
    if not snap.sources:
        return
    up = _gauge("gpucarbon_source_up", "1 if the metadata source is healthy.", ["source"])
    errors = _counter("gpucarbon_source_errors_total", "Metadata source errors, by reason.", ["source", "reason"])
    for s in snap.sources:
        up.add_metric([s.source], 1 if s.up else 0)
        for reason, count in s.errors:
            errors.add_metric([s.source, reason], count)
    yield up
    yield errors
    for s in snap.sources:
        if s.unmapped_devices is not None:
            unmapped = _gauge(
                "gpucarbon_podresources_unmapped_devices",
                "Device IDs the kubelet allocated that no GPU of this node explains, by resource "
                "name; their holders get no energy for them.",
                ["resource"],
            )
            for resource, count in s.unmapped_devices:
                unmapped.add_metric([resource], count)
            yield unmapped
