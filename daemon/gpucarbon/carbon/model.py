"""Carbon intensity readings and the provider seam."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class IntensityReading:
    """Grid carbon intensity valid from `observed_at` (unix seconds)."""

    grams_per_kwh: float
    zone: str
    source: str  # provider name, e.g. "static", "table", "electricitymaps"
    signal: str = "average"  # "average" or "marginal"
    observed_at: float | None = None
    fallback: bool = False  # True when a stale live value was replaced by `table`


class IntensityProvider(Protocol):
    """Returns the latest known intensity without blocking (no I/O here)."""

    def current(self) -> IntensityReading: ...
