"""The poll loop, and nothing else. Each tick:

    readings = reader.read()          GPUs -> frozen readings
    accountant.account(readings)      readings -> split, priced charges -> ledger
    snapshot = build_snapshot(...)    ledger + devices + carbon -> one frozen Snapshot
    resolver.next_poll()              the identity caches age by one poll
    checkpointer.maybe_save()         durable totals, every state.interval

Nothing here runs on the scrape path: the exporter renders `poller.snapshot`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from gpucarbon.accounting import Accountant, Rates
from gpucarbon.carbon.model import ProviderHealth
from gpucarbon.checkpoint import Checkpointer
from gpucarbon.device.reader import GpuReader
from gpucarbon.identity.health import HealthSnapshot
from gpucarbon.ledger import Ledger
from gpucarbon.snapshot import PollStats, ReceiptsView, Snapshot, build_snapshot, carbon_view, source_views

log = logging.getLogger(__name__)

POLL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
POLLS_TO_READY = 2  # two reads make the first interval


class PollingResolver(Protocol):
    def next_poll(self) -> None: ...

    def health(self) -> HealthSnapshot: ...


class HealthReporter(Protocol):
    def snapshot(self) -> HealthSnapshot: ...


class CarbonHealth(Protocol):
    def health(self) -> ProviderHealth: ...


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


class Receipts(Protocol):
    """Reads each new snapshot for runs that ended (receipts/service.py); never waits."""

    def after_poll(self, snapshot: Snapshot) -> None: ...

    def view(self) -> ReceiptsView: ...


class Poller:
    def __init__(
        self,
        *,
        reader: GpuReader,
        accountant: Accountant,
        ledger: Ledger,
        rates: Rates,
        carbon: CarbonHealth,
        resolver: PollingResolver,
        sources: tuple[HealthReporter, ...] = (),
        checkpointer: Checkpointer | None = None,
        receipts: Receipts | None = None,
        timer: Callable[[], float] = time.perf_counter,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._reader = reader
        self._accountant = accountant
        self._ledger = ledger
        self._rates = rates
        self._carbon = carbon
        self._resolver = resolver
        self._sources = sources
        self._checkpointer = checkpointer
        self._receipts = receipts
        self._timer = timer  # real seconds, for the daemon's own poll duration
        self._wall = wall  # real unix time, for gpucarbon_last_poll_timestamp_seconds
        self._histogram = _PollHistogram()
        self._sequence = 0
        self._complete_polls = 0
        self._has_gpus = False
        self._last_poll_timer: float | None = None
        self.snapshot: Snapshot = self._publish(last_poll_wall=None)

    async def poll(self) -> Snapshot:
        started = self._timer()
        readings = await self._reader.read()
        if readings.complete:
            self._complete_polls += 1
            self._has_gpus = bool(readings.uuids)
        self._accountant.account(readings)
        self._histogram.observe(max(0.0, self._timer() - started))
        self._last_poll_timer = self._timer()
        self.snapshot = self._publish(last_poll_wall=self._wall())
        if self._receipts is not None:
            self._receipts.after_poll(self.snapshot)
        self._resolver.next_poll()
        return self.snapshot

    def latest(self) -> Snapshot:
        """The snapshot of the last poll (what /metrics renders)."""
        return self.snapshot

    @property
    def ready(self) -> bool:
        """At least one complete poll with intervals (two reads) is done, and
        NVML has not been down for long after having been up (reader.py)."""
        polled = self._complete_polls >= POLLS_TO_READY or (self._complete_polls >= 1 and not self._has_gpus)
        return polled and not self._reader.down_too_long()

    def seconds_since_poll(self) -> float | None:
        """Real seconds since the last poll finished (None before the first)."""
        return None if self._last_poll_timer is None else self._timer() - self._last_poll_timer

    def _publish(self, last_poll_wall: float | None) -> Snapshot:
        self._sequence += 1
        devices = self._reader.state()
        health = (self._resolver.health(), *(s.snapshot() for s in self._sources))
        return build_snapshot(
            sequence=self._sequence,
            ready=self.ready,
            devices=devices,
            accounting=self._accountant.state(devices.latest),
            ledger=self._ledger,
            carbon=carbon_view(self._rates, self._rates.intensity.current(), self._carbon.health()),
            sources=source_views(health),
            poll=self._histogram.freeze(last_poll_wall),
            state=self._checkpointer.counters() if self._checkpointer is not None else None,
            receipts=self._receipts.view() if self._receipts is not None else None,
        )

    async def run(self, interval_s: float, stop: asyncio.Event) -> None:
        """Poll every `interval_s` real seconds (the event loop's monotonic
        clock) until `stop` is set. A poll that overruns skips the ticks it
        missed instead of bunching up."""
        loop = asyncio.get_running_loop()
        next_tick = loop.time()
        while not stop.is_set():
            try:
                await self.poll()
                if (outage := self._reader.take_outage_news()) is not None:
                    log.warning("GPU backend unavailable: %s (retrying)", outage)
                if self._checkpointer is not None:
                    await self._checkpointer.maybe_save()
            except Exception:  # a bug in one poll must not kill the daemon
                log.exception("poll failed")
            next_tick += interval_s
            now = loop.time()
            if next_tick < now:
                next_tick = now + interval_s - ((now - next_tick) % interval_s)
            try:
                await asyncio.wait_for(stop.wait(), timeout=max(0.0, next_tick - now))
            except TimeoutError:
                pass
