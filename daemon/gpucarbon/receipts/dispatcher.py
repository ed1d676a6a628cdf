"""Tells every sink about each new receipt, off the poll loop.

The poll loop only calls `submit` (a queue put). A task then, per batch:
  1. appends to receipts.jsonl and fsyncs (in a worker thread); a failure (disk
     full, directory unwritable) is counted and logged, and the batch is kept
     and written again with the next batch or after `file_retry_s`;
  2. adds them to the in-memory ring (the endpoint);
  3. writes the log line and creates the Kubernetes Events (each bounded by
     `sink_timeout_s`), counting each success and failure;
  4. puts them in the webhook outbox, which a second task drains with backoff.
Counters: `counts()` -> (sink, result, n), rendered as gpucarbon_receipts_total.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Protocol

from gpucarbon.receipts.outbox import Outbox
from gpucarbon.receipts.store import ReceiptFile, ReceiptFileError, ReceiptRing

log = logging.getLogger(__name__)

MAX_PENDING_FILE = 10_000  # receipts held in memory while the file cannot be written


class Sink(Protocol):
    name: str

    async def send(self, receipt: dict) -> None: ...


class ReceiptDispatcher:
    def __init__(
        self,
        *,
        file: ReceiptFile | None,
        ring: ReceiptRing,
        sinks: tuple[Sink, ...] = (),
        outbox: Outbox | None = None,
        webhook: Sink | None = None,
        retry_delay: Callable[[int], float] = lambda attempt: min(300.0, 2.0**attempt),
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        file_retry_s: float = 30.0,
        sink_timeout_s: float = 15.0,
    ) -> None:
        self._file = file
        self._ring = ring
        self.ring = ring  # read by the endpoint
        self._sinks = sinks
        self._outbox = outbox if webhook is not None else None
        self._webhook = webhook
        self._retry_delay = retry_delay
        self._sleep = sleep
        self._file_retry_s = file_retry_s
        self._sink_timeout_s = sink_timeout_s
        self._queue: asyncio.Queue[dict] = asyncio.Queue()
        self._pending_file: list[dict] = []
        self._wake_webhook = asyncio.Event()
        self._counts: Counter[tuple[str, str]] = Counter()
        self._tasks: list[asyncio.Task] = []
        self._closing = False

    # --- called from the poll loop: never waits -----------------------------

    def submit(self, receipts: list[dict]) -> None:
        for receipt in receipts:
            self._queue.put_nowait(receipt)

    def counts(self) -> tuple[tuple[str, str, int], ...]:
        counts = Counter(self._counts)
        if self._outbox is not None:
            counts[("webhook", "dropped")] += self._outbox.dropped  # outbox full: oldest dropped
            counts[("outbox", "error")] += self._outbox.save_failures  # outbox file not saved
        return tuple((sink, result, n) for (sink, result), n in sorted(counts.items()))

    def written(self, receipt_id: str) -> bool:
        """Whether a receipt with this id is already in the ring (reloaded from the file)."""
        return self._ring.contains(receipt_id)

    # --- lifecycle ----------------------------------------------------------

    def load(self) -> None:
        """At start: the ring from the file, the outbox from its file."""
        if self._file is not None:
            for receipt in self._file.read_all():
                self._ring.add(receipt)
        if self._outbox is not None:
            self._outbox.load()

    async def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._deliver_forever(), name="receipts"))
        if self._webhook is not None:
            self._tasks.append(asyncio.create_task(self._webhook_forever(), name="receipts-webhook"))

    async def close(self) -> None:
        """Write what is queued to the file and the outbox, then stop."""
        self._closing = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        batch = self._drain()
        if batch or self._pending_file:
            await self._write_file(batch)
            for receipt in batch:
                self._ring.add(receipt)
                if self._outbox is not None:
                    self._outbox.put(receipt)
        closer = getattr(self._webhook, "close", None)
        if closer is not None:
            await closer()

    async def flush(self) -> None:
        """Wait until everything submitted so far went through step 1-4 (tests, shutdown)."""
        while not self._queue.empty():
            await asyncio.sleep(0.01)
        await asyncio.sleep(0)

    # --- the delivery task --------------------------------------------------

    async def _deliver_forever(self) -> None:
        while not self._closing:
            try:
                first = (
                    await asyncio.wait_for(self._queue.get(), timeout=self._file_retry_s)
                    if self._pending_file
                    else await self._queue.get()
                )
            except TimeoutError:
                first = None
            batch = ([first] if first is not None else []) + self._drain()
            await self.deliver(batch)

    def _drain(self) -> list[dict]:
        batch = []
        while not self._queue.empty():
            batch.append(self._queue.get_nowait())
        return batch

    async def deliver(self, batch: list[dict]) -> None:
        await self._write_file(batch)
        for receipt in batch:
            self._ring.add(receipt)
            self._counts[("memory", "ok")] += 1
            for sink in self._sinks:
                await self._send(sink, receipt)
            if self._outbox is not None:
                self._outbox.put(receipt)
                self._wake_webhook.set()

    async def _write_file(self, batch: list[dict]) -> None:
        if self._file is None:
            return
        pending = self._pending_file + batch
        if len(pending) > MAX_PENDING_FILE:
            lost = len(pending) - MAX_PENDING_FILE
            self._counts[("file", "dropped")] += lost
            log.error("receipts: %d receipt(s) could not be written and no longer fit in memory", lost)
            pending = pending[lost:]
        if not pending:
            return
        try:
            await asyncio.to_thread(self._file.append, pending)
        except ReceiptFileError as err:
            self._counts[("file", "error")] += len(batch) or 1
            self._pending_file = pending
            log.warning("receipts: %d receipt(s) not written, retrying: %s", len(pending), err)
            return
        self._counts[("file", "ok")] += len(pending)
        self._pending_file = []

    async def _send(self, sink: Sink, receipt: dict) -> bool:
        try:
            # asyncio.timeout, not wait_for: wait_for can swallow a cancel that
            # arrives as the send fails, and close() would wait forever.
            async with asyncio.timeout(self._sink_timeout_s):
                await sink.send(receipt)
        except asyncio.CancelledError:
            raise
        except Exception as err:  # noqa: BLE001 - one sink's failure is counted, never fatal
            self._counts[(sink.name, "error")] += 1
            log.warning("receipts: %s: receipt %s: %s", sink.name, receipt.get("id"), err or type(err).__name__)
            return False
        self._counts[(sink.name, "ok")] += 1
        return True

    async def _webhook_forever(self) -> None:
        assert self._outbox is not None and self._webhook is not None
        failures = 0
        while not self._closing:
            receipt = self._outbox.peek()
            if receipt is None:
                self._wake_webhook.clear()
                await self._wake_webhook.wait()
                continue
            if await self._send(self._webhook, receipt):
                self._outbox.done(receipt["id"])
                failures = 0
                continue
            await self._sleep(self._retry_delay(failures))
            failures += 1
