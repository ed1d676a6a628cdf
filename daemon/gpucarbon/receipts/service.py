"""The receipts stage as the daemon runs it: after each poll, hand the new
snapshot to the tracker (cheap, in memory) and queue any new receipts for the
dispatcher's task. Its counters go into the next snapshot."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from gpucarbon.receipts.builder import ReceiptContext
from gpucarbon.receipts.dispatcher import ReceiptDispatcher
from gpucarbon.receipts.model import ReceiptSettings
from gpucarbon.receipts.tracker import RunTracker
from gpucarbon.snapshot import ReceiptsView, Snapshot

log = logging.getLogger(__name__)


class ReceiptService:
    def __init__(
        self,
        settings: ReceiptSettings,
        tracker: RunTracker,
        dispatcher: ReceiptDispatcher,
        *,
        node: str,
        offset_currency: str,
        wall: Callable[[], float],
        background: tuple = (),
    ) -> None:
        self._settings = settings
        self._tracker = tracker
        self.dispatcher = dispatcher
        self._node = node
        self._offset_currency = offset_currency
        self._wall = wall
        self._background = background  # objects with async run(): lookups (Slurm)
        self._tasks: list[asyncio.Task] = []
        self.failures = 0  # snapshots the tracker could not read (a bug): counted as sink "tracker"

    def after_poll(self, snap: Snapshot) -> None:
        """Called on the poll loop with the snapshot just published; never waits.
        A fault here costs receipts, never a poll."""
        try:
            self._observe(snap)
        except Exception:  # noqa: BLE001 - logged; the loop and the counters go on
            self.failures += 1
            log.exception("receipts: the snapshot could not be read for finished runs")

    def _observe(self, snap: Snapshot) -> None:
        carbon = snap.carbon
        intensity = carbon.intensity
        ctx = ReceiptContext(
            node=self._node,
            pue=carbon.pue,
            zone=intensity.zone if intensity else "",
            source=intensity.source if intensity else carbon.source,
            signal=intensity.signal if intensity else "",
            embodied_enabled=carbon.embodied_enabled,
            currency=carbon.currency,
            offset_currency=self._offset_currency,
            offset_price_per_tonne=self._settings.offset_price_per_tonne,
        )
        models = {g.uuid: g.model for g in snap.gpus}
        receipts = self._tracker.observe(snap.workloads, models, ctx, now=self._wall())
        if receipts:
            self.dispatcher.submit(receipts)

    def view(self) -> ReceiptsView:
        sinks = self.dispatcher.counts() + ((("tracker", "error", self.failures),) if self.failures else ())
        return ReceiptsView(finished=self._tracker.waste(), repeated=self._tracker.repeated(), sinks=sinks)

    # checkpoint
    def to_dict(self) -> dict:
        return self._tracker.to_dict()

    def restore(self, data: dict) -> None:
        self._tracker.restore(data)

    async def start(self) -> None:
        self.dispatcher.load()
        await self.dispatcher.start()
        for source in self._background:
            self._tasks.append(asyncio.create_task(source.run(), name=type(source).__name__))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.dispatcher.close()
