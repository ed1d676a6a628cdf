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

from gpucarbon.attribution.idle import IdleModel
from gpucarbon.clock import Clock
from gpucarbon.ledger import ledger_to_dict, restore_ledger
from gpucarbon.poller import Poller
from gpucarbon.state import CheckpointError, CheckpointStore, LoadStatus

log = logging.getLogger("gpucarbon.checkpoint")


class Checkpointer:
    def __init__(self, store: CheckpointStore, poller: Poller, idle: IdleModel, clock: Clock,
                 interval_s: float, boot_id: str | None, receipts=None) -> None:
        self._store = store
        self._poller = poller
        self._idle = idle
        self._clock = clock
        self._interval_s = interval_s
        self._boot_id = boot_id
        self._receipts = receipts  # ReceiptService: run start times, receipted runs, waste, repeats
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
            restore_ledger(self._poller.ledger, payload["ledger"], self._clock.monotonic())
            counters = {str(k): int(v) for k, v in payload.get("counters", {}).items()}
            learned = {str(k): float(v) for k, v in payload.get("idle_learned", {}).items()}
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            self._set_aside(f"payload: {err}")
            return
        self._idle.restore(learned)
        self._restore_receipts(payload.get("receipts"))
        same_boot = self._boot_id is not None and payload.get("boot_id") == self._boot_id
        if same_boot:
            self._poller.seed_counters(counters)
        else:
            self._poller.count_resets(counters.keys())
        log.info("restored counters from %s (%d GPU(s), %s boot)", self._store.path, len(counters),
                 "same" if same_boot else "new")

    def _restore_receipts(self, data: object) -> None:
        if self._receipts is None or data is None:
            return
        try:
            self._receipts.restore(data)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as err:
            # The counters and ledger stay restored; only receipt state starts fresh.
            self.restore_failures += 1
            log.warning("checkpoint %s: receipt state unusable, starting it fresh: %s", self._store.path, err)

    def _set_aside(self, reason: str) -> None:
        self.restore_failures += 1
        log.warning("checkpoint %s unusable, starting fresh: %s", self._store.path, reason)

    async def maybe_save(self) -> None:
        now = self._clock.monotonic()
        if self._last_save is None or now - self._last_save >= self._interval_s:
            await self.save()

    async def save(self) -> None:
        payload = {
            "ledger": ledger_to_dict(self._poller.ledger),
            "counters": self._poller.last_counters(),
            "idle_learned": dict(self._idle.learned()),
            "boot_id": self._boot_id,
        }
        if self._receipts is not None:
            payload["receipts"] = self._receipts.to_dict()
        self._last_save = self._clock.monotonic()
        try:
            await asyncio.to_thread(self._store.save, payload)
        except CheckpointError as err:
            self.save_failures += 1
            log.warning("checkpoint not saved: %s", err)

    def counters(self) -> tuple[tuple[str, int], ...]:
        return (("gpucarbon_state_save_failures_total", self.save_failures),
                ("gpucarbon_state_restore_failures_total", self.restore_failures))


def read_boot_id(procfs: str) -> str | None:
    try:
        return (Path(procfs) / "sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None
