"""`static` source: one configured number for one zone."""

from __future__ import annotations

import math

from gpucarbon.carbon.model import FixedProvider, IntensityReading


class StaticProvider(FixedProvider):
    source = "static"

    def __init__(self, grams_per_kwh: float, zone: str, signal: str = "average") -> None:
        if not (isinstance(grams_per_kwh, (int, float)) and math.isfinite(grams_per_kwh)
                and grams_per_kwh >= 0):
            raise ValueError(f"static intensity must be a number >= 0 g/kWh, got {grams_per_kwh!r}")
        super().__init__(IntensityReading(float(grams_per_kwh), zone, self.source, signal))
