"""The GPU reader: opens the backend (again, with backoff, when it is missing
or lost) and reads every GPU in parallel, each read bounded by a timeout.

Reads run on the reader's own worker threads, one per GPU at most (a GPU whose
read hangs is not read again until it returns, so no more are ever needed),
and wake the event loop once per poll, when the last one finishes or the
timeout passes: eight `asyncio.to_thread` hand-offs cost about 0.3 ms more CPU
per poll on the 8-GPU benchmark (bench/poll_profile.py).

It knows nothing of energy attribution: it hands the loop one `Readings` per
poll and keeps what the snapshot shows about the devices (`DeviceState`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import Counter
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from gpucarbon.backoff import Backoff
from gpucarbon.clock import Clock
from gpucarbon.device.model import BackendUnavailable, GpuBackend, GpuReadError, GpuReading

log = logging.getLogger(__name__)

READ_GPU = "read_gpu"  # the `call` of errors the reader itself reports
TIMEOUT = "Timeout"
MISSING = "Missing"
NOT_POLLED = "not polled yet"
UNKNOWN = "Unknown"
REOPEN_INITIAL_S = 1.0  # first retry when NVML is unavailable, doubling
REOPEN_MAX_S = 60.0
# Errors that say the library, not one GPU, is gone (driver unloaded or
# reloaded under us): close it and open it again, with the same backoff.
LIBRARY_ERRORS = frozenset({"Uninitialized", "DriverNotLoaded", "LibRmVersionMismatch", "LibraryNotFound"})
# nvmlInit and listing GPUs can hang inside the driver (go-nvml#152): one open
# attempt may take this long; a hung attempt is not started again while it hangs.
OPEN_TIMEOUT_S = 30.0
# After having been up, NVML down this long will not come back by itself (e.g.
# "Unknown Error" once the container lost its devices: it must be recreated),
# so the daemon stops reporting ready; a driver reload is shorter.
DOWN_UNREADY_S = 120.0

Result = GpuReading | GpuReadError


@dataclass(frozen=True, slots=True)
class Readings:
    """One poll's reads: `results` has an entry for every GPU in `uuids`.
    `complete` is False when the backend could not be opened (nothing was read)."""

    complete: bool
    uuids: tuple[str, ...]
    results: Mapping[str, Result]


@dataclass(frozen=True, slots=True)
class DeviceState:
    """What the snapshot shows about the devices after a poll."""

    backend_up: bool
    reason: str  # why the backend is down ("" while up)
    down_too_long: bool  # down for DOWN_UNREADY_S after having been up: not ready
    uuids: tuple[str, ...]
    latest: Mapping[str, GpuReading]  # last good reading per GPU
    up: Mapping[str, bool]  # answered the last read
    errors: tuple[tuple[str, str, int], ...]  # (call, error, count), sorted


class GpuReader:
    def __init__(
        self, backend: GpuBackend, clock: Clock, read_timeout_s: float, backoff: Backoff | None = None
    ) -> None:
        self._backend = backend
        self._clock = clock
        self._read_timeout_s = read_timeout_s
        self._backoff = backoff or Backoff(REOPEN_INITIAL_S, REOPEN_MAX_S, jitter=False)
        self._open = False
        self._opening: asyncio.Future[tuple[str, ...]] | None = None
        self._down_since: float | None = None  # monotonic; set when NVML goes down after being up
        self._reason = NOT_POLLED
        self._next_open_at = 0.0
        self._uuids: tuple[str, ...] = ()
        self._inflight: dict[str, Future[GpuReading]] = {}  # reads still running after their timeout
        self._workers: ThreadPoolExecutor | None = None
        self._worker_count = 0
        self._latest: dict[str, GpuReading] = {}
        self._up: dict[str, bool] = {}
        self._errors: Counter[tuple[str, str]] = Counter()
        self._unannounced_outage: str | None = None

    async def read(self) -> Readings:
        if not await self._ensure_open():
            return Readings(False, (), {})
        results = await self._read_all()
        for uuid in self._uuids:
            if uuid not in results:
                results[uuid] = GpuReadError(uuid, READ_GPU, MISSING)
            self._note(uuid, results[uuid])
        await self._reopen_if_library_lost(results)
        return Readings(True, self._uuids, MappingProxyType(results))

    def state(self) -> DeviceState:
        return DeviceState(
            backend_up=self._open,
            reason=self._reason,
            down_too_long=self.down_too_long(),
            uuids=self._uuids,
            latest=MappingProxyType(dict(self._latest)),
            up=MappingProxyType(dict(self._up)),
            errors=tuple((call, err, n) for (call, err), n in sorted(self._errors.items())),
        )

    def down_too_long(self) -> bool:
        """NVML has been down DOWN_UNREADY_S since it was last up."""
        if self._open or self._down_since is None:
            return False
        return self._clock.monotonic() - self._down_since >= DOWN_UNREADY_S

    def take_outage_news(self) -> str | None:
        """Why the backend could not be opened, once per outage (then None)."""
        news, self._unannounced_outage = self._unannounced_outage, None
        return news

    def latest(self) -> Mapping[str, GpuReading]:
        """The last good reading of every GPU seen so far."""
        return MappingProxyType(self._latest)

    # --- opening ------------------------------------------------------------

    async def _ensure_open(self) -> bool:
        if self._open:
            return True
        now = self._clock.monotonic()
        if now < self._next_open_at:
            return False
        if self._opening is not None and not self._opening.done():
            self._reason = f"NVML initialisation has not answered for over {OPEN_TIMEOUT_S:g}s (hung in the driver)"
            return False
        self._opening = asyncio.ensure_future(asyncio.to_thread(self._open_and_list))
        self._opening.add_done_callback(_swallow)
        try:
            self._uuids = await asyncio.wait_for(asyncio.shield(self._opening), OPEN_TIMEOUT_S)
        except (BackendUnavailable, TimeoutError) as err:
            self._open_failed(
                str(err)
                if isinstance(err, BackendUnavailable)
                else (f"NVML initialisation did not answer within {OPEN_TIMEOUT_S:g}s (nvmlInit or GPU listing hung)"),
                now,
            )
            return False
        self._open, self._reason, self._down_since = True, "", None
        self._backoff.reset()
        log.info("GPU backend open: %d GPU(s)", len(self._uuids))
        return True

    def _open_and_list(self) -> tuple[str, ...]:
        self._backend.open()
        return tuple(self._backend.list_gpus())

    def _open_failed(self, reason: str, now: float) -> None:
        self._reason = reason
        first = self._backoff.failures == 0
        self._next_open_at = now + self._backoff.next_delay()
        if first:  # the loop that retries says so (take_outage_news); --once prints its own line
            self._unannounced_outage = reason

    async def _reopen_if_library_lost(self, results: Mapping[str, Result]) -> None:
        failed = [r for r in results.values() if isinstance(r, GpuReadError)]
        lost = next((r for r in failed if r.error in LIBRARY_ERRORS), None)
        if lost is None and failed and len(failed) == len(results) and all(r.error == UNKNOWN for r in failed):
            # Every GPU answers "Unknown Error" at once: the process has lost the
            # devices (nvidia-container-toolkit#48), not one GPU; reopening tells.
            lost = failed[0]
        if lost is None:
            return
        self._reason = f"GPU backend lost: {lost.call}: {lost.error}"
        log.warning("%s; closing and opening it again", self._reason)
        self._open = False
        self._down_since = self._clock.monotonic()
        self._next_open_at = self._clock.monotonic() + self._backoff.delay(0)
        try:
            await asyncio.to_thread(self._backend.close)
        except Exception as err:  # closing a broken library may fail; reopening decides
            log.debug("closing the GPU backend failed: %s", err)

    # --- reading ------------------------------------------------------------

    async def _read_all(self) -> dict[str, Result]:
        """Read every GPU in parallel worker threads, each bounded by the read
        timeout. A GPU whose previous read is still stuck is not read again
        (no thread pile-up); it stays marked down until that call returns."""
        started: dict[str, Future[GpuReading]] = {}
        results: dict[str, Result] = {}
        workers = self._workers_for(len(self._uuids))
        for uuid in self._uuids:
            stuck = self._inflight.get(uuid)
            if stuck is not None and not stuck.done():
                results[uuid] = GpuReadError(uuid, READ_GPU, TIMEOUT)
                continue
            self._inflight.pop(uuid, None)
            started[uuid] = workers.submit(self._backend.read_gpu, uuid)
        if started:
            await _all_done(tuple(started.values()), self._read_timeout_s)
        for uuid, future in started.items():
            results[uuid] = self._outcome(uuid, future)
        return results

    def _workers_for(self, gpus: int) -> ThreadPoolExecutor:
        """One thread per GPU at most: each GPU has at most one read running
        (a stuck one is not read again), so a read never queues behind
        another GPU's hung call. Threads start as needed and are reused."""
        if self._workers is None or self._worker_count < gpus:
            if self._workers is not None:
                self._workers.shutdown(wait=False)  # a hung read in it keeps its thread until it returns
            self._worker_count = max(1, gpus)
            self._workers = ThreadPoolExecutor(max_workers=self._worker_count, thread_name_prefix="gpu-read")
        return self._workers

    def _outcome(self, uuid: str, future: Future[GpuReading]) -> Result:
        if not future.done():
            self._inflight[uuid] = future
            return GpuReadError(uuid, READ_GPU, TIMEOUT)
        err = future.exception()
        if isinstance(err, GpuReadError):
            return err
        if err is not None:
            return GpuReadError(uuid, READ_GPU, type(err).__name__)
        return future.result()

    def _note(self, uuid: str, result: Result) -> None:
        """Count errors and log a GPU going down or coming back (once each)."""
        was_up = self._up.get(uuid, True)
        if isinstance(result, GpuReadError):
            self._errors[(result.call, result.error)] += 1
            if was_up:
                log.warning("GPU %s unavailable: %s: %s", uuid, result.call, result.error)
            self._up[uuid] = False
            return
        if not was_up:
            log.info("GPU %s is back", uuid)
        self._up[uuid] = True
        for call, error in result.errors:
            self._errors[(call, error)] += 1
        self._latest[uuid] = result


def _swallow(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


async def _all_done(futures: tuple[Future[Any], ...], timeout_s: float) -> None:
    """Wait until every worker-thread future is done or `timeout_s` passed,
    waking the event loop once (by the last read to finish) instead of once per
    future as `asyncio.wait` over `asyncio.to_thread` futures does."""
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] = loop.create_future()
    remaining = len(futures)
    lock = threading.Lock()

    def one_done(_: Future[Any]) -> None:  # runs on the worker thread that finished
        nonlocal remaining
        with lock:
            remaining -= 1
            last = remaining == 0
        if last:
            try:
                loop.call_soon_threadsafe(_wake, waiter)
            except RuntimeError:  # the loop closed while a read hung: nobody waits any more
                pass

    for future in futures:
        future.add_done_callback(one_done)
    timer = loop.call_later(timeout_s, _wake, waiter)
    try:
        await waiter
    finally:
        timer.cancel()


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
