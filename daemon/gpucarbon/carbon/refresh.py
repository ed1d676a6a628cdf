"""Background refresh of a live intensity source, with retries and a fallback.

A `RefreshingProvider` owns one asyncio task that asks a `Fetcher` for the
latest value every `interval_s`. A cycle retries transient failures (timeouts,
connection errors, 5xx, 429) with exponential backoff and jitter; a 429's
Retry-After is honoured. The last good value is kept; `current()` returns it
while it is younger than `stale_after_s` and otherwise the bundled table's
figure for the zone, marked `fallback=True` and counted. Before the first
refresh cycle has ended the table figure is served too, but not counted: no live
value was expected yet, and a healthy start is not a fallback. `current()` never
does I/O, so neither a poll nor a scrape ever waits on the network.

Time comes from an injected wall clock and sleep function so tests run fast.
Nothing secret ever reaches a log line, an exception or `ProviderHealth`:
fetchers raise `FetchError`s whose text they compose themselves.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # the HTTP client loads with the first refresh, not with the daemon
    import aiohttp

from gpucarbon.backoff import Backoff
from gpucarbon.carbon.model import IntensityReading, ProviderHealth
from gpucarbon.clock import Sleep
from gpucarbon.errors import GpuCarbonError
from gpucarbon.yamlcheck import is_number

log = logging.getLogger(__name__)

WallClock = Callable[[], float]

# Reasons a fetch fails; they label the error counter.
REASON_TIMEOUT = "timeout"
REASON_CONNECTION = "connection"
REASON_SERVER_ERROR = "server_error"  # HTTP 5xx
REASON_CLIENT_ERROR = "client_error"  # HTTP 4xx other than auth and 429
REASON_RATE_LIMITED = "rate_limited"  # HTTP 429
REASON_AUTH = "auth"  # HTTP 401/403, or no credentials to send
REASON_MALFORMED = "malformed"  # not JSON, or JSON without the documented fields
REASON_UNEXPECTED = "unexpected"  # a bug in a fetcher; logged with its type

DEFAULT_TIMEOUT_S = 10.0  # per HTTP request
DEFAULT_STALE_AFTER_S = 3600.0  # a value older than this is replaced by the table

# Any live value outside this range is treated as malformed, g CO2e/kWh.
MAX_LIVE_GRAMS_PER_KWH = 5000.0
# The longest pause a Retry-After may impose, s. Without a cap a header of
# "99999999999" (or one too long for a float: inf) would park the refresh task
# for good; a server that still wants rest after a day gets asked once a day.
MAX_RETRY_AFTER_S = 86400.0


class FetchError(GpuCarbonError):
    """A fetch failed for `reason`; `detail` is safe to log (no secrets)."""

    def __init__(self, reason: str, detail: str, *, retryable: bool = True, retry_after: str | None = None) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.retryable = retryable
        self.retry_after = retry_after  # raw Retry-After header of a 429, if any


@dataclass(frozen=True, slots=True)
class LiveSample:
    """One value read from a live API."""

    grams_per_kwh: float  # g CO2e per kWh
    zone: str  # the zone the API says the value is for
    observed_at: float | None = None  # unix seconds the value is valid from, per the API


class Fetcher(Protocol):
    """Reads the latest value from one API. May raise only `FetchError`."""

    source: str  # provider name, e.g. "electricitymaps"
    signal: str  # "average" or "marginal"

    async def fetch(self, session: aiohttp.ClientSession, timeout: aiohttp.ClientTimeout) -> LiveSample: ...


@dataclass(frozen=True, slots=True)
class RefreshPolicy:
    """How often and how hard to ask. All durations in seconds."""

    interval_s: float = 600.0
    timeout_s: float = DEFAULT_TIMEOUT_S
    stale_after_s: float = DEFAULT_STALE_AFTER_S
    max_attempts: int = 3  # per refresh cycle
    backoff_base_s: float = 2.0  # first retry waits about this long, doubling after
    backoff_max_s: float = 60.0

    def __post_init__(self) -> None:
        for name in ("interval_s", "timeout_s", "stale_after_s", "backoff_base_s", "backoff_max_s"):
            value = getattr(self, name)
            if not (is_number(value) and value > 0):
                raise ValueError(f"refresh policy: {name} must be a positive number, got {value!r}")
        if not (isinstance(self.max_attempts, int) and self.max_attempts >= 1):
            raise ValueError(f"refresh policy: max_attempts must be an integer >= 1, got {self.max_attempts!r}")
        if self.stale_after_s < self.interval_s:
            raise ValueError(
                f"refresh policy: stale_after_s ({self.stale_after_s:g}) must be at least "
                f"interval_s ({self.interval_s:g}), or every value would go stale "
                f"before the next refresh"
            )


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date)."""
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None or when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now)


class RefreshingProvider:
    """A live source kept fresh in the background; `current()` never blocks."""

    def __init__(
        self,
        fetcher: Fetcher,
        policy: RefreshPolicy,
        fallback: IntensityReading,
        *,
        clock: WallClock = time.time,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self._fetcher = fetcher
        self._policy = policy
        self._fallback = replace(fallback, fallback=True)
        self._clock = clock
        self._sleep = sleep
        rng = rng if rng is not None else random.Random()
        self._backoff = Backoff(policy.backoff_base_s, policy.backoff_max_s, rng.random)
        self._session = session
        self._owns_session = session is None
        self._task: asyncio.Task[None] | None = None
        self._last: IntensityReading | None = None
        self._fetched_at: float | None = None  # wall time of the last good fetch
        self._last_cycle_ok = False
        self._cycle_ended = False  # a live value is expected once the first cycle has ended
        self._errors: dict[str, int] = {}
        self._fallbacks = 0
        self._falling_back = False
        self._next_delay = policy.interval_s

    @property
    def source(self) -> str:
        return self._fetcher.source

    @property
    def next_delay_s(self) -> float:
        """Seconds the refresh loop waits before its next cycle."""
        return self._next_delay

    def current(self) -> IntensityReading:
        if self._last is not None and not self._is_stale(self._clock()):
            self._falling_back = False
            return self._last
        if not self._cycle_ended:
            return self._fallback  # starting: the first fetch is still under way
        # Count each fall-back episode once, however often current() is called.
        if not self._falling_back:
            self._falling_back = True
            self._fallbacks += 1
        return self._fallback

    def health(self) -> ProviderHealth:
        now = self._clock()
        age = None if self._fetched_at is None else max(0.0, now - self._fetched_at)
        return ProviderHealth(
            source=self.source,
            up=self._last_cycle_ok and not self._is_stale(now),
            age_seconds=age,
            errors=dict(self._errors),
            fallbacks=self._fallbacks,
        )

    async def start(self) -> None:
        """Start the refresh task on the running loop (idempotent)."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self.run(), name=f"carbon-intensity-{self.source}")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def run(self) -> None:
        """Refresh forever; every failure is absorbed into counters and logs."""
        while True:
            await self.refresh_once()
            await self._sleep(self._next_delay)

    async def refresh_once(self) -> bool:
        """One refresh cycle with retries. True when a new value was stored."""
        try:
            return await self._refresh_cycle()
        finally:
            self._cycle_ended = True

    async def _refresh_cycle(self) -> bool:
        import aiohttp

        session = self._ensure_session()
        timeout = aiohttp.ClientTimeout(total=self._policy.timeout_s)
        for attempt in range(1, self._policy.max_attempts + 1):
            try:
                sample = await self._fetcher.fetch(session, timeout)
                self._accept(sample)
            except FetchError as error:
                wait = self._after_failure(error, attempt)
                if wait is None:
                    return False
                await self._sleep(wait)
            except Exception as error:  # a fetcher bug must not kill the refresh task
                log.error("carbon intensity %s: fetch failed unexpectedly (%s)", self.source, type(error).__name__)
                self._after_failure(FetchError(REASON_UNEXPECTED, type(error).__name__, retryable=False), attempt)
                return False
            else:
                self._last_cycle_ok = True
                self._next_delay = self._policy.interval_s
                return True
        return False  # not reached: the last attempt always returns above

    def _ensure_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            import aiohttp

            self._session = aiohttp.ClientSession()
            self._owns_session = True
        return self._session

    def _is_stale(self, now: float) -> bool:
        return self._fetched_at is None or now - self._fetched_at > self._policy.stale_after_s

    def _accept(self, sample: LiveSample) -> None:
        grams = sample.grams_per_kwh
        if not (is_number(grams) and 0.0 <= grams <= MAX_LIVE_GRAMS_PER_KWH):
            raise FetchError(REASON_MALFORMED, f"implausible intensity {grams!r} g/kWh", retryable=False)
        self._last = IntensityReading(
            grams_per_kwh=float(grams),
            zone=sample.zone,
            source=self._fetcher.source,
            signal=self._fetcher.signal,
            observed_at=sample.observed_at,
        )
        self._fetched_at = self._clock()

    def _after_failure(self, error: FetchError, attempt: int) -> float | None:
        """Count the failure; seconds to wait before retrying, or None to end the cycle."""
        self._errors[error.reason] = self._errors.get(error.reason, 0) + 1
        retry_after = parse_retry_after(error.retry_after, self._clock())
        final = not error.retryable or attempt >= self._policy.max_attempts
        wait = retry_after if retry_after is not None else self._backoff.delay(attempt - 1)
        if not final and wait <= self._policy.interval_s:
            log.info(
                "carbon intensity %s: attempt %d failed (%s), retrying in %.1f s",
                self.source,
                attempt,
                error.detail,
                wait,
            )
            return wait
        log.warning("carbon intensity %s: refresh failed (%s)", self.source, error.detail)
        self._last_cycle_ok = False
        # A server asking for more than an interval's pause gets it, up to a day.
        self._next_delay = max(self._policy.interval_s, min(retry_after or 0.0, MAX_RETRY_AFTER_S))
        return None
