"""Keep the reference docs honest: what the daemon exports, accepts and simulates
must be what docs/metrics.md, docs/configuration.md and docs/simulation.md say,
and the PromQL the docs print must be valid and must check what it claims."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from gpucarbon.app import RunOptions, build_daemon
from gpucarbon.cli import build_parser
from gpucarbon.clock import ManualClock
from gpucarbon.config import Config, ConfigError, parse_config
from gpucarbon.exporter.http import render_text
from gpucarbon.simulation.scenario import ScenarioError, load_scenario, parse_scenario

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
METRICS_DOC = DOCS / "metrics.md"
CONFIG_DOC = DOCS / "configuration.md"
SIMULATION_DOC = DOCS / "simulation.md"
SOURCES_OF_METRIC_NAMES = (
    ROOT / "daemon/gpucarbon/exporter/collector.py",
    ROOT / "daemon/gpucarbon/checkpoint.py",  # the state counters, passed as extra counters
    ROOT / "daemon/gpucarbon/exporter/http.py",  # web auth failures, counted on the HTTP path
    ROOT / "daemon/gpucarbon/exporter/listener.py",  # connections the listener closed
    ROOT / "daemon/gpucarbon/exporter/certificate.py",  # the TLS certificate's expiry
)
PROBE = "zz_not_a_key"  # a key no section accepts


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def fenced_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, re.S)


# --- expositions, rendered in-process on a hand-moved clock -------------------------


def exposition(config: Config, scenario_text: str | None, polls: int, tmp_path: Path, state: bool = False) -> str:
    """Poll a simulated node `polls` times, one simulated second apart, and render it."""
    clock = ManualClock()
    scenario = load_scenario(None) if scenario_text is None else parse_scenario(scenario_text, "test")
    options = RunOptions(
        scenario=scenario, procfs=str(tmp_path / "no-proc"), state_dir=str(tmp_path / "state") if state else None
    )
    daemon = build_daemon(config, options, base_clock=clock)

    async def run() -> None:
        for _ in range(polls):
            await daemon.poller.poll()
            clock.advance(1.0)

    asyncio.run(run())
    return render_text(lambda: daemon.poller.snapshot)


ALL_OPTIONAL_FAMILIES = "carbon: {embodied: {enabled: true}, cost: {price_per_kwh: 0.2, currency: EUR}}"


@pytest.fixture(scope="module")
def demo_exposition(tmp_path_factory) -> str:
    """The demo with every optional family switched on (embodied, cost, checkpoints)."""
    return exposition(parse_config(ALL_OPTIONAL_FAMILIES), None, 2, tmp_path_factory.mktemp("demo"), state=True)


def families(text: str) -> dict[str, str]:
    """Family name (as in the # TYPE line) -> type."""
    return dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))


# --- metrics -----------------------------------------------------------------------

DOC_METRIC_NAME = re.compile(r"(?<![\w:])(gpucarbon_[a-z0-9_]*[a-z0-9])(?![\w:])")
HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")


def source_metric_names() -> set[str]:
    names: set[str] = set()
    for path in SOURCES_OF_METRIC_NAMES:
        names.update(re.findall(r"[\"'](gpucarbon_[a-z0-9_]+)[\"']", read(path)))
    return names


def documented_type(doc: str, name: str) -> str | None:
    """The type in the doc's table row for `name`: | `name` | type | ..."""
    match = re.search(rf"^\| `{re.escape(name)}` \| (\w+) \|", doc, re.M)
    return match.group(1) if match else None


def test_every_exported_family_is_documented_with_its_type(demo_exposition):
    doc = read(METRICS_DOC)
    exported = families(demo_exposition)
    assert "gpucarbon_workload_energy_cost_total" in exported  # the optional families are on
    assert "gpucarbon_state_save_failures_total" in exported
    assert "process_cpu_seconds_total" in exported
    wrong = {
        name: (kind, documented_type(doc, name))
        for name, kind in exported.items()
        if documented_type(doc, name) != kind
    }
    assert not wrong, f"families missing from docs/metrics.md or with another type (exported, documented): {wrong}"


def test_every_metric_name_the_docs_mention_exists_in_the_source():
    known = source_metric_names()
    mentioned = set(DOC_METRIC_NAME.findall(read(METRICS_DOC)))
    unknown = {
        name
        for name in mentioned
        if name not in known and not any(name.removesuffix(s) in known for s in HISTOGRAM_SUFFIXES)
    }
    assert mentioned, "docs/metrics.md names no gpucarbon_* metric"
    assert not unknown, f"docs/metrics.md names metrics the daemon does not export: {sorted(unknown)}"


def test_every_metric_name_in_the_source_is_documented():
    doc = read(METRICS_DOC)
    known = source_metric_names()
    assert "gpucarbon_carbon_intensity_age_seconds" in known  # only rendered for live sources
    missing = sorted(name for name in known if f"`{name}`" not in doc)
    assert not missing, f"metrics in the source but not in docs/metrics.md: {missing}"


# --- the invariant PromQL, run by promtool against a real exposition ---------------

# A node that exercises every term of the sums: a retired series (short job,
# 5 s retention), unattributed energy (an unheld GPU and a lost one), overflow
# (cap of 4 series), several teams, time-slicing and an idle holder.
INVARIANT_SCENARIO = """
seed: 5
gpus: [{model: NVIDIA A100-SXM4-80GB, count: 3, idle_watts: 50, max_watts: 400}]
workloads:
  - {namespace: a, pod: short-0, workload: Job/short, team: alpha, gpus: [0], start: 0, end: 5, sm_util: 0.7}
  - {namespace: a, pod: long-0, workload: Job/long, team: alpha, gpus: [0, 1], sm_util: [[0, 0.4], [10, 0.9]]}
  - {namespace: b, pod: infer-0, workload: Deployment/infer, team: beta, gpus: [1], start: 3, sm_util: 0.3}
  - {namespace: b, pod: infer-1, workload: Deployment/infer, team: beta, gpus: [1], start: 3, sm_util: 0.2}
  - {namespace: c, pod: nb-0, workload: StatefulSet/nb, team: gamma, gpus: [2], start: 8, end: 20,
     allocated_only: true}
faults:
  - {gpu: 1, kind: lost, start: 12, end: 15}
"""
INVARIANT_CONFIG = (
    """
retention: {finished: 5s}
limits: {max_workload_series: 4}
"""
    + ALL_OPTIONAL_FAMILIES
)


@pytest.fixture(scope="module")
def invariant_samples(tmp_path_factory) -> list[tuple[str, dict[str, str], float]]:
    text = exposition(parse_config(INVARIANT_CONFIG), INVARIANT_SCENARIO, 30, tmp_path_factory.mktemp("inv"))
    samples = [
        (s.name, dict(s.labels), s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name.startswith("gpucarbon_") and family.type != "histogram"
    ]
    # The scenario must reach every term, or the check proves little.
    values = {(name, labels.get("gpu"), labels.get("workload")): v for name, labels, v in samples}
    assert any(v > 0 for (n, _, _), v in values.items() if n == "gpucarbon_gpu_retired_energy_joules_total")
    assert any(v > 0 for (n, _, _), v in values.items() if n == "gpucarbon_gpu_unattributed_energy_joules_total")
    assert any(w == "overflow" for (n, _, w) in values if n == "gpucarbon_workload_energy_joules_total")
    return samples


def invariant_queries() -> list[str]:
    return re.findall(r"<!-- check: invariant -->\n```promql\n(.*?)```", read(METRICS_DOC), re.S)


def promtool_test(tmp_path: Path, samples, query: str) -> subprocess.CompletedProcess:
    """Evaluate `query` over the samples (one scrape of instance node-a); the test
    passes when the query returns nothing."""
    series = [
        {"series": series_selector(name, {**labels, "instance": "node-a"}), "values": repr(float(value))}
        for name, labels, value in samples
    ]
    test = {
        "rule_files": [],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": series,
                "promql_expr_test": [{"expr": query, "eval_time": "0m", "exp_samples": []}],
            }
        ],
    }
    path = tmp_path / "invariant.test.yaml"
    path.write_text(yaml.safe_dump(test, sort_keys=False))
    return subprocess.run(["promtool", "test", "rules", str(path)], capture_output=True, text=True, timeout=60)


def series_selector(name: str, labels: dict[str, str]) -> str:
    def quoted(value: str) -> str:
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'

    return name + "{" + ",".join(f"{k}={quoted(v)}" for k, v in sorted(labels.items())) + "}"


def test_the_doc_prints_three_invariant_checks():
    queries = invariant_queries()
    assert len(queries) == 3
    assert any("emissions" in q for q in queries) and any("team" in q for q in queries)


@pytest.mark.parametrize("index", range(3))
def test_invariant_query_finds_nothing_on_a_real_exposition(index, invariant_samples, tmp_path):
    result = promtool_test(tmp_path, invariant_samples, invariant_queries()[index])
    assert result.returncode == 0, result.stdout + result.stderr


def unattributed_bumped(samples):
    """GPU 0's unattributed energy and emissions off by a visible amount."""
    bumps = {
        "gpucarbon_gpu_unattributed_energy_joules_total": 1.0,
        "gpucarbon_gpu_unattributed_emissions_grams_total": 0.5,
    }
    return [
        (name, labels, value + bumps.get(name, 0.0) * (labels.get("gpu") == "0")) for name, labels, value in samples
    ]


@pytest.mark.parametrize("index", range(3))
def test_invariant_query_reports_a_broken_sum(index, invariant_samples, tmp_path):
    result = promtool_test(tmp_path, unattributed_bumped(invariant_samples), invariant_queries()[index])
    assert result.returncode != 0, f"the query missed a 1 J / 0.5 g error:\n{invariant_queries()[index]}"
    assert "got:" in result.stdout + result.stderr


def test_every_promql_example_is_valid(tmp_path):
    queries = fenced_blocks(read(METRICS_DOC), "promql")
    assert len(queries) >= 10
    rules = {
        "groups": [
            {"name": "docs", "rules": [{"record": f"docs:example_{i}", "expr": q} for i, q in enumerate(queries)]}
        ]
    }
    path = tmp_path / "examples.rules.yaml"
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    result = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# --- configuration -----------------------------------------------------------------


def nest(path: list[str], leaf: Any) -> Any:
    for key in reversed(path):
        leaf = {key: leaf}
    return leaf


def allowed_keys(probe: Callable[[Any], str | None], path: list[str]) -> tuple[list[str], bool] | None:
    """The keys of the section at `path` (and whether it is a list of sections),
    from the parser's own 'unknown key (allowed: ...)' error; None for a leaf."""
    for candidate, is_list in (({PROBE: 1}, False), ([{PROBE: 1}], True)):
        message = probe(nest(path, candidate))
        found = re.search(rf"{PROBE}: unknown key \(allowed: ([^)]*)\)", message or "")
        if found:
            return found.group(1).split(", "), is_list
    return None


def discover_keys(probe: Callable[[Any], str | None], path: list[str] | None = None, shown: str = "") -> set[str]:
    """Every leaf key, spelt as the docs spell it: carbon.intensity.zone, teams.workloads[].match."""
    section = allowed_keys(probe, path or [])
    if section is None:
        return {shown}
    names, is_list = section
    prefix = shown + ("[]" if is_list else "")
    keys: set[str] = set()
    for name in names:
        keys |= discover_keys(probe, [*(path or []), name], f"{prefix}.{name}" if prefix else name)
    return keys


def config_probe(document: Any) -> str | None:
    try:
        parse_config(yaml.safe_dump(document), "probe")
    except ConfigError as err:
        return str(err)
    return None


def documents_key(doc: str, key: str) -> bool:
    return f"`{key}`" in doc


def test_config_key_discovery_reaches_nested_sections():
    keys = discover_keys(config_probe)
    for expected in (
        "carbon.intensity.token_env",
        "teams.workloads[].match",
        "kubernetes.podresources.socket",
        "attribution.idle_watts",
        "state.interval",
    ):
        assert expected in keys
    assert len(keys) >= 40


def test_every_config_key_is_documented():
    doc = read(CONFIG_DOC)
    missing = sorted(key for key in discover_keys(config_probe) if not documents_key(doc, key))
    assert not missing, f"config keys missing from docs/configuration.md: {missing}"


def test_every_flag_is_documented():
    doc = read(CONFIG_DOC)
    flags = [
        flag
        for action in build_parser()._actions
        for flag in action.option_strings
        if flag.startswith("--") and flag != "--help"
    ]
    assert "--simulate.speed" in flags
    missing = [flag for flag in flags if f"`{flag}`" not in doc and f"`{flag} " not in doc]
    assert not missing, f"flags missing from docs/configuration.md: {missing}"


def test_config_examples_parse_and_the_full_file_states_the_defaults():
    doc = read(CONFIG_DOC)
    blocks = fenced_blocks(doc, "yaml")
    assert len(blocks) >= 2
    for block in blocks:
        parse_config(block, "docs/configuration.md")
    full = fenced_blocks(doc.split("## A full file", 1)[1], "yaml")[0]
    assert parse_config(full, "docs/configuration.md") == Config()


def full_file_keys(block: str) -> dict[str, str]:
    """Key path -> its line, for every key in the full-file block, commented
    examples (`# key: value`) included; nesting follows the indentation."""
    keys: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    for line in block.splitlines():
        found = re.match(r"^( *)(?:# ( *))?([a-z0-9_]+):", line)  # `  #   url:` nests under `  # webhook:`
        if not found:
            continue
        indent, name = len(found.group(1)) + len(found.group(2) or ""), found.group(3)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, name))
        keys[".".join(part for _, part in stack)] = line
    return keys


def test_the_full_file_shows_every_config_key():
    full = fenced_blocks(read(CONFIG_DOC).split("## A full file", 1)[1], "yaml")[0]
    shown = full_file_keys(full)
    missing = []
    for key in sorted(discover_keys(config_probe)):
        section, _, field = key.partition("[].")
        if field:  # a list of sections: its fields appear in the example on the list's line
            if section not in shown or f"{field}:" not in shown[section]:
                missing.append(key)
        elif key not in shown:
            missing.append(key)
    assert not missing, f"keys missing from the full file in docs/configuration.md: {missing}"


def test_config_error_examples_match_the_parser():
    message = config_probe({"carbon": {"pue": 0.5}})
    assert "config.yaml: carbon.pue: 0.5: must be at least 1.0" in read(CONFIG_DOC)
    assert message == "probe: carbon.pue: 0.5: must be at least 1.0"


# --- simulation --------------------------------------------------------------------


def scenario_probe(document: Any) -> str | None:
    """Probe the scenario parser; sections below the top need a valid GPU list first."""
    base: dict[str, Any] = {"gpus": [{"model": "Test GPU"}]}
    if isinstance(document, dict):
        base.update(document)
    try:
        parse_scenario(yaml.safe_dump(base), "probe")
    except ScenarioError as err:
        return str(err)
    return None


def test_scenario_key_discovery_reaches_every_list():
    keys = discover_keys(scenario_probe)
    for expected in ("speed", "gpus[].idle_watts", "workloads[].allocated_only", "faults[].kind"):
        assert expected in keys


def test_every_scenario_key_is_documented():
    doc = read(SIMULATION_DOC)
    missing = sorted(key for key in discover_keys(scenario_probe) if not documents_key(doc, key))
    assert not missing, f"scenario keys missing from docs/simulation.md: {missing}"


def test_scenario_examples_parse():
    blocks = fenced_blocks(read(SIMULATION_DOC), "yaml")
    assert blocks
    for block in blocks:
        parse_scenario(block, "docs/simulation.md")


def test_demo_is_explained_gpu_by_gpu():
    doc = read(SIMULATION_DOC).split("## The built-in demo", 1)[1]
    gpu_count = len(load_scenario(None).gpus)
    for index in range(gpu_count):
        assert re.search(rf"\*\*GPUs? [0-9 and]*\b{index}\b", doc), f"GPU {index} of the demo is not explained"


# --- README ------------------------------------------------------------------------

README = read(ROOT / "README.md")
DOC_LINKS = sorted(set(re.findall(r"\]\((docs/[^)#\s]+\.md)(?:#[^)]*)?\)", README)))


def test_readme_quick_start_runs_the_demo_and_the_tests():
    quick_start = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = "\n".join(fenced_blocks(quick_start, "sh"))
    assert "--simulate" in commands
    assert "bash scripts/test" in commands


def test_readme_links_the_reference_docs():
    for doc in ("docs/metrics.md", "docs/configuration.md", "docs/simulation.md"):
        assert doc in DOC_LINKS


@pytest.mark.parametrize("link", DOC_LINKS)
def test_readme_doc_link_points_to_a_file(link):
    assert (ROOT / link).is_file(), f"README.md links {link}, which does not exist"


def schema_keys(node: dict, prefix: str = "") -> set[str]:
    """Leaf keys of a JSON schema, spelt like discover_keys spells config keys."""
    if node.get("type") == "array" and "properties" in node.get("items", {}):
        return schema_keys(node["items"], prefix + "[]")
    if "properties" not in node:
        return {prefix}
    keys: set[str] = set()
    for name, child in node["properties"].items():
        keys |= schema_keys(child, f"{prefix}.{name}" if prefix else name)
    return keys


def test_chart_values_schema_accepts_exactly_the_daemon_config_keys():
    schema = json.loads((ROOT / "helm/gpu-carbon-exporter/values.schema.json").read_text())
    # carbon.intensity.token is recognised only to refuse it (tokens never live in config).
    assert schema_keys(schema["properties"]["config"]) == discover_keys(config_probe) - {"carbon.intensity.token"}
