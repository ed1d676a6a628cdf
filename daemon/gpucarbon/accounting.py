"""The accountant: one poll's readings and the GPUs' consumers in, priced
interval charges booked into the ledger out.

Everything that turns a measured joule into shares happens here, once, before
booking: the energy interval (attribution/energy.py), the idle model, the split
(attribution/policy.py), emissions (PUE x grid intensity), energy cost and
embodied carbon. A new per-interval figure belongs here: price it into each
`Share` and let the ledger add it up.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol

from gpucarbon.attribution.energy import COUNTER, POWER_INTEGRATION, EnergyMeters, Interval
from gpucarbon.attribution.idle import IdleModel
from gpucarbon.attribution.policy import Split, split_equal, split_interval
from gpucarbon.attribution.sharing import InstanceShare, share_mps_server, split_mig_board
from gpucarbon.carbon.model import IntensityProvider, IntensityReading
from gpucarbon.clock import Clock
from gpucarbon.device.model import GpuReading, MigInstance
from gpucarbon.device.reader import Readings
from gpucarbon.identity.model import AllocationSource, Consumer
from gpucarbon.ledger import GpuCharge, IntervalCharge, Ledger, Share

MJ_PER_KWH = 3.6e9
MICROGRAMS_PER_GRAM = 1e6  # embodied grams are split as integer micrograms


class ConsumerResolver(Protocol):
    def consumer(self, pid: int) -> Consumer: ...

    def is_mps_server(self, pid: int) -> bool: ...


@dataclass(frozen=True)
class Rates:
    """How energy becomes emissions and money; explicit values, no config tree."""

    pue: float
    intensity: IntensityProvider
    embodied_grams_per_s: Callable[[str], float] | None = None  # GPU model -> g/s, None: off
    price_per_kwh: float | None = None
    currency: str = "USD"
    # Per grid zone overrides (the zone of the intensity in use decides).
    pue_by_zone: Mapping[str, float] = field(default_factory=dict)
    price_by_zone: Mapping[str, float] = field(default_factory=dict)

    def pue_for(self, zone: str) -> float:
        return self.pue_by_zone.get(zone, self.pue)

    def price_for(self, zone: str) -> float | None:
        return self.price_by_zone.get(zone, self.price_per_kwh)

    @property
    def costs_on(self) -> bool:
        return self.price_per_kwh is not None or bool(self.price_by_zone)

    @property
    def embodied_on(self) -> bool:
        return self.embodied_grams_per_s is not None


@dataclass(frozen=True, slots=True)
class Prices:
    """The rates in force for one interval, per mJ."""

    grams_per_mj: float  # PUE * intensity / 3.6e9
    cost_per_mj: float = 0.0

    @staticmethod
    def of(rates: Rates, intensity: IntensityReading) -> Prices:
        grams = rates.pue_for(intensity.zone) * intensity.grams_per_kwh / MJ_PER_KWH
        return Prices(grams, (rates.price_for(intensity.zone) or 0.0) / MJ_PER_KWH)


@dataclass(frozen=True, slots=True)
class AccountingState:
    """What the snapshot shows about the accounting of each GPU."""

    energy_source: Mapping[str, str]  # uuid -> COUNTER or POWER_INTEGRATION
    idle_watts: Mapping[str, float]  # uuid -> idle draw charged to holders
    # (board uuid, consumer key) -> (GPU instance id, MIG device uuid) it last ran in
    mig_instances: Mapping[tuple[str, str], tuple[str, str]] = field(default_factory=dict)


class Accountant:
    def __init__(
        self,
        *,
        resolver: ConsumerResolver,
        allocations: AllocationSource | None,
        idle: IdleModel,
        meters: EnergyMeters,
        rates: Rates,
        ledger: Ledger,
        clock: Clock,
        retention_s: float,
    ) -> None:
        self._resolver = resolver
        self._allocations = allocations
        self._idle = idle
        self._meters = meters
        self._rates = rates
        self._ledger = ledger
        self._clock = clock
        self._retention_s = retention_s
        self._energy_source: dict[str, str] = {}
        self._mig_instance: dict[tuple[str, str], tuple[str, str]] = {}

    def account(self, readings: Readings) -> None:
        """Book every GPU's interval since its previous reading, then retire
        series idle past the retention."""
        if readings.complete:
            held = self._allocations.allocations() if self._allocations is not None else {}
            for uuid in readings.uuids:
                result = readings.results[uuid]
                if isinstance(result, GpuReading):
                    self._take(result, tuple(held.get(uuid, ())))
                else:
                    self._meters.meter(uuid).mark_missed()
                    self._ledger.mark_gpu_gap(uuid)
        if self._ledger.expire(self._clock.monotonic(), self._retention_s) and self._mig_instance:
            live = self._ledger.workloads
            self._mig_instance = {k: v for k, v in self._mig_instance.items() if k in live}

    def state(self, latest: Mapping[str, GpuReading]) -> AccountingState:
        idle = {uuid: self._idle.watts(uuid, r.name, r.power_limit_w) for uuid, r in latest.items()}
        sources = {
            uuid: self._energy_source.get(uuid, COUNTER if r.energy_mj is not None else POWER_INTEGRATION)
            for uuid, r in latest.items()
        }
        return AccountingState(
            MappingProxyType(sources), MappingProxyType(idle), MappingProxyType(dict(self._mig_instance))
        )

    def _take(self, reading: GpuReading, held: tuple[Consumer, ...]) -> None:
        interval = self._meters.meter(reading.uuid).advance(reading)
        if interval is None:
            return
        self._energy_source[reading.uuid] = interval.method
        consumers, running = self._running_consumers(reading)
        for consumer in held:
            consumers.setdefault(consumer.key, consumer)
        split, busy = self._split(reading, interval, consumers, running, held)
        prices = Prices.of(self._rates, self._rates.intensity.current())
        embodied = self._embodied_grams(reading.name, interval.dt_s)
        charge = price_charge(reading.uuid, interval, split, consumers, busy, prices, embodied)
        self._ledger.book(charge, self._clock.monotonic())

    def _split(
        self,
        reading: GpuReading,
        interval: Interval,
        consumers: Mapping[str, Consumer],
        running: Mapping[str, float],
        held: tuple[Consumer, ...],
    ) -> tuple[Split, Mapping[str, float]]:
        """The split and each consumer's busy fraction of the GPU."""
        if interval.gap:
            # Readings were missed: who held the GPU meanwhile is unknown.
            return Split({}, interval.energy_mj, 0, 0), running
        idle_w = self._idle.watts(reading.uuid, reading.name, reading.power_limit_w)
        idle_cap = int(idle_w * interval.dt_s * 1000.0)
        if reading.mig_instances:
            split, running = self._split_mig(reading, interval.energy_mj, idle_cap, consumers, held)
        else:
            split = split_interval(interval.energy_mj, idle_cap, sorted(consumers), running)
        if interval.dt_s > 0:
            average_w = interval.energy_mj / 1000.0 / interval.dt_s
            self._idle.observe(reading.uuid, average_w, processes_running=bool(reading.processes))
        return split, running

    def _split_mig(
        self,
        reading: GpuReading,
        energy_mj: int,
        idle_cap: int,
        consumers: Mapping[str, Consumer],
        held: tuple[Consumer, ...],
    ) -> tuple[Split, dict[str, float]]:
        """A MIG board: energy between instances, then within each
        (attribution/sharing.py). Holders known only by allocation (the kubelet
        names the board) share the instances that have no process. Busy: the
        instance's GPM SM utilization as a share of the board's SMs."""
        board_sms = sum(i.sm_count or 0 for i in reading.mig_instances)
        keys_by_instance: list[tuple[MigInstance, list[str]]] = []
        for instance in reading.mig_instances:
            keys = sorted(
                {
                    self._resolver.consumer(p.pid).key
                    for p in instance.processes
                    if not self._resolver.is_mps_server(p.pid)
                }
            )
            keys_by_instance.append((instance, keys))
            for key in keys:
                self._mig_instance[(reading.uuid, key)] = (str(instance.gpu_instance_id), instance.uuid)
        running_keys = {key for _, keys in keys_by_instance for key in keys}
        idle_holders = sorted(c.key for c in held if c.key not in running_keys)
        shares: list[InstanceShare] = []
        busy: dict[str, float] = {}
        for instance, keys in keys_by_instance:
            shares.append(
                InstanceShare(
                    instance=str(instance.gpu_instance_id),
                    holders=keys or idle_holders,
                    running=dict.fromkeys(keys, 0.0),
                    slice_count=instance.slice_count,
                    sm_count=instance.sm_count,
                    sm_util=instance.sm_util,
                )
            )
            if keys and instance.sm_util is not None and board_sms:
                each = instance.sm_util * (instance.sm_count or 0) / board_sms / len(keys)
                for key in keys:
                    busy[key] = min(1.0, busy.get(key, 0.0) + each)
        split, _ = split_mig_board(energy_mj, idle_cap, shares)
        return split, {key: busy.get(key, 0.0) for key in consumers}

    def _embodied_grams(self, model: str, dt_s: float) -> float:
        rate = self._rates.embodied_grams_per_s
        return rate(model) * dt_s if rate is not None else 0.0

    def _running_consumers(self, reading: GpuReading) -> tuple[dict[str, Consumer], dict[str, float]]:
        """Consumers with a process on the GPU -> their SM-utilization share (0..1).

        NVML returns one sample per busy process per query (docs/nvml.md): the
        sample's utilization is that process's share of the interval, as is.
        A CUDA MPS server is never a consumer; its share goes to its clients
        (attribution/sharing.py)."""
        servers = {p.pid for p in reading.processes if self._resolver.is_mps_server(p.pid)}
        util_by_pid = {s.pid: s.sm_util for s in reading.samples}
        if servers:  # without one there is no share to move (most GPUs, every poll)
            clients = [p.pid for p in reading.processes if p.pid not in servers]
            util_by_pid = share_mps_server(util_by_pid, servers, clients)
        consumers: dict[str, Consumer] = {}
        running: dict[str, float] = {}
        for process in reading.processes:
            if process.pid in servers:
                continue
            consumer = self._resolver.consumer(process.pid)
            consumers[consumer.key] = consumer
            running[consumer.key] = min(1.0, running.get(consumer.key, 0.0) + util_by_pid.get(process.pid, 0.0))
        return consumers, running


def price_charge(
    uuid: str,
    interval: Interval,
    split: Split,
    consumers: Mapping[str, Consumer],
    busy: Mapping[str, float],
    prices: Prices,
    embodied_grams: float = 0.0,
) -> IntervalCharge:
    """One interval, every figure priced and split: what the ledger books."""
    dt = interval.dt_s
    embodied = split_embodied(embodied_grams, list(split.parts))
    grams_per_mj, cost_per_mj, idle_parts = prices.grams_per_mj, prices.cost_per_mj, split.idle_parts
    # One Share per holder per GPU per poll: by position, in Share's field order
    # (cheaper than keywords; bench/poll_profile.py).
    shares = [
        Share(
            consumers[key],
            mj,  # energy_mj
            mj * grams_per_mj,  # grams
            embodied.get(key, 0.0),  # embodied_grams
            mj * cost_per_mj,  # cost
            dt,  # held_s
            min(1.0, max(0.0, busy.get(key, 0.0))) * dt,  # busy_s
            mj / 1000.0 / dt if dt > 0 else 0.0,  # power_w
            idle_parts.get(key, 0),  # idle_mj
        )
        for key, mj in split.parts.items()
    ]
    gpu = GpuCharge(
        energy_mj=interval.energy_mj,
        grams=interval.energy_mj * prices.grams_per_mj,
        unattributed_mj=split.unattributed_mj,
        unattributed_grams=split.unattributed_mj * prices.grams_per_mj,
        reset=interval.reset,
    )
    return IntervalCharge(uuid, gpu, tuple(shares))


def split_embodied(grams: float, holders: list[str]) -> dict[str, float]:
    """Embodied emissions are shared by held time: equally among this interval's holders."""
    if grams <= 0 or not holders:
        return {}
    # split_exact works on integers; use micrograms so shares sum exactly.
    micro = split_equal(round(grams * MICROGRAMS_PER_GRAM), len(holders))
    return {key: ug / MICROGRAMS_PER_GRAM for key, ug in zip(holders, micro, strict=True)}
