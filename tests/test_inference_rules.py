"""Inference rules (prometheus/rules/gpucarbon-inference.yaml): the names the issue
asks for exist, each engine's own counter names are read, every rule keeps `team`,
and every rule is exercised by a promtool unit test."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
RULES = REPO / "prometheus" / "rules" / "gpucarbon-inference.yaml"
TESTS = sorted((REPO / "prometheus" / "tests").glob("gpucarbon-inference*.test.yaml"))

REQUIRED_RECORDS = {
    "namespace_pod:gpucarbon_generated_tokens:rate5m",
    "namespace_pod:gpucarbon_prompt_tokens:rate5m",
    "namespace_pod:gpucarbon_requests:rate5m",
    "namespace_workload:gpucarbon_energy_per_token_joules:rate5m",
    "namespace_workload:gpucarbon_emissions_per_million_tokens_grams:rate5m",
    "namespace_workload:gpucarbon_energy_per_request_joules:rate5m",
    "namespace_workload:gpucarbon_emissions_per_request_grams:rate5m",
    "namespace_workload:gpucarbon_sci_per_request_grams:rate5m",
}

# Each engine's counters as it exposes them (docs/inference.md lists the versions checked).
ENGINE_NAMES = {
    "namespace_pod:gpucarbon_generated_tokens:rate5m": {
        "vllm:generation_tokens_total",
        "sglang:generation_tokens_total",
        "sglang_generation_tokens_total",
        "tgi_request_generated_tokens_sum",
    },
    "namespace_pod:gpucarbon_prompt_tokens:rate5m": {
        "vllm:prompt_tokens_total",
        "sglang:prompt_tokens_total",
        "sglang_prompt_tokens_total",
        "tgi_request_input_length_sum",
    },
    "namespace_pod:gpucarbon_requests:rate5m": {
        "vllm:request_success_total",
        "sglang:num_requests_total",
        "sglang_num_requests_total",
        "tgi_request_success",
        "nv_inference_request_success",
    },
}


def _groups() -> list[dict]:
    return yaml.safe_load(RULES.read_text())["groups"]


def _records() -> dict[str, str]:
    return {rule["record"]: rule["expr"] for group in _groups() for rule in group["rules"] if "record" in rule}


def _tested_expressions() -> str:
    text = []
    for path in TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            text += [check["expr"] for check in case.get("promql_expr_test", [])]
            text += [check["alertname"] for check in case.get("alert_rule_test", [])]
    return "\n".join(text)


def test_the_issue_names_are_recorded() -> None:
    assert REQUIRED_RECORDS <= set(_records())


@pytest.mark.parametrize("record", sorted(ENGINE_NAMES))
def test_token_and_request_rules_read_every_engine(record: str) -> None:
    expr = _records()[record]
    read = set(re.findall(r"rate\(([a-z_:]+)[\[{]", expr))
    assert read == ENGINE_NAMES[record], f"{record} reads {sorted(read)}"


KEPT = {
    "namespace_pod": {"team", "workload", "pod"},
    "namespace_workload": {"team", "workload"},
    "team": {"team"},
    "model": {"model"},
}


@pytest.mark.parametrize("record", sorted(_records()))
def test_every_rule_keeps_the_labels_of_its_level(record: str) -> None:
    """Pod and workload rules keep team (the issue: all keep `team`); the team and
    model rollups are by team and by model."""
    expr = _records()[record]
    level = record.split(":")[0]
    by = set().union(*(set(re.findall(r"\w+", m)) for m in re.findall(r"(?:sum|group) by \(([^)]*)\)", expr)))
    joined = set().union(*(set(re.findall(r"\w+", m)) for m in re.findall(r"group_left \(([^)]*)\)", expr)))
    kept = by | joined
    assert KEPT[level] <= kept, f"{record} drops {sorted(KEPT[level] - kept)}"


@pytest.mark.parametrize(
    "name", sorted(set(_records()) | {r["alert"] for g in _groups() for r in g["rules"] if "alert" in r})
)
def test_every_rule_has_a_promtool_unit_test(name: str) -> None:
    assert name in _tested_expressions(), f"no promtool test in {[p.name for p in TESTS]} exercises {name}"


def test_per_token_and_per_request_divisors_drop_zero() -> None:
    """An idle replica set must yield no sample, not +Inf: every divisor ends in `> 0)`."""
    ratios = {record: expr for record, expr in _records().items() if "_per_" in record}
    assert len(ratios) >= 9
    for record, expr in ratios.items():
        divisor = expr.split("\n/ ", 1)[1] if "\n/ " in expr else expr.split("/ on", 1)[1]
        assert re.search(r">\s*0\s*\)", divisor), f"{record}: the divisor is not filtered with > 0"
