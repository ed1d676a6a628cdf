"""The bundled table of yearly average grid carbon intensity, and its provider.

`data/carbon-intensity.csv` holds one row per zone (ISO country codes, US eGRID
subregions as ``US-EGRID-<code>``, and ``WORLD``), each with its figure in
g CO2e/kWh, the year it describes, its source and its licence.
`data/cloud-regions.csv` maps cloud regions (``aws:us-east-1``) to one of
those zones. docs/carbon.md says where every figure comes from.

Lookup order: exact zone, then case-insensitive zone, then cloud region, then
the world average (flagged with `world_fallback=True`, so a typo in a zone
never silently passes for a real figure).
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources

from gpucarbon.carbon.model import FixedProvider, IntensityReading
from gpucarbon.errors import GpuCarbonError

log = logging.getLogger(__name__)

WORLD_ZONE = "WORLD"
# A grid above this is implausible (the dirtiest national grids are ~1300 g/kWh).
MAX_PLAUSIBLE_GRAMS_PER_KWH = 1500.0
TABLE_COLUMNS = ("zone", "grams_per_kwh", "year", "source", "licence", "name")
REGION_COLUMNS = ("region", "zone", "location")


class TableError(GpuCarbonError, ValueError):
    """The table data is unusable; the message names the file, row and field."""


@dataclass(frozen=True, slots=True)
class TableEntry:
    """One zone's yearly average intensity and where the figure comes from."""

    zone: str
    grams_per_kwh: float  # g CO2e per kWh
    year: int
    source: str
    licence: str
    name: str = ""


@dataclass(frozen=True, slots=True)
class TableLookup:
    """The answer to a zone lookup: the entry used and how it was found."""

    requested: str
    entry: TableEntry
    matched_by: str  # "exact", "case-insensitive", "cloud-region" or "world-fallback"

    @property
    def world_fallback(self) -> bool:
        return self.matched_by == "world-fallback"


class IntensityTable:
    """Zones -> yearly averages, plus the cloud-region -> zone map. Immutable."""

    def __init__(self, entries: Iterable[TableEntry], cloud_regions: Mapping[str, str]) -> None:
        self._by_zone: dict[str, TableEntry] = {}
        for entry in entries:
            if entry.zone in self._by_zone:
                raise TableError(f"zone {entry.zone!r} appears twice")
            self._by_zone[entry.zone] = entry
        if WORLD_ZONE not in self._by_zone:
            raise TableError(f"the table has no {WORLD_ZONE} row, which lookups fall back to")
        self._by_folded = {zone.casefold(): e for zone, e in self._by_zone.items()}
        self._regions: dict[str, str] = {}
        for region, zone in cloud_regions.items():
            if zone not in self._by_zone:
                raise TableError(f"cloud region {region!r} maps to unknown zone {zone!r}")
            self._regions[region.casefold()] = zone

    def __len__(self) -> int:
        return len(self._by_zone)

    def entries(self) -> tuple[TableEntry, ...]:
        return tuple(self._by_zone.values())

    def cloud_regions(self) -> dict[str, str]:
        return dict(self._regions)

    def lookup(self, zone: str) -> TableLookup:
        wanted = zone.strip()
        if wanted in self._by_zone:
            return TableLookup(zone, self._by_zone[wanted], "exact")
        folded = wanted.casefold()
        if folded in self._by_folded:
            return TableLookup(zone, self._by_folded[folded], "case-insensitive")
        if folded in self._regions:
            return TableLookup(zone, self._by_zone[self._regions[folded]], "cloud-region")
        return TableLookup(zone, self._by_zone[WORLD_ZONE], "world-fallback")


def parse_table_csv(text: str, origin: str) -> list[TableEntry]:
    """Rows of the intensity table; every field is checked, errors name the row."""
    reader = csv.DictReader(io.StringIO(text))
    _require_columns(reader.fieldnames, TABLE_COLUMNS, origin)
    return [_parse_entry(row, origin, line) for line, row in enumerate(reader, start=2)]


def parse_regions_csv(text: str, origin: str) -> dict[str, str]:
    reader = csv.DictReader(io.StringIO(text))
    _require_columns(reader.fieldnames, REGION_COLUMNS, origin)
    regions: dict[str, str] = {}
    for line, row in enumerate(reader, start=2):
        region, zone = (row.get("region") or "").strip(), (row.get("zone") or "").strip()
        if ":" not in region or not zone:
            raise TableError(
                f"{origin}:{line}: region must be provider:name and zone non-empty, got region={region!r} zone={zone!r}"
            )
        if region.casefold() in regions:
            raise TableError(f"{origin}:{line}: region {region!r} appears twice")
        regions[region.casefold()] = zone
    return regions


def load_bundled_table() -> IntensityTable:
    """The table shipped in the package (gpucarbon/data)."""
    data = resources.files("gpucarbon") / "data"
    table_text = (data / "carbon-intensity.csv").read_text(encoding="utf-8")
    regions_text = (data / "cloud-regions.csv").read_text(encoding="utf-8")
    return IntensityTable(
        parse_table_csv(table_text, "carbon-intensity.csv"), parse_regions_csv(regions_text, "cloud-regions.csv")
    )


def _require_columns(found: Iterable[str] | None, wanted: tuple[str, ...], origin: str) -> None:
    missing = [c for c in wanted if c not in (found or ())]
    if missing:
        raise TableError(f"{origin}: missing column(s) {', '.join(missing)}")


def _parse_entry(row: Mapping[str, str | None], origin: str, line: int) -> TableEntry:
    where = f"{origin}:{line}"
    fields = {k: (row.get(k) or "").strip() for k in TABLE_COLUMNS}
    for key in ("zone", "grams_per_kwh", "year", "source", "licence"):
        if not fields[key]:
            raise TableError(f"{where}: {key} is empty")
    try:
        grams = float(fields["grams_per_kwh"])
    except ValueError:
        raise TableError(f"{where}: grams_per_kwh {fields['grams_per_kwh']!r} is not a number") from None
    if not 0.0 <= grams <= MAX_PLAUSIBLE_GRAMS_PER_KWH:
        raise TableError(f"{where}: grams_per_kwh {grams} is outside 0..{MAX_PLAUSIBLE_GRAMS_PER_KWH:g}")
    try:
        year = int(fields["year"])
    except ValueError:
        raise TableError(f"{where}: year {fields['year']!r} is not an integer") from None
    if not 1990 <= year <= 2100:
        raise TableError(f"{where}: year {year} is implausible")
    return TableEntry(fields["zone"], grams, year, fields["source"], fields["licence"], fields["name"])


class TableProvider(FixedProvider):
    """`table` source: the bundled yearly average for one zone. No I/O after build."""

    source = "table"

    def __init__(self, lookup: TableLookup) -> None:
        super().__init__(
            IntensityReading(
                grams_per_kwh=lookup.entry.grams_per_kwh,
                zone=lookup.entry.zone,
                source=self.source,
                signal="average",
            )
        )

    @classmethod
    def for_zone(cls, table: IntensityTable, zone: str) -> TableProvider:
        lookup = table.lookup(zone)
        if lookup.world_fallback:
            log.warning(
                "carbon intensity: zone %r is not in the bundled table; using the world average %.0f g/kWh",
                zone,
                lookup.entry.grams_per_kwh,
            )
        elif lookup.matched_by == "cloud-region":
            log.info("carbon intensity: cloud region %r uses zone %s", zone, lookup.entry.zone)
        return cls(lookup)
