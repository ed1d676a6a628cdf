"""Carbon intensity readings and the provider seam."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from gpucarbon.labels import sanitise_label_value

ZONE_MAX_LEN = 64  # Electricity Maps zones are like "US-CAL-CISO"; WattTime regions similar


@dataclass(frozen=True, slots=True)
class IntensityReading:
    """Grid carbon intensity valid from `observed_at` (unix seconds)."""

    grams_per_kwh: float
    zone: str
    source: str  # provider name, e.g. "static", "table", "electricitymaps"
    signal: str = "average"  # "average" or "marginal"
    observed_at: float | None = None
    fallback: bool = False  # True when a stale live value was replaced by `table`

    def __post_init__(self) -> None:
        # zone, source and signal become labels, and the zone comes from a
        # carbon API's answer or the config: one sanitiser for all of them, here,
        # so no provider can forget it ("FR\ud800" would fail every scrape).
        for name in ("zone", "source", "signal"):
            object.__setattr__(self, name, sanitise_label_value(getattr(self, name), ZONE_MAX_LEN))


@dataclass(frozen=True, slots=True)
class ProviderHealth:
    """What the exporter shows about a provider (gpucarbon_carbon_source_up and friends)."""

    source: str
    up: bool  # the last refresh succeeded and its value is not stale
    age_seconds: float | None  # since the last good value was fetched; None: never
    errors: Mapping[str, int] = field(default_factory=dict)  # failed fetches by reason, cumulative
    fallbacks: int = 0  # episodes of serving the table instead of the live source, cumulative


class IntensityProvider(Protocol):
    """Returns the latest known intensity without blocking (no I/O here)."""

    def current(self) -> IntensityReading: ...


class FixedProvider:
    """A provider whose reading never changes after it is built (static, table):
    no task to run, nothing to release, always up."""

    source = "fixed"

    def __init__(self, reading: IntensityReading) -> None:
        self._reading = reading

    def current(self) -> IntensityReading:
        return self._reading

    def health(self) -> ProviderHealth:
        return ProviderHealth(source=self.source, up=True, age_seconds=None)

    async def start(self) -> None:
        """Nothing to refresh."""

    async def close(self) -> None:
        """Nothing to release."""
