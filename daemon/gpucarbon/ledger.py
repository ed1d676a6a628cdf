"""Running totals: what every GPU measured and where each millijoule went.

Energy is kept in integer mJ so that, for every GPU,
    sum(workload mJ) + retired mJ + unattributed mJ == measured mJ
holds exactly; emissions (floats) follow the same split.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, NamedTuple

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
class GpuCharge:
    """What one GPU measured in one interval, priced."""

    energy_mj: int
    grams: float
    unattributed_mj: int
    unattributed_grams: float
    reset: bool = False  # the energy counter dropped: a driver reload


class Share(NamedTuple):
    """One consumer's part of one interval, every figure already split and priced.
    A NamedTuple: one is built per holder per GPU per poll, and a frozen
    dataclass's __init__ sets each field through object.__setattr__."""

    consumer: Consumer
    energy_mj: int
    grams: float
    embodied_grams: float
    cost: float
    held_s: float
    busy_s: float
    power_w: float  # attributed average power over the interval
    idle_mj: int = 0  # the part of energy_mj that was its share of the GPU's idle draw


@dataclass(frozen=True, slots=True)
class IntervalCharge:
    """Everything to book for one GPU's interval (made by accounting.price_charge)."""

    uuid: str
    gpu: GpuCharge
    shares: tuple[Share, ...]


class Ledger:
    """Books what it is handed; splits nothing. Totals are read through
    read-only views; only book, mark_gpu_gap, count_reset, expire and restore
    change them."""

    def __init__(self, max_workload_series: int, default_team: str) -> None:
        self.max_workload_series = max_workload_series
        self.default_team = default_team
        self._gpus: dict[str, GpuTotals] = {}
        self._workloads: dict[tuple[str, str], WorkloadTotals] = {}
        self._teams: dict[str, TeamTotals] = {}
        self._dropped_series = 0
        self._folded: set[tuple[str, str]] = set()
        # GPU -> the entries its last booking marked holding. Only these can be
        # holding (nothing else sets it), so releasing them releases the GPU
        # without scanning every series of the node for each GPU each poll.
        self._held: dict[str, list[WorkloadTotals]] = {}

    @property
    def gpus(self) -> Mapping[str, GpuTotals]:
        return MappingProxyType(self._gpus)

    @property
    def workloads(self) -> Mapping[tuple[str, str], WorkloadTotals]:
        return MappingProxyType(self._workloads)

    @property
    def teams(self) -> Mapping[str, TeamTotals]:
        return MappingProxyType(self._teams)

    @property
    def dropped_series(self) -> int:
        """Label sets folded into the overflow series by the series cap."""
        return self._dropped_series

    def book(self, charge: IntervalCharge, now: float) -> None:
        gpu = self._gpus.get(charge.uuid)
        if gpu is None:
            gpu = self._gpus[charge.uuid] = GpuTotals()
        gpu.energy_mj += charge.gpu.energy_mj
        gpu.grams += charge.gpu.grams
        gpu.resets += int(charge.gpu.reset)
        gpu.unattributed_mj += charge.gpu.unattributed_mj
        gpu.unattributed_grams += charge.gpu.unattributed_grams
        self._release(charge.uuid)
        self._held[charge.uuid] = [self._book_share(charge.uuid, share, now) for share in charge.shares]

    def count_reset(self, uuid: str) -> None:
        """The driver reloaded while the daemon was down (e.g. a reboot)."""
        self._gpus.setdefault(uuid, GpuTotals()).resets += 1

    def _book_share(self, uuid: str, share: Share, now: float) -> WorkloadTotals:
        consumer = share.consumer
        entry = self._workloads.get((uuid, consumer.key))
        if entry is None or entry.consumer is not consumer or consumer.aliases:
            # New, relabelled or aliased: _entry decides. Otherwise (a series
            # booked again by the same consumer, every poll) it would change nothing.
            entry = self._entry(uuid, consumer)
        entry.energy_mj += share.energy_mj
        entry.idle_mj += share.idle_mj
        entry.grams += share.grams
        entry.held_s += share.held_s
        entry.busy_s += share.busy_s
        entry.power_w = share.power_w
        entry.embodied_grams += share.embodied_grams
        entry.cost += share.cost
        entry.holding = True
        entry.last_active = now
        team_name = consumer.team or self.default_team
        team = self._teams.get(team_name)
        if team is None:  # not setdefault: that would build a TeamTotals per share
            team = self._teams[team_name] = TeamTotals()
        team.energy_mj += share.energy_mj
        team.grams += share.grams
        team.embodied_grams += share.embodied_grams
        team.cost += share.cost
        return entry

    def _entry(self, uuid: str, consumer: Consumer) -> WorkloadTotals:
        key = (uuid, consumer.key)
        entry = self._workloads.get(key)
        if entry is not None:
            if consumer.key != OVERFLOW_KEY and entry.consumer is not consumer:
                relabelled = entry.consumer.labels() != consumer.labels()
                entry.consumer = consumer  # labels improve as metadata arrives
                if relabelled:
                    self._fold_same_labels(uuid, consumer.key, entry)
            self._fold_aliases(uuid, consumer, entry)
            return entry
        if len(self._workloads) >= self.max_workload_series:
            if key not in self._folded:
                # Count each label set once; the memory of which ones were
                # counted is bounded, so past that an old one may count again.
                if len(self._folded) >= MAX_FOLDED_REMEMBERED:
                    self._folded.clear()
                self._folded.add(key)
                self._dropped_series += 1
            key = (uuid, OVERFLOW_KEY)
            entry = self._workloads.get(key)
            if entry is None:
                entry = self._workloads[key] = WorkloadTotals(OVERFLOW)
            return entry
        entry = self._workloads[key] = WorkloadTotals(consumer)
        self._fold_aliases(uuid, consumer, entry)
        self._fold_same_labels(uuid, consumer.key, entry)
        return entry

    def _fold_same_labels(self, uuid: str, key: str, entry: WorkloadTotals) -> None:
        """One series per label set: a pod recreated under the same namespace
        and name (StatefulSet pod, retried Job pod) is a new consumer (new UID)
        with the labels of the old one, which may still be within retention.
        Two series with one label set would be refused by Prometheus as
        duplicate samples, so the older one is folded into this one: the series
        continues from the old total and stays monotonic (docs/metrics.md)."""
        labels = entry.consumer.labels()
        for other_key, other in list(self._workloads.items()):
            if other_key[0] == uuid and other_key[1] != key and other.consumer.labels() == labels:
                del self._workloads[other_key]
                _add_totals(entry, other)

    def _fold_aliases(self, uuid: str, consumer: Consumer, entry: WorkloadTotals) -> None:
        """Move series booked under the consumer's provisional keys into its
        final one, so its energy continues under the final labels. Team totals
        stay where they were booked (team counters never decrease)."""
        for alias in consumer.aliases:
            old = self._workloads.pop((uuid, alias), None)
            if old is not None:
                _add_totals(entry, old)

    def _release(self, uuid: str) -> None:
        """Nobody holds the GPU until this interval's shares are booked (a
        series booked again is marked holding again, with its new power)."""
        for entry in self._held.pop(uuid, ()):
            entry.holding = False
            entry.power_w = 0.0

    def mark_gpu_gap(self, uuid: str) -> None:
        """The GPU could not be read: nobody is known to hold it now."""
        self._gpus.setdefault(uuid, GpuTotals())
        self._release(uuid)

    def expire(self, now: float, retention_s: float) -> int:
        """Remove series idle longer than the retention; fold them into their
        GPU's retired totals so the per-GPU sum still holds. Returns how many."""
        expired = [
            key for key, entry in self._workloads.items() if not entry.holding and now - entry.last_active > retention_s
        ]
        for key in expired:
            entry = self._workloads.pop(key)
            gpu = self._gpus.setdefault(key[0], GpuTotals())
            gpu.retired_mj += entry.energy_mj
            gpu.retired_grams += entry.grams
        return len(expired)

    def workload_entries(self) -> Iterable[tuple[str, WorkloadTotals]]:
        return ((uuid, entry) for (uuid, _), entry in self._workloads.items())

    # --- checkpoints --------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able totals (the checkpoint payload's "ledger")."""
        return {
            "gpus": {uuid: vars(g).copy() for uuid, g in self._gpus.items()},
            "workloads": [
                {
                    "uuid": uuid,
                    "key": key,
                    "labels": list(e.consumer.labels()),
                    **{f: getattr(e, f) for f in _WORKLOAD_NUMBERS},
                    "idle_mj": e.idle_mj,
                }
                for (uuid, key), e in self._workloads.items()
            ],
            "teams": {team: vars(t).copy() for team, t in self._teams.items()},
            "dropped_series": self._dropped_series,
        }

    def restore(self, data: dict[str, Any], now: float) -> None:
        """Load totals saved by to_dict. Raises ValueError/TypeError/KeyError
        on a payload of the wrong shape; the ledger is only changed on success.
        Restored workloads are not holding; their retention restarts at `now`."""
        gpus = {uuid: GpuTotals(**_numbers(g, GpuTotals)) for uuid, g in data["gpus"].items()}
        workloads = {}
        for item in data["workloads"]:
            namespace, pod, container, workload, team = (str(v) for v in item["labels"])
            consumer = Consumer(str(item["key"]), namespace, pod, container, workload, team)
            entry = WorkloadTotals(consumer)
            for name in _WORKLOAD_NUMBERS:
                setattr(entry, name, _number(item[name], name))
            entry.idle_mj = int(_number(item.get("idle_mj", 0), "idle_mj"))  # absent in older checkpoints
            entry.energy_mj = int(entry.energy_mj)
            entry.last_active = now
            workloads[(str(item["uuid"]), consumer.key)] = entry
        teams = {str(team): TeamTotals(**_numbers(t, TeamTotals)) for team, t in data["teams"].items()}
        dropped = int(data.get("dropped_series", 0))
        self._gpus, self._workloads, self._teams, self._dropped_series = gpus, workloads, teams, dropped
        self._held = {}  # restored series hold nothing


_WORKLOAD_NUMBERS = ("energy_mj", "grams", "held_s", "busy_s", "embodied_grams", "cost")


def _add_totals(entry: WorkloadTotals, old: WorkloadTotals) -> None:
    """Move `old`'s cumulative totals into `entry` (gauges stay `entry`'s)."""
    entry.energy_mj += old.energy_mj
    entry.idle_mj += old.idle_mj
    entry.grams += old.grams
    entry.held_s += old.held_s
    entry.busy_s += old.busy_s
    entry.embodied_grams += old.embodied_grams
    entry.cost += old.cost
    entry.last_active = max(entry.last_active, old.last_active)


def _numbers(raw: dict[str, Any], kind: type) -> dict[str, Any]:
    types = {f.name: f.type for f in dataclasses.fields(kind)}
    if set(raw) - set(types):
        raise ValueError(f"unknown fields {sorted(set(raw) - set(types))} in {kind.__name__}")
    return {name: (int if types[name] in ("int", int) else float)(_number(value, name)) for name, value in raw.items()}


def _number(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or value < 0:
        raise ValueError(f"{name}: {value!r} is not a non-negative number")
    return value
