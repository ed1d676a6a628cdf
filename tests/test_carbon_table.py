"""The bundled intensity table: integrity of every row, coverage, lookup order
and the errors a broken table produces."""

from __future__ import annotations

import csv
from importlib import resources

import pytest

from gpucarbon.carbon.table import (
    MAX_PLAUSIBLE_GRAMS_PER_KWH,
    IntensityTable,
    TableEntry,
    TableError,
    TableProvider,
    load_bundled_table,
    parse_regions_csv,
    parse_table_csv,
)

EGRID_SUBREGIONS = (
    "AKGD AKMS AZNM CAMX ERCT FRCC HIMS HIOA MROE MROW NEWE NWPP NYCW NYLI NYUP PRMS "
    "RFCE RFCM RFCW RMPA SPNO SPSO SRMV SRMW SRSO SRTV SRVC"
).split()
REQUIRED_COUNTRIES = (
    "US FR DE GB IN CN JP SE NO PL AU CA BR IT ES NL KR ZA SG IE CH FI BE DK AT MX ID TW IL AE"
).split()
HEADER = "zone,grams_per_kwh,year,source,licence,name\n"


@pytest.fixture(scope="module")
def table() -> IntensityTable:
    return load_bundled_table()


def bundled_rows() -> list[dict[str, str]]:
    text = (resources.files("gpucarbon") / "data" / "carbon-intensity.csv").read_text("utf-8")
    return list(csv.DictReader(text.splitlines()))


def test_every_row_has_source_year_licence_and_a_plausible_value():
    rows = bundled_rows()
    assert len(rows) >= 80
    for row in rows:
        assert row["source"].strip() and row["licence"].strip(), row["zone"]
        assert 2019 <= int(row["year"]) <= 2030, row["zone"]
        assert 0 < float(row["grams_per_kwh"]) <= MAX_PLAUSIBLE_GRAMS_PER_KWH, row["zone"]
        assert row["licence"] in ("CC BY 4.0", "Public domain (US Government work)"), row["zone"]


def test_covers_the_world_countries_and_all_26_egrid_subregions(table):
    zones = {entry.zone for entry in table.entries()}
    assert "WORLD" in zones
    assert set(REQUIRED_COUNTRIES) <= zones
    assert {f"US-EGRID-{code}" for code in EGRID_SUBREGIONS} <= zones
    assert len([z for z in zones if len(z) == 2]) >= 40


def test_known_published_figures():
    by_zone = {row["zone"]: float(row["grams_per_kwh"]) for row in bundled_rows()}
    assert by_zone["FR"] == 56  # Ember 2023, OWID
    assert by_zone["WORLD"] == 481  # Ember Global Electricity Review 2024
    # eGRID2023 SRVC 593.079 lb/MWh * 0.45359237 g/kWh per lb/MWh
    assert by_zone["US-EGRID-SRVC"] == pytest.approx(593.079 * 0.45359237, abs=0.05)


def test_cloud_regions_of_each_provider_map_to_table_zones(table):
    regions = table.cloud_regions()
    for provider in ("aws", "gcp", "azure"):
        assert len([r for r in regions if r.startswith(provider + ":")]) >= 25, provider
    assert regions["aws:us-east-1"] == "US-EGRID-SRVC"
    assert regions["gcp:europe-west4"] == "NL"
    assert regions["azure:westeurope"] == "NL"


@pytest.mark.parametrize(
    "zone, expected_zone, matched_by",
    [
        ("FR", "FR", "exact"),
        ("US-EGRID-CAMX", "US-EGRID-CAMX", "exact"),
        ("fr", "FR", "case-insensitive"),
        ("world", "WORLD", "case-insensitive"),
        ("us-egrid-nwpp", "US-EGRID-NWPP", "case-insensitive"),
        ("aws:us-west-2", "US-EGRID-NWPP", "cloud-region"),
        ("AWS:EU-WEST-3", "FR", "cloud-region"),
        ("gcp:us-central1", "US-EGRID-MROW", "cloud-region"),
        ("azure:swedencentral", "SE", "cloud-region"),
        ("atlantis", "WORLD", "world-fallback"),
        ("aws:mars-north-1", "WORLD", "world-fallback"),
    ],
)
def test_lookup_order(table, zone, expected_zone, matched_by):
    lookup = table.lookup(zone)
    assert (lookup.entry.zone, lookup.matched_by) == (expected_zone, matched_by)
    assert lookup.world_fallback == (matched_by == "world-fallback")


def test_table_provider_reports_the_resolved_zone_and_average_signal(table, caplog):
    provider = TableProvider.for_zone(table, "azure:francecentral")
    reading = provider.current()
    assert (reading.zone, reading.grams_per_kwh, reading.source, reading.signal, reading.fallback) == (
        "FR",
        56.0,
        "table",
        "average",
        False,
    )
    TableProvider.for_zone(table, "nowhere")
    assert "'nowhere' is not in the bundled table" in caplog.text


@pytest.mark.parametrize(
    "row, message",
    [
        ("FR,abc,2023,Ember,CC BY 4.0,France", "t.csv:2: grams_per_kwh 'abc' is not a number"),
        ("FR,1600,2023,Ember,CC BY 4.0,France", "t.csv:2: grams_per_kwh 1600.0 is outside 0..1500"),
        ("FR,-1,2023,Ember,CC BY 4.0,France", "outside 0..1500"),
        ("FR,56,,Ember,CC BY 4.0,France", "t.csv:2: year is empty"),
        ("FR,56,2023,,CC BY 4.0,France", "t.csv:2: source is empty"),
        ("FR,56,2023,Ember,,France", "t.csv:2: licence is empty"),
        ("FR,56,20x3,Ember,CC BY 4.0,France", "year '20x3' is not an integer"),
    ],
)
def test_bad_rows_are_rejected_with_file_line_and_field(row, message):
    with pytest.raises(TableError, match=message.replace("(", r"\(").replace(".", r"\.")):
        parse_table_csv(HEADER + row + "\n", "t.csv")


def test_missing_columns_duplicates_and_dangling_regions_are_rejected():
    with pytest.raises(TableError, match="missing column.*licence"):
        parse_table_csv("zone,grams_per_kwh,year,source\nFR,56,2023,x\n", "t.csv")
    world = TableEntry("WORLD", 481, 2023, "s", "l")
    with pytest.raises(TableError, match="'WORLD' appears twice"):
        IntensityTable([world, world], {})
    with pytest.raises(TableError, match="unknown zone 'XX'"):
        IntensityTable([world], {"aws:x-1": "XX"})
    with pytest.raises(TableError, match="no WORLD row"):
        IntensityTable([TableEntry("FR", 56, 2023, "s", "l")], {})
    with pytest.raises(TableError, match="r.csv:2: region must be provider:name"):
        parse_regions_csv("region,zone,location\nus-east-1,FR,x\n", "r.csv")


def test_docs_list_every_bundled_zone_with_its_figure():
    from pathlib import Path

    docs = (Path(__file__).resolve().parents[1] / "docs" / "carbon.md").read_text("utf-8")
    for row in bundled_rows():
        line = f"| {row['zone']} | {row['name']} | {float(row['grams_per_kwh']):g} | {row['year']} |"
        assert line in docs, f"docs/carbon.md lacks or disagrees with the row for {row['zone']}"
