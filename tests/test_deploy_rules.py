"""Prometheus rules: promtool accepts them, their unit tests pass, every alert is
documented and tested, and recording rule names follow the Prometheus convention."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml
from dashboards import REPO, RULE_FILES

TEST_FILES = sorted((REPO / "prometheus" / "tests").glob("*.yaml"))
ALERTS_DOC = REPO / "docs" / "alerts.md"

# level:metric:operations, https://prometheus.io/docs/practices/rules/
RECORDING_NAME = re.compile(r"^[a-z_]+:[a-z][a-z0-9_]*:[a-z0-9_]+$")


def _rules() -> list[dict]:
    return [
        rule for path in RULE_FILES for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"]
    ]


def _alerts() -> list[dict]:
    return [rule for rule in _rules() if "alert" in rule]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=60)


def test_rule_files_exist() -> None:
    assert RULE_FILES and TEST_FILES


def test_promtool_check_rules_passes() -> None:
    result = _run("promtool", "check", "rules", *map(str, RULE_FILES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_pass() -> None:
    result = _run("promtool", "test", "rules", *map(str, TEST_FILES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_issue_alerts_are_all_defined() -> None:
    names = {rule["alert"] for rule in _alerts()}
    assert names >= {
        "GPUIdleHighPower",
        "GPUAllocatedIdle",
        "GPULost",
        "GPUCarbonExporterDown",
        "GPUCarbonNVMLDown",
        "GPUCarbonIntensityStale",
        "InferenceEnergyPerTokenRegressed",
    }


@pytest.mark.parametrize(
    "rule", _alerts(), ids=lambda rule: f"{rule['alert']}-{sorted(rule.get('labels', {}).items())}"
)
def test_alert_has_severity_summary_description_and_runbook(rule: dict) -> None:
    annotations = rule.get("annotations", {})
    assert rule.get("labels", {}).get("severity") in {"warning", "critical", "info"}
    assert annotations.get("summary") and annotations.get("description")
    assert annotations.get("runbook_url") == f"docs/alerts.md#{rule['alert'].lower()}", (
        "runbook_url must be docs/alerts.md#<alert name in lower case>; the chart rewrites the base"
    )


def test_every_alert_has_a_runbook_section() -> None:
    headings = {line[3:].strip() for line in ALERTS_DOC.read_text().splitlines() if line.startswith("## ")}
    missing = {rule["alert"] for rule in _alerts()} - headings
    assert not missing, f"docs/alerts.md has no '## <name>' section for {sorted(missing)}"


def test_every_alert_is_proven_to_fire_by_a_unit_test() -> None:
    fired: set[str] = set()
    quiet: set[str] = set()
    for path in TEST_FILES:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (fired if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in _alerts()}
    assert names - fired == set(), f"no unit test shows these alerts firing: {sorted(names - fired)}"
    assert names - quiet == set(), f"no unit test shows these alerts staying quiet: {sorted(names - quiet)}"


@pytest.mark.parametrize("rule", [r for r in _rules() if "record" in r], ids=lambda rule: rule["record"])
def test_recording_rule_name_follows_level_metric_operations(rule: dict) -> None:
    name = rule["record"]
    assert RECORDING_NAME.match(name), f"{name} is not level:metric:operations"
    level, metric, _ = name.split(":")
    # The exporter's own process_* metrics (its CPU on the health board) keep theirs.
    assert metric.startswith(("gpucarbon_", "process_")), f"{name}: the metric part keeps the gpucarbon_ prefix"
    assert not metric.endswith("_total"), f"{name}: drop _total from a counter's name after rate()"


LEVEL_LABEL = {
    "cluster": "cluster",
    "node": "node",
    "team": "team",
    "namespace": "namespace",
    "namespace_workload": "workload",
    "node_namespace_workload": "workload",
    "node_team": "team",
    "namespace_pod": "pod",
    "model": "model",
}


@pytest.mark.parametrize(
    "rule",
    [r for r in _rules() if "record" in r and re.search(r"\b(sum|avg) by", r["expr"])],
    ids=lambda rule: rule["record"],
)
def test_recording_rule_aggregates_by_the_level_it_names(rule: dict) -> None:
    level = rule["record"].split(":")[0]
    assert level in LEVEL_LABEL, f"{rule['record']}: unknown level {level!r}"
    by = {label.strip() for label in re.search(r"(?:sum|avg) by \(([^)]*)\)", rule["expr"]).group(1).split(",")}
    assert LEVEL_LABEL[level] in by, f"{rule['record']} does not keep {LEVEL_LABEL[level]!r}: by {sorted(by)}"
    assert "cluster" in by, f"{rule['record']} drops the cluster label"


# --- the laptop stack (deploy/) ---------------------------------------------------

DEPLOY = REPO / "deploy"


def test_laptop_prometheus_config_and_its_rules_pass_promtool(tmp_path: Path) -> None:
    """The compose stack mounts prometheus/rules beside the config as rules/."""
    (tmp_path / "prometheus.yml").write_bytes((DEPLOY / "prometheus.yml").read_bytes())
    (tmp_path / "rules").mkdir()
    for path in RULE_FILES:
        (tmp_path / "rules" / path.name).write_bytes(path.read_bytes())
    result = _run("promtool", "check", "config", str(tmp_path / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(RULE_FILES)} rule files found" in result.stdout + result.stderr


def _host_path(mount: str) -> Path:
    return (DEPLOY / mount.split(":")[0]).resolve()


def test_compose_stack_mounts_the_sources_of_truth() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) >= {"exporter", "prometheus", "grafana"}
    assert "--simulate" in services["exporter"]["command"]
    build = services["exporter"]["build"]
    assert (DEPLOY / build["context"]).resolve() / build["dockerfile"] == REPO / "Dockerfile"
    prometheus_mounts = {_host_path(m): m.split(":")[1] for m in services["prometheus"]["volumes"] if m.startswith(".")}
    assert prometheus_mounts[(REPO / "deploy" / "prometheus.yml").resolve()] == "/etc/prometheus/prometheus.yml"
    assert prometheus_mounts[(REPO / "prometheus" / "rules").resolve()] == "/etc/prometheus/rules"
    grafana_mounts = {_host_path(m): m.split(":")[1] for m in services["grafana"]["volumes"] if m.startswith(".")}
    dashboards_target = grafana_mounts[(REPO / "grafana" / "dashboards").resolve()]
    provider = yaml.safe_load(compose["configs"]["grafana-dashboards"]["content"])
    assert provider["providers"][0]["options"]["path"] == dashboards_target
    datasource = yaml.safe_load(compose["configs"]["grafana-datasources"]["content"])["datasources"][0]
    assert datasource["type"] == "prometheus" and datasource["isDefault"] is True


def test_hourly_rollups_window_equals_their_group_interval() -> None:
    """sum_over_time(<rule>:increase1h[$__range]) adds up to the period only
    when each evaluation covers exactly the time since the previous one."""
    rollups = 0
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                name = rule.get("record", "")
                match = re.search(r":increase(\d+[smhd])$", name)
                if not match:
                    continue
                rollups += 1
                assert group.get("interval") == match.group(1), f"{name}: group interval must be {match.group(1)}"
                windows = set(re.findall(r"\[(\w+)\]", rule["expr"]))
                assert windows == {match.group(1)}, f"{name}: every window must be [{match.group(1)}], got {windows}"
    assert rollups >= 8


def test_recording_rules_read_only_the_daemons_series() -> None:
    """`promtool tsdb create-blocks-from rules` backfills all rules in one pass
    only when no rule reads another rule's output."""
    recorded = {rule["record"] for rule in _rules() if "record" in rule}
    for path in RULE_FILES:
        if "recording" not in path.name:
            continue
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                if "record" in rule:
                    reads = {
                        name for name in recorded if re.search(rf"(?<![\w:]){re.escape(name)}(?![\w:])", rule["expr"])
                    }
                    assert not reads, f"{rule['record']} reads rules {sorted(reads)}: write it over the raw series"
