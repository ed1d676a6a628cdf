"""The poll loop: read every GPU, attribute each interval's energy, book it,
publish a new immutable snapshot. Nothing here runs on the scrape path."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Mapping

from gpucarbon.attribution.energy import EnergyMeter, Interval
from gpucarbon.attribution.idle import IdleModel
from gpucarbon.attribution.policy import Split, split_interval
from gpucarbon.carbon.model import IntensityProvider
from gpucarbon.carbon.model import ProviderHealth
from gpucarbon.clock import Clock
from gpucarbon.device.model import BackendUnavailable, GpuBackend, GpuReadError, GpuReading
from gpucarbon.identity.devices import GpuInventory
from gpucarbon.identity.model import AllocationSource, Consumer
from gpucarbon.identity.resolver import Resolver
from gpucarbon.ledger import GpuTotals, IntervalCharge, Ledger
from gpucarbon.snapshot import (
    CarbonView,
    GpuView,
    PollStats,
    Snapshot,
    SourceView,
    TeamView,
    WorkloadView,
)

log = logging.getLogger("gpucarbon.poller")

MJ_PER_KWH = 3.6e9
POLL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
REOPEN_BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)  # retries when NVML is unavailable
# Errors that say the library, not one GPU, is gone (driver unloaded or
# reloaded under us): close it and open it again, with the same backoff.
LIBRARY_ERRORS = frozenset({"Uninitialized", "DriverNotLoaded", "LibRmVersionMismatch", "LibraryNotFound"})


@dataclass(frozen=True)
class Accounting:
    """How energy becomes emissions and money; explicit values, no config tree."""

    pue: float
    retention_s: float
    intensity: IntensityProvider
    carbon_health: Callable[[], ProviderHealth]
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


@dataclass
class _PollHistogram:
    counts: list[int] = field(default_factory=lambda: [0] * (len(POLL_BUCKETS) + 1))
    count: int = 0
    sum_s: float = 0.0

    def observe(self, seconds: float) -> None:
        self.count += 1
        self.sum_s += seconds
        for i, bound in enumerate(POLL_BUCKETS):
            if seconds <= bound:
                self.counts[i] += 1
                return
        self.counts[-1] += 1

    def freeze(self, last_wall: float | None) -> PollStats:
        cumulative, running = [], 0
        for c in self.counts:
            running += c
            cumulative.append(running)
        return PollStats(POLL_BUCKETS, tuple(cumulative), self.count, self.sum_s, last_wall)


class Poller:
    def __init__(
        self,
        *,
        backend: GpuBackend,
        clock: Clock,
        resolver: Resolver,
        allocations: AllocationSource | None,
        idle: IdleModel,
        ledger: Ledger,
        accounting: Accounting,
        read_timeout_s: float,
        timer: Callable[[], float] = time.perf_counter,
        wall: Callable[[], float] = time.time,
        sources: Callable[[], tuple[SourceView, ...]] = lambda: (),
        extra_counters: Callable[[], tuple[tuple[str, int], ...]] = lambda: (),
    ) -> None:
        self._backend = backend
        self._clock = clock
        self._resolver = resolver
        self._allocations = allocations
        self._idle = idle
        self.ledger = ledger
        self._acct = accounting
        self._read_timeout_s = read_timeout_s
        self._timer = timer  # real seconds, for the daemon's own poll duration
        self._wall = wall  # real unix time, for gpucarbon_last_poll_timestamp_seconds
        self._sources = sources
        self._extra_counters = extra_counters
        self._backend_open = False
        self._reason = "not polled yet"
        self._next_open_at = 0.0
        self._open_failures = 0
        self._unannounced_failure: str | None = None
        self._uuids: tuple[str, ...] = ()
        self._meters: dict[str, EnergyMeter] = {}
        self._latest: dict[str, GpuReading] = {}
        self._up: dict[str, bool] = {}
        self._energy_source: dict[str, str] = {}
        self._inflight: dict[str, asyncio.Future] = {}
        self._nvml_errors: Counter[tuple[str, str]] = Counter()
        self._histogram = _PollHistogram()
        self._sequence = 0
        self._complete_polls = 0
        self.last_poll_monotonic: float | None = None
        self._last_poll_timer: float | None = None
        self.snapshot: Snapshot = self._build_snapshot()

    # --- one poll -----------------------------------------------------------

    async def poll(self) -> Snapshot:
        started = self._timer()
        if await self._ensure_backend():
            results = await self._read_all()
            held = self._allocations.allocations() if self._allocations is not None else {}
            for uuid in self._uuids:
                self._take(uuid, results.get(uuid), held.get(uuid, ()))
            self._complete_polls += 1
            await self._reopen_if_library_lost(results)
        self.ledger.expire(self._clock.monotonic(), self._acct.retention_s)
        self._histogram.observe(max(0.0, self._timer() - started))
        self.last_poll_monotonic = self._clock.monotonic()
        self._last_poll_timer = self._timer()
        self.snapshot = self._build_snapshot()
        return self.snapshot

    async def _ensure_backend(self) -> bool:
        if self._backend_open:
            return True
        now = self._clock.monotonic()
        if now < self._next_open_at:
            return False
        try:
            await asyncio.to_thread(self._backend.open)
            self._uuids = tuple(await asyncio.to_thread(self._backend.list_gpus))
        except BackendUnavailable as err:
            self._reason = str(err)
            delay = REOPEN_BACKOFF_S[min(self._open_failures, len(REOPEN_BACKOFF_S) - 1)]
            self._open_failures += 1
            self._next_open_at = now + delay
            if self._open_failures == 1:
                self._unannounced_failure = str(err)  # run() says it once; --once prints its own line
            return False
        self._backend_open, self._reason, self._open_failures = True, "", 0
        log.info("GPU backend open: %d GPU(s)", len(self._uuids))
        return True

    async def _reopen_if_library_lost(self, results: dict[str, GpuReading | GpuReadError]) -> None:
        lost = next((r for r in results.values() if isinstance(r, GpuReadError) and r.error in LIBRARY_ERRORS),
                    None)
        if lost is None:
            return
        self._reason = f"GPU backend lost: {lost.call}: {lost.error}"
        log.warning("%s; closing and opening it again", self._reason)
        self._backend_open = False
        self._next_open_at = self._clock.monotonic() + REOPEN_BACKOFF_S[0]
        try:
            await asyncio.to_thread(self._backend.close)
        except Exception as err:  # closing a broken library may fail; reopening decides
            log.debug("closing the GPU backend failed: %s", err)

    async def _read_all(self) -> dict[str, GpuReading | GpuReadError]:
        """Read every GPU in parallel worker threads, each bounded by the read
        timeout. A GPU whose previous read is still stuck is not read again
        (no thread pile-up); it stays marked down until that call returns."""
        started: dict[str, asyncio.Future] = {}
        results: dict[str, GpuReading | GpuReadError] = {}
        for uuid in self._uuids:
            stuck = self._inflight.get(uuid)
            if stuck is not None and not stuck.done():
                results[uuid] = GpuReadError(uuid, "read_gpu", "Timeout")
                continue
            self._inflight.pop(uuid, None)
            started[uuid] = asyncio.ensure_future(asyncio.to_thread(self._backend.read_gpu, uuid))
        if started:
            await asyncio.wait(started.values(), timeout=self._read_timeout_s)
        for uuid, future in started.items():
            if not future.done():
                self._inflight[uuid] = future
                future.add_done_callback(_swallow)
                results[uuid] = GpuReadError(uuid, "read_gpu", "Timeout")
            elif isinstance(future.exception(), GpuReadError):
                results[uuid] = future.exception()
            elif future.exception() is not None:
                err = future.exception()
                results[uuid] = GpuReadError(uuid, "read_gpu", type(err).__name__)
            else:
                results[uuid] = future.result()
        return results

    def _take(self, uuid: str, result: GpuReading | GpuReadError | None, held: tuple[Consumer, ...]) -> None:
        meter = self._meters.setdefault(uuid, EnergyMeter())
        if not isinstance(result, GpuReading):
            error = result or GpuReadError(uuid, "read_gpu", "Missing")
            self._nvml_errors[(error.call, error.error)] += 1
            if self._up.get(uuid, True):
                log.warning("GPU %s unavailable: %s: %s", uuid, error.call, error.error)
            self._up[uuid] = False
            meter.mark_missed()
            self.ledger.mark_gpu_gap(uuid)
            return
        if not self._up.get(uuid, True):
            log.info("GPU %s is back", uuid)
        self._up[uuid] = True
        for call, error in result.errors:
            self._nvml_errors[(call, error)] += 1
        self._latest[uuid] = result
        interval = meter.advance(result)
        if interval is not None:
            self._energy_source[uuid] = interval.method
            self._account(result, interval, held)

    # --- attribution of one interval ---------------------------------------

    def _account(self, reading: GpuReading, interval: Interval, held: tuple[Consumer, ...]) -> None:
        consumers, running = self._running_consumers(reading)
        for consumer in held:
            consumers.setdefault(consumer.key, consumer)
        if interval.gap:
            # Readings were missed: who held the GPU meanwhile is unknown.
            split = Split({}, interval.energy_mj, 0, 0)
        else:
            idle_w = self._idle.watts(reading.uuid, reading.name, reading.power_limit_w)
            idle_cap = int(idle_w * interval.dt_s * 1000.0)
            split = split_interval(interval.energy_mj, idle_cap, sorted(consumers), running)
            if interval.dt_s > 0:
                average_w = interval.energy_mj / 1000.0 / interval.dt_s
                self._idle.observe(reading.uuid, average_w, processes_running=bool(reading.processes))
        intensity = self._acct.intensity.current()
        grams_per_mj = self._acct.pue_for(intensity.zone) * intensity.grams_per_kwh / MJ_PER_KWH
        embodied_rate = self._acct.embodied_grams_per_s
        self.ledger.book(
            IntervalCharge(
                uuid=reading.uuid,
                interval=interval,
                split=split,
                consumers=consumers,
                busy=running,
                grams_per_mj=grams_per_mj,
                cost_per_mj=(self._acct.price_for(intensity.zone) or 0.0) / MJ_PER_KWH,
                embodied_grams=embodied_rate(reading.name) * interval.dt_s if embodied_rate else 0.0,
            ),
            self._clock.monotonic(),
        )

    def _running_consumers(self, reading: GpuReading) -> tuple[dict[str, Consumer], dict[str, float]]:
        """Consumers with a process on the GPU -> their SM-utilization share (0..1).

        NVML returns one sample per process per sampling slot, only for processes
        that were busy; a process's utilization over the interval is the sum of
        its samples divided by the number of slots seen."""
        slots = len({s.timestamp_us for s in reading.samples}) or 1
        util_by_pid: dict[int, float] = {}
        for sample in reading.samples:
            util_by_pid[sample.pid] = util_by_pid.get(sample.pid, 0.0) + sample.sm_util / slots
        consumers: dict[str, Consumer] = {}
        running: dict[str, float] = {}
        for process in reading.processes:
            consumer = self._resolver.consumer(process.pid)
            consumers[consumer.key] = consumer
            running[consumer.key] = min(1.0, running.get(consumer.key, 0.0) + util_by_pid.get(process.pid, 0.0))
        return consumers, running

    def inventory(self) -> GpuInventory:
        """The GPUs seen so far (UUID -> index, MIG device -> board), for
        normalising the kubelet's device IDs."""
        gpus = {uuid: r.index for uuid, r in self._latest.items()}
        migs = {mig: uuid for uuid, r in self._latest.items() for mig in r.mig_devices}
        return GpuInventory(gpus, migs)

    def seconds_since_poll(self) -> float | None:
        """Real seconds since the last poll finished (None before the first)."""
        return None if self._last_poll_timer is None else self._timer() - self._last_poll_timer

    # --- snapshot -----------------------------------------------------------

    @property
    def ready(self) -> bool:
        """At least one complete poll with intervals (two reads) is done."""
        return self._complete_polls >= 2 or (self._complete_polls >= 1 and not self._uuids)

    def _build_snapshot(self) -> Snapshot:
        self._sequence += 1
        health = self._acct.carbon_health()
        intensity = self._acct.intensity.current()
        return Snapshot(
            sequence=self._sequence,
            ready=self.ready,
            nvml_up=self._backend_open,
            nvml_reason=self._reason,
            gpus=tuple(self._gpu_view(uuid) for uuid in self._uuids),
            workloads=tuple(self._workload_views()),
            teams=tuple(TeamView(team, t.energy_mj / 1000.0, t.grams, t.embodied_grams, t.cost)
                        for team, t in sorted(self.ledger.teams.items())),
            carbon=CarbonView(
                intensity=intensity,
                pue=self._acct.pue_for(intensity.zone),
                source=health.source,
                source_up=health.up,
                source_errors=tuple(sorted(health.errors.items())),
                age_s=health.age_seconds,
                fallbacks=health.fallbacks,
                embodied_enabled=self._acct.embodied_grams_per_s is not None,
                currency=self._acct.currency if self._acct.costs_on else None,
            ),
            sources=self._sources(),
            nvml_errors=tuple((call, err, n) for (call, err), n in sorted(self._nvml_errors.items())),
            dropped_series=self.ledger.dropped_series,
            poll=self._histogram.freeze(self._wall() if self.last_poll_monotonic is not None else None),
            extra_counters=self._extra_counters(),
        )

    def _gpu_view(self, uuid: str) -> GpuView:
        reading = self._latest.get(uuid)
        totals = self.ledger.gpus.get(uuid)
        up = self._up.get(uuid, False) and reading is not None
        live = reading if up else None  # never export stale gauges for a lost GPU
        name = reading.name if reading else "unknown"
        limit = reading.power_limit_w if reading else None
        return GpuView(
            index=reading.index if reading else self._uuids.index(uuid),
            uuid=uuid,
            model=name,
            driver_version=(reading.driver_version if reading else None) or "unknown",
            mig_mode=_mig_label(reading.mig_mode if reading else None),
            energy_source=self._energy_source.get(uuid, "counter" if reading and reading.energy_mj is not None
                                                  else "power_integration"),
            up=up,
            power_w=live.power_w if live else None,
            power_limit_w=live.power_limit_w if live else None,
            utilization=live.utilization if live else None,
            memory_used_bytes=live.memory_used_bytes if live else None,
            memory_total_bytes=live.memory_total_bytes if live else None,
            temperature_c=live.temperature_c if live else None,
            idle_power_w=self._idle.watts(uuid, name, limit) if reading else None,
            energy_j=(totals.energy_mj if totals else 0) / 1000.0,
            unattributed_j=(totals.unattributed_mj if totals else 0) / 1000.0,
            retired_j=(totals.retired_mj if totals else 0) / 1000.0,
            grams=totals.grams if totals else 0.0,
            unattributed_grams=totals.unattributed_grams if totals else 0.0,
            retired_grams=totals.retired_grams if totals else 0.0,
            resets=totals.resets if totals else 0,
        )

    def _workload_views(self) -> list[WorkloadView]:
        index = {uuid: str(self._latest[uuid].index) if uuid in self._latest else str(i)
                 for i, uuid in enumerate(self._uuids)}
        views = []
        for uuid, entry in self.ledger.workload_entries():
            c = entry.consumer
            views.append(WorkloadView(
                gpu=index.get(uuid, ""), uuid=uuid, namespace=c.namespace, pod=c.pod, container=c.container,
                workload=c.workload, team=c.team or self.ledger.default_team,
                energy_j=entry.energy_mj / 1000.0, grams=entry.grams, power_w=entry.power_w,
                held_s=entry.held_s, busy_s=entry.busy_s, embodied_grams=entry.embodied_grams,
                cost=entry.cost, holding=entry.holding,
            ))
        return views

    # --- the loop -----------------------------------------------------------

    async def run(self, interval_s: float, stop: asyncio.Event,
                  after_poll: Callable[[], Awaitable[None]] | None = None) -> None:
        """Poll every `interval_s` real seconds (the event loop's monotonic
        clock) until `stop` is set. A poll that overruns skips the ticks it
        missed instead of bunching up."""
        loop = asyncio.get_running_loop()
        next_tick = loop.time()
        while not stop.is_set():
            try:
                await self.poll()
                self._announce_backend_failure()
                if after_poll is not None:
                    await after_poll()
            except Exception:  # a bug in one poll must not kill the daemon
                log.exception("poll failed")
            next_tick += interval_s
            now = loop.time()
            if next_tick < now:
                next_tick = now + interval_s - ((now - next_tick) % interval_s)
            try:
                await asyncio.wait_for(stop.wait(), timeout=max(0.0, next_tick - now))
            except asyncio.TimeoutError:
                pass

    def _announce_backend_failure(self) -> None:
        """Once per outage, from the loop that does the retrying."""
        if self._unannounced_failure is not None:
            log.warning("GPU backend unavailable: %s (retrying)", self._unannounced_failure)
            self._unannounced_failure = None

    def seed_counters(self, counters: Mapping[str, int]) -> None:
        """Baselines from a checkpoint: the next read books the energy used
        while the daemon was down as a gap (unattributed)."""
        for uuid, counter in counters.items():
            self._meters.setdefault(uuid, EnergyMeter()).seed(counter, missed=True)

    def count_resets(self, uuids) -> None:
        """The driver reloaded while we were down (e.g. a reboot): count a reset."""
        for uuid in uuids:
            self.ledger.gpus.setdefault(uuid, GpuTotals()).resets += 1

    def last_counters(self) -> dict[str, int]:
        return {uuid: r.energy_mj for uuid, r in self._latest.items() if r.energy_mj is not None}


def _mig_label(mode: bool | None) -> str:
    return "unknown" if mode is None else ("enabled" if mode else "disabled")


def _swallow(future: asyncio.Future) -> None:
    if not future.cancelled():
        future.exception()
