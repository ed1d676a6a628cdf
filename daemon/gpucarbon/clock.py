"""Injected time. Durations come from a monotonic clock (a wall clock set
backwards must not produce negative intervals); timestamps for humans from wall
time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

# An awaitable pause, seconds (asyncio.sleep, or a fake that returns at once).
Sleep = Callable[[float], Awaitable[None]]


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards."""

    def wall(self) -> float:
        """Unix time, seconds."""

    async def sleep(self, seconds: float) -> None:
        """Pause the calling task (real seconds: the event loop's own clock)."""


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class ScaledClock:
    """Runs `speed` times faster than `base` from the moment it is made, so a
    simulated day can be previewed in minutes. Wall time advances at the same
    rate, so carbon timestamps stay consistent with the simulated intervals."""

    def __init__(self, base: Clock, speed: float) -> None:
        self._base = base
        self._speed = speed
        self._mono0 = base.monotonic()
        self._wall0 = base.wall()

    def monotonic(self) -> float:
        return self._mono0 + (self._base.monotonic() - self._mono0) * self._speed

    def wall(self) -> float:
        return self._wall0 + (self._base.monotonic() - self._mono0) * self._speed

    async def sleep(self, seconds: float) -> None:
        await self._base.sleep(seconds / self._speed)


class ManualClock:
    """A clock tests move by hand."""

    def __init__(self, start: float = 1000.0, wall_start: float = 1_700_000_000.0) -> None:
        self._mono = start
        self._wall = wall_start

    def monotonic(self) -> float:
        return self._mono

    def wall(self) -> float:
        return self._wall

    async def sleep(self, seconds: float) -> None:
        """Moves the clock instead of waiting, then lets other tasks run."""
        self.advance(seconds)
        await asyncio.sleep(0)

    def advance(self, seconds: float) -> None:
        self._mono += seconds
        self._wall += seconds

    def set_wall(self, wall: float) -> None:
        """Jump the wall clock alone (an operator fixing the time)."""
        self._wall = wall
