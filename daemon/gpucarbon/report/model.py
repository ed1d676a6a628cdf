"""The report as data: frozen dataclasses and the one JSON shape every renderer
and every consuming tool reads. docs/report.md documents each field and unit.

Units: energy kWh, emissions kg CO2e, GPU time in GPU-hours, money in the
`currency` the daemon was configured with (carbon.cost), shares 0..1.
None means "not known" (the store has no such series), never zero.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

J_PER_KWH = 3_600_000.0


@dataclass(frozen=True)
class Figures:
    """What one group (or the total) used over the range."""

    energy_kwh: float  # GPU energy, measured by the GPUs' energy counters
    facility_energy_kwh: float | None  # energy_kwh x PUE (the daemon's configured PUE)
    emissions_kg: float  # operational, as the daemon computed them (PUE and grid intensity applied)
    cost: float | None  # energy cost in `currency` (daemon's carbon.cost), None if not configured
    offset_cost: float | None  # emissions_kg / 1000 x --offset-price
    gpu_hours_held: float
    gpu_hours_busy: float  # SM-utilization x held time
    busy_share: float | None  # busy / held
    idle_energy_kwh: float | None  # estimated: (held - busy) GPU-hours x mean idle power
    failed_energy_kwh: float | None  # finished runs with a failed/preempted outcome
    repeated_energy_kwh: float | None  # runs repeating an earlier run's fingerprint (every run after the first)
    energy_per_token_j: float | None = None  # inference only, when a token counter exists


@dataclass(frozen=True)
class Group(Figures):
    name: str = ""
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Day:
    start: float
    end: float
    energy_kwh: dict[str, float]  # group name -> kWh that day
    emissions_kg: dict[str, float]


@dataclass(frozen=True)
class WorkloadUse:
    namespace: str
    workload: str
    team: str
    energy_kwh: float | None = None
    gpu_hours_idle: float | None = None  # held but idle
    idle_energy_kwh: float | None = None


@dataclass(frozen=True)
class IntensitySource:
    zone: str
    source: str
    signal: str
    mean_grams_per_kwh: float


@dataclass(frozen=True)
class Run:
    """One run from the receipts, joined across the nodes it ran on."""

    id: str
    kind: str
    namespace: str
    workload: str
    team: str
    outcome: str
    started_at: float
    finished_at: float
    energy_kwh: float
    emissions_kg: float
    nodes: tuple[str, ...]
    gpus: int
    fingerprint: str | None
    repeat_of: str | None


@dataclass(frozen=True)
class RepeatGroup:
    fingerprint: str
    runs: tuple[str, ...]  # run ids, first run first
    repeated_energy_kwh: float  # every run after the first
    team: str


@dataclass(frozen=True)
class ReceiptSummary:
    files: int
    lines: int
    malformed: int
    malformed_examples: tuple[str, ...]  # "file:line: problem", at most 5
    runs: tuple[Run, ...]  # joined runs, most energy first
    repeats: tuple[RepeatGroup, ...]
    failed: tuple[Run, ...]


@dataclass(frozen=True)
class Report:
    start: float
    end: float
    by: str
    source_url: str
    groups: tuple[Group, ...]
    totals: Figures
    unattributed_energy_kwh: float
    daily: tuple[Day, ...]
    top_workloads: tuple[WorkloadUse, ...]
    top_idle: tuple[WorkloadUse, ...]
    intensity_sources: tuple[IntensitySource, ...]
    pue: float | None
    currency: str | None
    offset_price_per_tonne: float | None
    receipts: ReceiptSummary | None = None
    notes: tuple[str, ...] = ()

    @property
    def unattributed_share(self) -> float | None:
        total = self.totals.energy_kwh
        return self.unattributed_energy_kwh / total if total > 0 else None

    def group_names(self) -> list[str]:
        return [g.name for g in self.groups]


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _figures(f: Figures) -> dict[str, Any]:
    out = {k: v for k, v in asdict(f).items() if k not in ("name", "labels")}
    return out


def _run(r: Run) -> dict[str, Any]:
    out = asdict(r)
    out["started_at"], out["finished_at"], out["nodes"] = iso(r.started_at), iso(r.finished_at), list(r.nodes)
    return out


def to_json(report: Report) -> dict[str, Any]:
    """The documented JSON shape (docs/report.md, "JSON output")."""
    out: dict[str, Any] = {
        "range": {"start": iso(report.start), "end": iso(report.end), "seconds": report.end - report.start},
        "by": report.by,
        "source": report.source_url,
        "groups": [{"name": g.name, "labels": dict(g.labels), **_figures(g)} for g in report.groups],
        "unattributed_energy_kwh": report.unattributed_energy_kwh,
        "unattributed_share": report.unattributed_share,
        "totals": _figures(report.totals),
        "daily": [
            {"start": iso(d.start), "end": iso(d.end), "energy_kwh": d.energy_kwh, "emissions_kg": d.emissions_kg}
            for d in report.daily
        ],
        "top_workloads": [asdict(w) for w in report.top_workloads],
        "top_idle": [asdict(w) for w in report.top_idle],
        "intensity_sources": [asdict(s) for s in report.intensity_sources],
        "pue": report.pue,
        "currency": report.currency,
        "offset_price_per_tonne": report.offset_price_per_tonne,
        "runs": [],
        "receipts": None,
        "notes": list(report.notes),
    }
    if report.receipts is not None:
        rec = report.receipts
        out["runs"] = [_run(r) for r in rec.runs]
        out["receipts"] = {
            "files": rec.files,
            "lines": rec.lines,
            "malformed": rec.malformed,
            "malformed_examples": list(rec.malformed_examples),
            "repeats": [{**asdict(g), "runs": list(g.runs)} for g in rec.repeats],
            "failed": [r.id for r in rec.failed],
        }
    return out
