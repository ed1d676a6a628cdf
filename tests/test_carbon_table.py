"""The bundled intensity table: integrity of every row, coverage, lookup order
and the errors a broken table produces."""

from __future__ import annotations

import csv
import subprocess
import sys
from importlib import resources
from pathlib import Path

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
        assert row["licence"] in ("CC BY 4.0", "ODbL 1.0", "Public domain (US Government work)"), row["zone"]
        upstream = {"CC BY 4.0": "Ember", "ODbL 1.0": "Electricity Maps", "Public domain (US Government work)": "eGRID"}
        assert upstream[row["licence"]] in row["source"], row["zone"]


def test_covers_the_world_countries_and_all_26_egrid_subregions(table):
    zones = {entry.zone for entry in table.entries()}
    assert "WORLD" in zones
    assert set(REQUIRED_COUNTRIES) <= zones
    assert {f"US-EGRID-{code}" for code in EGRID_SUBREGIONS} <= zones
    assert len([z for z in zones if len(z) == 2]) >= 40


def test_known_published_figures():
    rows = {row["zone"]: row for row in bundled_rows()}
    by_zone = {zone: float(row["grams_per_kwh"]) for zone, row in rows.items()}
    assert (by_zone["FR"], rows["FR"]["year"]) == (44.18, "2024")  # Ember, via CO2.js
    assert (by_zone["US"], rows["US"]["year"]) == (383.55, "2024")  # no longer the 2022 figure
    assert (by_zone["WORLD"], rows["WORLD"]["year"]) == (472.94, "2024")  # Ember "World"
    assert (by_zone["CA-QC"], rows["CA-QC"]["year"]) == (41, "2025")  # Electricity Maps yearly 2025
    # eGRID2023rev2 SRVC 596.326 lb/MWh * 0.45359237 g/kWh per lb/MWh (January 2025's 593.079 is superseded)
    assert by_zone["US-EGRID-SRVC"] == pytest.approx(596.326 * 0.45359237, abs=0.005)
    assert (by_zone["US-EGRID-CAMX"], rows["US-EGRID-CAMX"]["year"]) == (195.04, "2023")  # 429.983 lb/MWh


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
        ("gcp:northamerica-northeast1", "CA-QC", "cloud-region"),
        ("oci:iad", "US-EGRID-SRVC", "cloud-region"),
        ("ca-qc", "CA-QC", "case-insensitive"),
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
        44.18,
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


# ---- every current cloud region maps to a zone ---------------------------------

PROVIDERS = ("aws", "gcp", "azure", "oci")


def provider_regions(provider: str) -> list[dict[str, str]]:
    text = (resources.files("gpucarbon") / "data" / f"regions-{provider}.csv").read_text("utf-8")
    header = [line for line in text.splitlines() if line.startswith("#")]
    assert any(line.startswith("# source: https://") for line in header), f"regions-{provider}.csv cites no source"
    return list(csv.DictReader(line for line in text.splitlines() if not line.startswith("#")))


@pytest.mark.parametrize("provider", PROVIDERS)
def test_every_listed_region_of_a_provider_maps_to_a_zone(table, provider):
    listed = provider_regions(provider)
    assert len(listed) >= 30, provider
    unmapped = []
    for row in listed:
        names = [row["region"]] + ([row["short"]] if row.get("short") else [])
        for name in names:
            lookup = table.lookup(f"{provider}:{name}")
            if lookup.matched_by != "cloud-region" or lookup.world_fallback:
                unmapped.append(name)
    assert unmapped == [], f"{provider} regions without a zone in cloud-regions.csv: {unmapped}"


def test_the_region_map_holds_only_listed_regions(table):
    listed = {
        f"{p}:{name}".casefold()
        for p in PROVIDERS
        for row in provider_regions(p)
        for name in (row["region"], row.get("short") or row["region"])
    }
    assert set(table.cloud_regions()) - listed == set()


@pytest.mark.parametrize(
    "region, zone",
    [
        ("gcp:northamerica-northeast1", "CA-QC"),  # Montreal
        ("gcp:northamerica-northeast2", "CA-ON"),  # Toronto
        ("aws:ca-central-1", "CA-QC"),
        ("aws:ca-west-1", "CA-AB"),  # Calgary
        ("azure:canadaeast", "CA-QC"),
        ("azure:canadacentral", "CA-ON"),
        ("oci:ca-toronto-1", "CA-ON"),
        ("aws:ap-southeast-2", "AU-NSW"),  # Sydney
        ("gcp:australia-southeast2", "AU-VIC"),  # Melbourne
        ("azure:japanwest", "JP-KN"),  # Osaka
        ("gcp:asia-south2", "IN-NO"),  # Delhi
    ],
)
def test_regions_in_countries_with_split_grids_use_the_sub_national_zone(table, region, zone):
    assert table.lookup(region).entry.zone == zone


def test_quebec_is_not_read_as_canada(table):
    quebec = table.lookup("gcp:northamerica-northeast1").entry.grams_per_kwh
    canada = table.lookup("CA").entry.grams_per_kwh
    assert quebec < canada / 3


def test_sub_national_zones_cover_canadian_provinces_and_australian_states(table):
    zones = {entry.zone for entry in table.entries()}
    assert {"CA-QC", "CA-ON", "CA-BC", "CA-AB", "CA-MB", "CA-SK", "CA-NS", "CA-NB", "CA-NL", "CA-PE"} <= zones
    assert {"AU-NSW", "AU-VIC", "AU-QLD", "AU-SA", "AU-WA", "AU-TAS", "AU-NT"} <= zones


# ---- regenerating the table from the upstream files ----------------------------

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "carbon"
SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "refresh-carbon-table"
# The --egrid-release docs/carbon.md gives for the bundled eGRID rows; it is part of each row's source.
EGRID_RELEASE = "eGRID2023rev2 (June 2025; read from EPA Power Profiler data, USEPA/power-profiler 3ef5e41)"


def run_refresh(tmp_path: Path, zones: str, *extra: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "zones.csv").write_text("# test\nzone,upstream,key,name\n" + zones, "utf-8")
    table = tmp_path / "table.csv"
    table.write_text(HEADER, "utf-8")
    (tmp_path / "docs.md").write_text("# t\n<!-- carbon-table:begin -->\nold\n<!-- carbon-table:end -->\n", "utf-8")
    return subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--ember",
            str(FIXTURES / "co2js-average-intensities.excerpt.json"),
            "--electricitymaps",
            str(FIXTURES / "co2js-electricitymaps-yearly_2025.excerpt.json"),
            "--zones",
            str(tmp_path / "zones.csv"),
            "--table",
            str(table),
            "--docs",
            str(tmp_path / "docs.md"),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_refresh_reproduces_the_bundled_rows_from_the_upstream_files(tmp_path):
    zones = (
        "CA,ember,CAN,Canada\nFR,ember,FRA,France\nUS,ember,USA,United States\n"
        "ID,ember,IDN,Indonesia\nWORLD,ember,World,World average\n"
        "CA-QC,electricitymaps,CA-QC,Québec\nAU-NSW,electricitymaps,AU-NSW,New South Wales\n"
        "US-EGRID-CAMX,egrid,CAMX,WECC California\n"
    )
    done = run_refresh(
        tmp_path,
        zones,
        "--egrid",
        str(FIXTURES / "egrid2023-srl.excerpt.csv"),
        "--egrid-release",
        EGRID_RELEASE,
    )
    assert done.returncode == 0, done.stderr
    made = {row["zone"]: row for row in csv.DictReader((tmp_path / "table.csv").read_text("utf-8").splitlines())}
    bundled = {row["zone"]: row for row in bundled_rows()}
    for zone in ("CA", "FR", "US", "ID", "WORLD", "CA-QC", "AU-NSW", "US-EGRID-CAMX"):
        assert made[zone] == bundled[zone], zone
    assert made["ID"]["year"] == "2023"  # Ember's newest year for Indonesia, not a common year
    assert float(made["US-EGRID-CAMX"]["grams_per_kwh"]) == pytest.approx(429.983 * 0.45359237, abs=0.005)
    assert "429.983 lb/MWh" in made["US-EGRID-CAMX"]["source"]
    docs = (tmp_path / "docs.md").read_text("utf-8")
    assert "| CA-QC | Québec | 41 | 2025 | Electricity Maps [2] |" in docs and "old" not in docs


def test_the_bundled_egrid_rows_are_the_kept_egrid_inputs_run_through_refresh(tmp_path):
    egrid_zones = [f"US-EGRID-{code}" for code in (*EGRID_SUBREGIONS, "US")]
    zones = "".join(
        f"{zone},egrid,{zone.removeprefix('US-EGRID-')},{name}\n"
        for zone, name in ((row["zone"], row["name"]) for row in bundled_rows() if row["zone"] in egrid_zones)
    )
    done = run_refresh(
        tmp_path,
        zones,
        "--egrid",
        str(SCRIPT.parent / "carbon-table" / "egrid2023rev2-srl.csv"),
        "--egrid",
        str(SCRIPT.parent / "carbon-table" / "egrid2023rev2-us.csv"),
        "--egrid-release",
        EGRID_RELEASE,
    )
    assert done.returncode == 0, done.stderr
    made = list(csv.DictReader((tmp_path / "table.csv").read_text("utf-8").splitlines()))
    bundled = {row["zone"]: row for row in bundled_rows()}
    assert sorted(row["zone"] for row in made) == sorted(egrid_zones)
    for row in made:
        assert row == bundled[row["zone"]], row["zone"]


def test_refresh_names_a_zone_the_upstream_file_lacks_and_writes_nothing(tmp_path):
    done = run_refresh(tmp_path, "CA-XX,electricitymaps,CA-XX,Nowhere\n")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["refresh-carbon-table: --electricitymaps: no zone 'CA-XX'"]
    assert (tmp_path / "table.csv").read_text("utf-8") == HEADER


def test_the_zone_manifest_matches_the_bundled_table():
    manifest = SCRIPT.parent / "carbon-table" / "zones.csv"
    lines = [line for line in manifest.read_text("utf-8").splitlines() if not line.startswith("#")]
    assert [row["zone"] for row in csv.DictReader(lines)] == [row["zone"] for row in bundled_rows()]
