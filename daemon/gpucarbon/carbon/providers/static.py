"""`static` source: one configured number for one zone."""

from __future__ import annotations

from gpucarbon.carbon.model import FixedProvider, IntensityReading
from gpucarbon.yamlcheck import is_number


class StaticProvider(FixedProvider):
    source = "static"

    def __init__(self, grams_per_kwh: float, zone: str, signal: str = "average") -> None:
        if not (is_number(grams_per_kwh) and grams_per_kwh >= 0):
            raise ValueError(f"static intensity must be a number >= 0 g/kWh, got {grams_per_kwh!r}")
        super().__init__(IntensityReading(float(grams_per_kwh), zone, self.source, signal))
