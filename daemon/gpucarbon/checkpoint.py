"""Durable counters: save the ledger every N seconds and at shutdown, restore
it at start so exported counters continue across restarts.

Energy used while the daemon was down is not lost: the saved per-GPU energy
counters become the baseline for the first read, and that interval is booked
as a gap (unattributed). If the node rebooted meanwhile (boot id changed) the
NVML counter restarted, so the baseline is dropped and a reset is counted
instead: that downtime energy is unknowable.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from gpucarbon.attribution.energy import EnergyMeters
from gpucarbon.attribution.idle import IdleModel
from gpucarbon.clock import Clock
from gpucarbon.ledger import Ledger
from gpucarbon.snapshot import StateCounters
from gpucarbon.state import CheckpointError, CheckpointStore, LoadStatus

log = logging.getLogger(__name__)
BOOT_ID_PATH = "sys/kernel/random/boot_id"  # under the procfs root


class Checkpointer:
    def __init__(
        self,
        store: CheckpointStore,
        ledger: Ledger,
        meters: EnergyMeters,
        idle: IdleModel,
        clock: Clock,
        interval_s: float,
        boot_id: str | None,
    ) -> None:
        self._store = store
        self._ledger = ledger
        self._meters = meters
        self._idle = idle
        self._clock = clock
        self._interval_s = interval_s
        self._boot_id = boot_id
        self._last_save: float | None = None
        self.save_failures = 0
        self.restore_failures = 0

    def restore(self) -> None:
        """Restore the last checkpoint, if any; a bad one is set aside and counted."""
        result = self._store.load()
        if result.status is LoadStatus.NONE:
            return
        if result.status is LoadStatus.SET_ASIDE:
            self._set_aside(result.reason or "unusable")
            return
        payload = result.payload or {}
        try:
            self._ledger.restore(payload["ledger"], self._clock.monotonic())
            counters = {str(k): int(v) for k, v in payload.get("counters", {}).items()}
            learned = {str(k): float(v) for k, v in payload.get("idle_learned", {}).items()}
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            self._set_aside(f"payload: {err}")
            return
        self._idle.restore(learned)
        same_boot = self._boot_id is not None and payload.get("boot_id") == self._boot_id
        if same_boot:
            self._meters.seed(counters)
        else:
            for uuid in counters:
                self._ledger.count_reset(uuid)
        log.info(
            "restored counters from %s (%d GPU(s), %s boot)",
            self._store.path,
            len(counters),
            "same" if same_boot else "new",
        )

    def _set_aside(self, reason: str) -> None:
        self.restore_failures += 1
        log.warning("checkpoint %s unusable, starting fresh: %s", self._store.path, reason)

    async def maybe_save(self) -> None:
        now = self._clock.monotonic()
        if self._last_save is None or now - self._last_save >= self._interval_s:
            await self.save()

    async def save(self) -> None:
        payload = {
            "ledger": self._ledger.to_dict(),
            "counters": self._meters.counters(),
            "idle_learned": dict(self._idle.learned()),
            "boot_id": self._boot_id,
        }
        self._last_save = self._clock.monotonic()
        try:
            await asyncio.to_thread(self._store.save, payload)
        except CheckpointError as err:
            self.save_failures += 1
            log.warning("checkpoint not saved: %s", err)

    def counters(self) -> StateCounters:
        return StateCounters(save_failures=self.save_failures, restore_failures=self.restore_failures)


def read_boot_id(procfs: str) -> str | None:
    try:
        return (Path(procfs) / BOOT_ID_PATH).read_text().strip() or None
    except OSError:
        return None
