"""Running totals: what every GPU measured and where each millijoule went.

Energy is kept in integer mJ so that, for every GPU,
    sum(workload mJ) + retired mJ + unattributed mJ == measured mJ
holds exactly; emissions (floats) follow the same split.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping

from gpucarbon.attribution.energy import Interval
from gpucarbon.attribution.policy import Split, split_exact
from gpucarbon.identity.model import Consumer

OVERFLOW_KEY = "overflow"
OVERFLOW = Consumer(key=OVERFLOW_KEY, workload="overflow")
MAX_FOLDED_REMEMBERED = 100_000  # label sets remembered for counting drops once


@dataclass
class GpuTotals:
    energy_mj: int = 0
    unattributed_mj: int = 0
    retired_mj: int = 0  # energy of workload series removed after retention
    grams: float = 0.0
    unattributed_grams: float = 0.0
    retired_grams: float = 0.0
    resets: int = 0


@dataclass
class WorkloadTotals:
    consumer: Consumer
    energy_mj: int = 0
    idle_mj: int = 0  # the part of energy_mj that was its share of the GPU's idle draw
    grams: float = 0.0
    held_s: float = 0.0
    busy_s: float = 0.0
    power_w: float = 0.0
    embodied_grams: float = 0.0
    cost: float = 0.0
    holding: bool = False
    last_active: float = 0.0  # monotonic seconds of the last interval it held the GPU


@dataclass
class TeamTotals:
    energy_mj: int = 0
    grams: float = 0.0
    embodied_grams: float = 0.0
    cost: float = 0.0


@dataclass(frozen=True, slots=True)
class IntervalCharge:
    """Everything needed to book one GPU's interval."""

    uuid: str
    interval: Interval
    split: Split
    consumers: Mapping[str, Consumer]  # key -> consumer, for every key in split.parts
    busy: Mapping[str, float]  # key -> SM-busy fraction of the interval, 0..1
    grams_per_mj: float  # PUE * intensity / 3.6e9
    cost_per_mj: float = 0.0
    embodied_grams: float = 0.0  # embodied emissions of this GPU over the interval


@dataclass
class Ledger:
    max_workload_series: int
    default_team: str
    gpus: dict[str, GpuTotals] = field(default_factory=dict)
    workloads: dict[tuple[str, str], WorkloadTotals] = field(default_factory=dict)
    teams: dict[str, TeamTotals] = field(default_factory=dict)
    dropped_series: int = 0
    _folded: set[tuple[str, str]] = field(default_factory=set, repr=False)

    def book(self, charge: IntervalCharge, now: float) -> None:
        gpu = self.gpus.setdefault(charge.uuid, GpuTotals())
        energy = charge.interval.energy_mj
        gpu.energy_mj += energy
        gpu.grams += energy * charge.grams_per_mj
        gpu.resets += int(charge.interval.reset)
        gpu.unattributed_mj += charge.split.unattributed_mj
        gpu.unattributed_grams += charge.split.unattributed_mj * charge.grams_per_mj
        self._release(charge.uuid, holding=set(charge.split.parts))
        embodied = _split_embodied(charge.embodied_grams, list(charge.split.parts))
        for key, mj in charge.split.parts.items():
            consumer = charge.consumers[key]
            self._book_workload(charge, consumer, mj, embodied.get(key, 0.0), now)
            self._entry(charge.uuid, consumer).idle_mj += charge.split.idle_parts.get(key, 0)

    def _book_workload(self, charge: IntervalCharge, consumer: Consumer, mj: int, embodied_g: float,
                       now: float) -> None:
        dt = charge.interval.dt_s
        grams = mj * charge.grams_per_mj
        cost = mj * charge.cost_per_mj
        entry = self._entry(charge.uuid, consumer)
        entry.energy_mj += mj
        entry.grams += grams
        entry.held_s += dt
        entry.busy_s += min(1.0, max(0.0, charge.busy.get(consumer.key, 0.0))) * dt
        entry.power_w = mj / 1000.0 / dt if dt > 0 else 0.0
        entry.embodied_grams += embodied_g
        entry.cost += cost
        entry.holding = True
        entry.last_active = now
        team = self.teams.setdefault(consumer.team or self.default_team, TeamTotals())
        team.energy_mj += mj
        team.grams += grams
        team.embodied_grams += embodied_g
        team.cost += cost

    def _entry(self, uuid: str, consumer: Consumer) -> WorkloadTotals:
        key = (uuid, consumer.key)
        entry = self.workloads.get(key)
        if entry is not None:
            if consumer.key != OVERFLOW_KEY:
                entry.consumer = consumer  # labels improve as metadata arrives
            self._fold_aliases(uuid, consumer, entry)
            return entry
        if len(self.workloads) >= self.max_workload_series:
            if key not in self._folded:
                # Count each label set once; the memory of which ones were
                # counted is bounded, so past that an old one may count again.
                if len(self._folded) >= MAX_FOLDED_REMEMBERED:
                    self._folded.clear()
                self._folded.add(key)
                self.dropped_series += 1
            key = (uuid, OVERFLOW_KEY)
            entry = self.workloads.get(key)
            if entry is None:
                entry = self.workloads[key] = WorkloadTotals(OVERFLOW)
            return entry
        entry = self.workloads[key] = WorkloadTotals(consumer)
        self._fold_aliases(uuid, consumer, entry)
        return entry

    def _fold_aliases(self, uuid: str, consumer: Consumer, entry: WorkloadTotals) -> None:
        """Move series booked under the consumer's provisional keys into its
        final one, so its energy continues under the final labels. Team totals
        stay where they were booked (team counters never decrease)."""
        for alias in consumer.aliases:
            old = self.workloads.pop((uuid, alias), None)
            if old is None:
                continue
            entry.energy_mj += old.energy_mj
            entry.idle_mj += old.idle_mj
            entry.grams += old.grams
            entry.held_s += old.held_s
            entry.busy_s += old.busy_s
            entry.embodied_grams += old.embodied_grams
            entry.cost += old.cost

    def _release(self, uuid: str, holding: set[str]) -> None:
        for (gpu_uuid, key), entry in self.workloads.items():
            if gpu_uuid == uuid and key not in holding:
                entry.holding = False
                entry.power_w = 0.0

    def mark_gpu_gap(self, uuid: str) -> None:
        """The GPU could not be read: nobody is known to hold it now."""
        self.gpus.setdefault(uuid, GpuTotals())
        self._release(uuid, holding=set())

    def expire(self, now: float, retention_s: float) -> int:
        """Remove series idle longer than the retention; fold them into their
        GPU's retired totals so the per-GPU sum still holds. Returns how many."""
        expired = [key for key, entry in self.workloads.items()
                   if not entry.holding and now - entry.last_active > retention_s]
        for key in expired:
            entry = self.workloads.pop(key)
            gpu = self.gpus.setdefault(key[0], GpuTotals())
            gpu.retired_mj += entry.energy_mj
            gpu.retired_grams += entry.grams
        return len(expired)

    def workload_entries(self) -> Iterable[tuple[str, WorkloadTotals]]:
        return ((uuid, entry) for (uuid, _), entry in self.workloads.items())


def _split_embodied(grams: float, holders: list[str]) -> dict[str, float]:
    """Embodied emissions are shared by held time: equally among this interval's holders."""
    if grams <= 0 or not holders:
        return {}
    # split_exact works on integers; use micrograms so shares sum exactly.
    micro = split_exact(round(grams * 1e6), [1.0] * len(holders))
    return {key: ug / 1e6 for key, ug in zip(holders, micro)}


# --- checkpoints ----------------------------------------------------------


def ledger_to_dict(ledger: Ledger) -> dict:
    """Plain JSON-able totals (the checkpoint payload's "ledger")."""
    return {
        "gpus": {uuid: vars(g).copy() for uuid, g in ledger.gpus.items()},
        "workloads": [
            {"uuid": uuid, "key": key, "labels": list(e.consumer.labels()),
             **{f: getattr(e, f) for f in _WORKLOAD_NUMBERS}}
            for (uuid, key), e in ledger.workloads.items()
        ],
        "teams": {team: vars(t).copy() for team, t in ledger.teams.items()},
        "dropped_series": ledger.dropped_series,
    }


_WORKLOAD_NUMBERS = ("energy_mj", "idle_mj", "grams", "held_s", "busy_s", "embodied_grams", "cost")


def restore_ledger(ledger: Ledger, data: dict, now: float) -> None:
    """Load totals saved by ledger_to_dict. Raises ValueError/TypeError/KeyError
    on a payload of the wrong shape; the ledger is only changed on success.
    Restored workloads are not holding; their retention restarts at `now`."""
    gpus = {uuid: GpuTotals(**_numbers(g, GpuTotals)) for uuid, g in data["gpus"].items()}
    workloads = {}
    for item in data["workloads"]:
        namespace, pod, container, workload, team = (str(v) for v in item["labels"])
        consumer = Consumer(str(item["key"]), namespace, pod, container, workload, team)
        entry = WorkloadTotals(consumer, **{f: _number(item[f] if f in item or f != "idle_mj" else 0, f)
                                        for f in _WORKLOAD_NUMBERS})  # idle_mj: absent in older checkpoints
        entry.energy_mj, entry.idle_mj = int(entry.energy_mj), int(entry.idle_mj)
        entry.last_active = now
        workloads[(str(item["uuid"]), consumer.key)] = entry
    teams = {str(team): TeamTotals(**_numbers(t, TeamTotals)) for team, t in data["teams"].items()}
    dropped = int(data.get("dropped_series", 0))
    ledger.gpus, ledger.workloads, ledger.teams, ledger.dropped_series = gpus, workloads, teams, dropped


def _numbers(raw: dict, kind: type) -> dict:
    fields = kind.__dataclass_fields__
    if set(raw) - set(fields):
        raise ValueError(f"unknown fields {sorted(set(raw) - set(fields))} in {kind.__name__}")
    return {name: (int if fields[name].type in ("int", int) else float)(_number(value, name))
            for name, value in raw.items()}


def _number(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or value < 0:
        raise ValueError(f"{name}: {value!r} is not a non-negative number")
    return value
