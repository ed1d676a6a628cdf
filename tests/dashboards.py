"""Read the Grafana dashboards and pull out every panel's PromQL, ready to run.

Shared by the convention test (tests/test_deploy_dashboards.py) and the end-to-end
test that runs each query against a real Prometheus scraping the daemon.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RULE_FILES = sorted((REPO / "prometheus" / "rules").glob("*.yaml"))
DASHBOARD_DIR = REPO / "grafana" / "dashboards"

# What Grafana would put in place of each variable when every option is "All"
# and the time range is one hour. Values are PromQL text.
DEFAULT_SUBSTITUTIONS: Mapping[str, str] = {
    "datasource": "prometheus",
    "cluster": ".*",
    "node": ".*",
    "team": ".*",
    "namespace": ".*",
    "workload": ".*",
    "rollup": "1h",  # "Totals from": the hourly rollups (the other choice, 1d, in ROLLUP_CHOICES)
    "__rate_interval": "1m",
    "__interval": "1m",
    "__range": "1h",
    "__range_s": "3600",
    "__range_ms": "3600000",
}

# The workload and waste boards' custom variable $rollup picks the hourly or the
# daily rollups (`...:increase1h` or `...:increase1d`) for the period totals.
ROLLUP_CHOICES = ("1h", "1d")

# Metrics that exist only when a feature is configured or something went wrong:
# a query over these alone may rightly return nothing. (The intensity age exists
# only for live carbon sources, not for the static figure or the bundled table.)
OPTIONAL_METRICS = frozenset(
    {
        "gpucarbon_carbon_intensity_age_seconds",
        "gpucarbon_team_energy_cost_total",
        "gpucarbon_workload_energy_cost_total",
        "gpucarbon_team_embodied_emissions_grams_total",
        "gpucarbon_workload_embodied_emissions_grams_total",
        "gpucarbon_nvml_errors_total",
        "gpucarbon_source_errors_total",
        "gpucarbon_workload_series_dropped_total",
        "gpucarbon_gpu_energy_resets_total",
    }
)

_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)")
_METRIC = re.compile(r"\b(gpucarbon_\w+|[a-z_]+:(?:gpucarbon|process)_\w+:\w+|up|process_\w+)\b(?!\s*\()")


@dataclass(frozen=True, slots=True)
class PanelQuery:
    """One query of one panel, with its template variables substituted."""

    dashboard: str  # dashboard uid
    panel: str  # panel title
    ref_id: str
    expr: str
    instant: bool

    def metrics(self) -> frozenset[str]:
        """Metric and recording-rule names the query reads."""
        return metric_names(self.expr)


def load_dashboards(directory: Path = DASHBOARD_DIR) -> dict[str, dict]:
    """File stem -> parsed dashboard JSON, for every *.json in `directory`."""
    return {path.stem: json.loads(path.read_text()) for path in sorted(directory.glob("*.json"))}


def iter_panels(dashboard: Mapping) -> Iterator[dict]:
    """Every panel that shows data (rows are containers, not panels), nested rows included."""
    for panel in dashboard.get("panels", []):
        if panel.get("type") == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


def substitute(expr: str, values: Mapping[str, str] = DEFAULT_SUBSTITUTIONS) -> str:
    """Replace $var, ${var}, ${var:fmt} and [[var]]; an unknown variable is an error."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2) or match.group(3)
        if name not in values:
            raise KeyError(f"template variable ${name} has no substitution (in {expr!r})")
        return values[name]

    return _VARIABLE.sub(replace, expr)


def metric_names(expr: str) -> frozenset[str]:
    """Names of metrics and recording rules in a PromQL expression (not functions)."""
    without_strings = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    without_modifiers = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", without_strings)
    return frozenset(_METRIC.findall(without_modifiers))


def panel_queries(
    dashboards: Mapping[str, Mapping] | None = None,
    values: Mapping[str, str] = DEFAULT_SUBSTITUTIONS,
) -> list[PanelQuery]:
    """Every query of every panel of every dashboard, variables substituted."""
    dashboards = load_dashboards() if dashboards is None else dashboards
    queries = []
    for dashboard in dashboards.values():
        for panel in iter_panels(dashboard):
            for target in panel.get("targets", []):
                queries.append(
                    PanelQuery(
                        dashboard=dashboard["uid"],
                        panel=panel.get("title", ""),
                        ref_id=target.get("refId", ""),
                        expr=substitute(target["expr"], values),
                        instant=bool(target.get("instant")) and not target.get("range", False),
                    )
                )
    return queries


def every_choice_queries(dashboards: Mapping[str, Mapping] | None = None) -> list[PanelQuery]:
    """panel_queries() with the defaults, plus the queries that read another
    rollup for each other choice of $rollup (only those whose text changes)."""
    dashboards = load_dashboards() if dashboards is None else dashboards
    default = panel_queries(dashboards)
    out = list(default)
    for choice in ROLLUP_CHOICES:
        if choice == DEFAULT_SUBSTITUTIONS["rollup"]:
            continue
        values = {**DEFAULT_SUBSTITUTIONS, "rollup": choice}
        for base, query in zip(default, panel_queries(dashboards, values), strict=True):
            if query.expr != base.expr:
                out.append(
                    PanelQuery(query.dashboard, query.panel, f"{query.ref_id}@{choice}", query.expr, query.instant)
                )
    return out


def may_be_empty(query: PanelQuery) -> bool:
    """True when the query reads only optional metrics (cost, embodied, error counters)."""
    names = {_source_metric(name) for name in query.metrics()}
    names = {name for name in names if name.startswith("gpucarbon_")}
    return bool(names) and names <= OPTIONAL_METRICS


def _source_metric(name: str) -> str:
    """`team:gpucarbon_team_energy_cost:increase1h` -> `gpucarbon_team_energy_cost_total`:
    a recording rule is as optional as the counter it rolls up."""
    if ":" not in name:
        return name
    _, metric, operation = name.split(":")
    return metric + "_total" if operation.startswith(("rate", "increase")) else metric
