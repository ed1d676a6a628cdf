"""Grafana dashboards follow the project's conventions, and every panel's PromQL
parses and reads only metrics the exporter or the recording rules provide."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from dashboards import (
    DASHBOARD_DIR,
    DEFAULT_SUBSTITUTIONS,
    ROLLUP_CHOICES,
    RULE_FILES,
    every_choice_queries,
    iter_panels,
    load_dashboards,
    may_be_empty,
    metric_names,
    panel_queries,
    substitute,
)

DASHBOARDS = load_dashboards()
REQUIRED_UIDS = {"gpucarbon-fleet", "gpucarbon-teams", "gpucarbon-workload", "gpucarbon-waste", "gpucarbon-health"}

# The metric contract (docs/metrics.md): every name the exporter serves.
EXPORTED_METRICS = frozenset(
    """
    gpucarbon_gpu_info gpucarbon_gpu_up gpucarbon_gpu_power_watts gpucarbon_gpu_power_limit_watts
    gpucarbon_gpu_utilization_ratio gpucarbon_gpu_memory_used_bytes gpucarbon_gpu_memory_total_bytes
    gpucarbon_gpu_temperature_celsius gpucarbon_gpu_idle_power_watts gpucarbon_gpu_energy_joules_total
    gpucarbon_gpu_unattributed_energy_joules_total gpucarbon_gpu_retired_energy_joules_total
    gpucarbon_gpu_emissions_grams_total gpucarbon_gpu_unattributed_emissions_grams_total
    gpucarbon_gpu_retired_emissions_grams_total gpucarbon_gpu_energy_resets_total
    gpucarbon_workload_energy_joules_total gpucarbon_workload_emissions_grams_total
    gpucarbon_workload_power_watts gpucarbon_workload_held_seconds_total gpucarbon_workload_busy_seconds_total
    gpucarbon_gpu_allocation_info gpucarbon_team_energy_joules_total gpucarbon_team_emissions_grams_total
    gpucarbon_grid_carbon_intensity_grams_per_kwh gpucarbon_pue_ratio gpucarbon_carbon_source_up
    gpucarbon_carbon_intensity_age_seconds gpucarbon_carbon_fallbacks_total
    gpucarbon_workload_embodied_emissions_grams_total gpucarbon_team_embodied_emissions_grams_total
    gpucarbon_workload_energy_cost_total gpucarbon_team_energy_cost_total
    gpucarbon_source_up gpucarbon_source_errors_total gpucarbon_workload_series_dropped_total
    gpucarbon_build_info gpucarbon_nvml_up gpucarbon_poll_duration_seconds_bucket
    gpucarbon_poll_duration_seconds_sum gpucarbon_poll_duration_seconds_count
    gpucarbon_last_poll_timestamp_seconds gpucarbon_nvml_errors_total
    gpucarbon_team_finished_runs_total gpucarbon_team_finished_energy_joules_total
    gpucarbon_team_finished_emissions_grams_total gpucarbon_team_repeated_energy_joules_total
    gpucarbon_receipts_total
    up process_resident_memory_bytes process_cpu_seconds_total
    """.split()
)

PANELS = [(uid, panel) for uid, dashboard in DASHBOARDS.items() for panel in iter_panels(dashboard)]


def _panel_id(item: tuple[str, dict]) -> str:
    return f"{item[0]}:{item[1].get('title')}"


def _recording_rules() -> dict[str, str]:
    return {
        rule["record"]: rule["expr"]
        for path in RULE_FILES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "record" in rule
    }


def _walk(node: object):
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def test_the_five_dashboards_exist_with_stable_uids_named_after_their_files() -> None:
    assert set(DASHBOARDS) >= REQUIRED_UIDS
    for stem, dashboard in DASHBOARDS.items():
        assert dashboard["uid"] == stem, f"{stem}.json has uid {dashboard['uid']!r}: keep uid == file name"
        assert len(dashboard["uid"]) <= 40, "Grafana rejects uids over 40 characters"


@pytest.mark.parametrize("uid", sorted(DASHBOARDS))
def test_dashboard_uses_a_current_schema_and_has_a_description(uid: str) -> None:
    dashboard = DASHBOARDS[uid]
    assert dashboard["schemaVersion"] >= 39
    assert dashboard.get("description")
    assert "gpu-carbon-exporter" in dashboard.get("tags", []), "the dashboard links find siblings by this tag"
    assert dashboard.get("id") is None, "a fixed numeric id clashes between Grafana instances; use uid"


@pytest.mark.parametrize("uid", sorted(DASHBOARDS))
def test_dashboard_has_datasource_cluster_node_team_variables(uid: str) -> None:
    variables = {v["name"]: v for v in DASHBOARDS[uid]["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("cluster", "node", "team"):
        assert name in variables, f"{uid} lacks the ${name} variable"
        variable = variables[name]
        assert variable["includeAll"] and variable["allValue"] == ".*", (
            f"{uid} ${name}: 'All' must be .* so that series without the label still match"
        )
        assert variable["datasource"] == {"type": "prometheus", "uid": "${datasource}"}


@pytest.mark.parametrize("uid", sorted(DASHBOARDS))
def test_no_hard_coded_datasource_uid(uid: str) -> None:
    for node in _walk(DASHBOARDS[uid]):
        datasource = node.get("datasource")
        if isinstance(datasource, dict) and datasource.get("type") != "grafana":
            assert datasource.get("uid") == "${datasource}", f"{uid}: hard-coded datasource {datasource}"
        elif isinstance(datasource, str):
            assert datasource == "${datasource}", f"{uid}: hard-coded datasource {datasource!r}"


@pytest.mark.parametrize("item", PANELS, ids=_panel_id)
def test_panel_has_title_description_unit_and_queries(item: tuple[str, dict]) -> None:
    uid, panel = item
    assert panel.get("title"), f"{uid}: panel {panel.get('id')} has no title"
    assert panel.get("description", "").strip(), f"{uid}/{panel['title']}: no description"
    assert panel.get("fieldConfig", {}).get("defaults", {}).get("unit"), f"{uid}/{panel['title']}: no unit"
    assert panel.get("targets"), f"{uid}/{panel['title']}: no query"
    assert panel.get("datasource") == {"type": "prometheus", "uid": "${datasource}"}
    ref_ids = [target["refId"] for target in panel["targets"]]
    assert len(ref_ids) == len(set(ref_ids)), f"{uid}/{panel['title']}: duplicate refIds {ref_ids}"


@pytest.mark.parametrize("uid", sorted(DASHBOARDS))
def test_panels_have_unique_ids_and_do_not_overlap(uid: str) -> None:
    panels = DASHBOARDS[uid]["panels"]
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), f"{uid}: duplicate panel ids"
    cells: dict[tuple[int, int], str] = {}
    for panel in panels:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, f"{uid}/{panel['title']} is wider than the grid"
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{uid}: {panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]


def test_substitution_covers_every_variable_form() -> None:
    expr = 'rate(x{a=~"$cluster",b=~"${node}",c=~"${team:regex}",d=~"[[namespace]]"}[$__rate_interval])'
    assert substitute(expr) == 'rate(x{a=~".*",b=~".*",c=~".*",d=~".*"}[1m])'
    with pytest.raises(KeyError, match="nosuchvar"):
        substitute('x{a=~"$nosuchvar"}')


def test_metric_names_ignore_functions_labels_and_strings() -> None:
    expr = (
        'sum by (team) (rate(gpucarbon_team_energy_joules_total{team=~"gpucarbon_fake"}[5m]))'
        " / on (uuid) team:gpucarbon_x:rate5m"
    )
    assert metric_names(expr) == {"gpucarbon_team_energy_joules_total", "team:gpucarbon_x:rate5m"}


def test_every_query_parses_as_promql(tmp_path: Path) -> None:
    """promtool parses each expression as a recording rule; a syntax error fails."""
    queries = every_choice_queries()
    rules = {
        "groups": [
            {
                "name": "dashboard-queries",
                "rules": [{"record": f"dashboard_query_{i}", "expr": q.expr} for i, q in enumerate(queries)],
            }
        ]
    }
    path = tmp_path / "queries.yaml"
    path.write_text(yaml.safe_dump(rules))
    result = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("query", every_choice_queries(), ids=lambda q: f"{q.dashboard}:{q.panel}:{q.ref_id}")
def test_query_reads_only_exported_metrics_and_recording_rules(query) -> None:
    known = EXPORTED_METRICS | set(_recording_rules())
    unknown = query.metrics() - known
    assert not unknown, f"{query.dashboard}/{query.panel} reads unknown series {sorted(unknown)}"
    assert query.metrics(), f"{query.dashboard}/{query.panel} reads no metric"


def test_optional_panels_are_only_cost_embodied_and_error_counters() -> None:
    optional = {(q.dashboard, q.panel) for q in panel_queries() if may_be_empty(q)}
    assert optional, "the cost and error panels should be recognised as optional"
    for dashboard, panel in optional:
        assert re.search(r"cost|embodied|error|dropped|reset|intensity age", panel, re.I), (dashboard, panel)


def test_dashboards_use_the_recording_rules_instead_of_recomputing_them() -> None:
    """A panel must not repeat `sum by (<labels>) (rate(<metric>[5m]))` that a rule records."""
    recorded = []
    for name, expr in _recording_rules().items():
        match = re.fullmatch(r"\s*sum by \(([^)]*)\) \(rate\((\w+)\[5m\]\)\)\s*", expr)
        if match:
            recorded.append((name, {label.strip() for label in match.group(1).split(",")}, match.group(2)))
    assert recorded, "expected simple recorded aggregations to compare against"
    for query in panel_queries():
        for aggregation in re.finditer(r"sum by \(([^)]*)\) \(rate\((\w+)\{[^}]*\}\[[^\]]+\]\)\)", query.expr):
            labels = {label.strip() for label in aggregation.group(1).split(",")}
            for name, rule_labels, metric in recorded:
                assert not (metric == aggregation.group(2) and labels <= rule_labels), (
                    f"{query.dashboard}/{query.panel} recomputes {name}; query the recording rule"
                )
    used = set().union(*(query.metrics() for query in panel_queries()))
    assert len(used & set(_recording_rules())) >= 8, "dashboards should read the recording rules"


def test_dashboard_files_are_formatted_json() -> None:
    for path in sorted(DASHBOARD_DIR.glob("*.json")):
        text = path.read_text()
        assert text == json.dumps(json.loads(text), indent=2) + "\n", f"{path.name}: reformat with json indent=2"


# Panels that show one number (or one row) per series: Grafana must run them as
# instant queries. As range queries a stat doing increase(...[$__range]) re-reads
# the whole range at each of ~240 steps.
ONE_NUMBER_PANELS = frozenset({"stat", "table", "bargauge", "piechart", "gauge"})
# Raw series with one series per GPU, pod or workload: a panel that draws them
# over time must bound the selection (topk) so that a fleet does not draw 8,000 lines.
PER_SERIES_RAW = re.compile(r"\bgpucarbon_(?:gpu|workload)_\w+")
PER_NODE_RAW = frozenset({"gpucarbon_workload_series_dropped_total"})  # one series per node


@pytest.mark.parametrize("item", PANELS, ids=_panel_id)
def test_one_number_panels_are_instant_queries(item: tuple[str, dict]) -> None:
    uid, panel = item
    if panel["type"] not in ONE_NUMBER_PANELS:
        return
    for target in panel["targets"]:
        assert target.get("instant") is True and not target.get("range", False), (
            f"{uid}/{panel['title']} [{target['refId']}]: a {panel['type']} shows one number per series; "
            "set instant: true, range: false"
        )


ROLLUPS = tuple(f":increase{choice}" for choice in ROLLUP_CHOICES)


@pytest.mark.parametrize("item", PANELS, ids=_panel_id)
@pytest.mark.parametrize("rollup", ROLLUP_CHOICES)
def test_range_wide_windows_read_only_the_rollups(item: tuple[str, dict], rollup: str) -> None:
    """A window as long as the dashboard's range reads the `:increase1h` or
    `:increase1d` rules (24 or 1 samples per series-day), never raw counters
    (thousands per series-day), whichever rollup $rollup picks."""
    uid, panel = item
    values = {**DEFAULT_SUBSTITUTIONS, "rollup": rollup, "__range": "__RANGE__"}
    for target in panel["targets"]:
        expr = substitute(target["expr"], values)
        for window in re.finditer(r"(\w[\w:]*)\{[^}]*\}\[__RANGE__\]", expr):
            assert window.group(1).endswith(ROLLUPS), (
                f"{uid}/{panel['title']} reads {window.group(1)} over $__range: use an :increase1h or :increase1d rule"
            )


@pytest.mark.parametrize("uid", sorted(DASHBOARDS))
def test_rollup_variable_offers_the_hourly_and_daily_rollups_hourly_first(uid: str) -> None:
    """A board whose totals read `:increase$rollup` defines $rollup with exactly
    the rollups the rules record, and defaults to the hourly ones (a daily
    rollup shows nothing for a range under a day)."""
    dashboard = DASHBOARDS[uid]
    uses = any("${rollup}" in t["expr"] or "$rollup" in t["expr"] for _, p in PANELS if _ == uid for t in p["targets"])
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    if not uses:
        assert "rollup" not in variables, f"{uid} defines $rollup but no panel reads it"
        return
    variable = variables["rollup"]
    assert variable["type"] == "custom" and not variable["includeAll"] and not variable["multi"]
    assert tuple(option["value"] for option in variable["options"]) == ROLLUP_CHOICES
    assert variable["current"]["value"] == DEFAULT_SUBSTITUTIONS["rollup"] == "1h"
    assert [part.split(" : ")[1].strip() for part in variable["query"].split(",")] == list(ROLLUP_CHOICES)


def test_daily_rollups_match_the_hourly_ones_the_boards_switch_between() -> None:
    """Every `:increase1h` rule a board reads through $rollup has its `:increase1d`
    twin with the same expression over [1d]."""
    rules = _recording_rules()
    switched = {
        name
        for query in panel_queries()
        for name in query.metrics()
        if name.endswith(":increase1h")
        and any(q.expr != query.expr for q in every_choice_queries() if q.panel == query.panel)
    }
    assert switched, "the workload and waste boards should switch their totals between rollups"
    for name in switched:
        if name.replace(":increase1h", ":increase1d") not in rules:
            continue  # read at 1h only by a panel that also reads a switched rule
        assert rules[name.replace(":increase1h", ":increase1d")] == rules[name].replace("1h", "1d"), name


@pytest.mark.parametrize("query", panel_queries(), ids=lambda q: f"{q.dashboard}:{q.panel}:{q.ref_id}")
def test_time_series_of_per_gpu_or_per_workload_raw_series_are_bounded(query) -> None:
    if query.instant:
        return
    names = {name for name in query.metrics() if ":" not in name}
    if any(PER_SERIES_RAW.fullmatch(name) for name in names - PER_NODE_RAW):
        assert query.expr.lstrip().startswith("topk("), (
            f"{query.dashboard}/{query.panel} draws raw per-GPU/per-workload series; bound it with topk()"
        )
