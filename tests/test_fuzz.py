"""Hostile input: the config loader, the scenario loader and the web config
parser give only their own clear errors, never another exception or a hang.

The cgroup parser and the device-ID normaliser are fuzzed next to their golden
tests (tests/test_identity_cgroup.py, tests/test_identity_devices.py), and the
web config's text and mapping fuzzing lives in tests/test_exporter_webconfig.py;
this file adds what those lack (docs/reliability.md maps input to test).

Two kinds of generated input per loader:
- arbitrary text, to shake the YAML layer;
- YAML documents built from the loader's own schema (real key names, nested as
  the loader expects, any value at any leaf, an occasional unknown key or a
  wrong-typed section), so that the deep paths (carbon.intensity.*,
  teams.workloads[i].match, workloads[i].sm_util[j], ...) are reached.

What the fuzzers found (fixed in aa4ba0d) is kept at the end as named
regression examples.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpucarbon.config import INTENSITY_KEYS, Config, ConfigError, parse_config
from gpucarbon.exporter.webconfig import WebConfigError, load_web_config
from gpucarbon.simulation.scenario import Scenario, ScenarioError, parse_scenario

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SOURCE = "fuzz.yaml"
LEAF = "leaf"  # schema marker: any value may go here

# Text that looks like YAML more often than st.text() alone does.
YAML_TEXT = st.text(alphabet=st.sampled_from(list("ab01.:-[]{},#&*!|>'\"%@`? \n\t")) | st.characters(), max_size=200)

# Leaf values: every YAML scalar type, plausible values for the real keys, and
# small containers where a scalar belongs, and numbers too big for a float.
PLAUSIBLE = st.sampled_from(
    [
        "10m",
        "500ms",
        "1h30m",
        "0s",
        "-1s",
        "1x",
        "1e3s",
        "",
        " ",
        "static",
        "table",
        "watttime",
        "electricitymaps",
        "uk-carbon-intensity",
        "co2_moer",
        "co2_aoer",
        "auto",
        "DE",
        "WORLD",
        ".*",
        "(",
        "[a-z]+",
        "lost",
        "reset",
        "hang",
        "NVIDIA H100 80GB HBM3",
        "Job/x",
        "/var/lib/gpucarbon",
        "USD",
    ]
)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.sampled_from([10**400, -(10**400)])
    | st.floats()
    | st.text(max_size=12)
    | st.dates()
    | PLAUSIBLE
)
LEAVES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)
JUNK_KEY = st.sampled_from(["", "unknown", "Pue", "token", "a\nb", "0"]) | st.text(max_size=8)

CONFIG_SCHEMA: dict[str, Any] = {
    "attribution": {"idle_watts": LEAF},
    "carbon": {
        "pue": LEAF,
        "intensity": {k: LEAF for k in sorted(INTENSITY_KEYS)},
        "embodied": {"enabled": LEAF, "lifetime": LEAF},
        "cost": {"price_per_kwh": LEAF, "currency": LEAF},
    },
    "teams": {
        "default": LEAF,
        "pod_label": LEAF,
        "namespace_label": LEAF,
        "namespaces": LEAF,
        "workloads": [{"match": LEAF, "team": LEAF}],
        "users": LEAF,
    },
    "retention": {"finished": LEAF},
    "limits": {"max_workload_series": LEAF, "gpu_read_timeout": LEAF},
    "kubernetes": {
        "enabled": LEAF,
        "node_name": LEAF,
        "kubeconfig": LEAF,
        "podresources": {"enabled": LEAF, "socket": LEAF, "interval": LEAF},
    },
    "slurm": {"enabled": LEAF, "scontrol": LEAF},
    "state": {"dir": LEAF, "interval": LEAF},
}

SCENARIO_SCHEMA: dict[str, Any] = {
    "speed": LEAF,
    "seed": LEAF,
    "gpus": [{"model": LEAF, "count": LEAF, "idle_watts": LEAF, "max_watts": LEAF, "memory_bytes": LEAF}],
    "workloads": [
        {
            k: LEAF
            for k in (
                "namespace",
                "pod",
                "container",
                "workload",
                "team",
                "start",
                "end",
                "allocated_only",
                "pid",
                "cgroup",
                "memory_bytes",
            )
        }
        | {"gpus": [LEAF], "sm_util": [[LEAF]]}
    ],
    "faults": [{"gpu": LEAF, "kind": LEAF, "start": LEAF, "end": LEAF}],
}


def shaped(schema: Any) -> st.SearchStrategy:
    """Documents that follow `schema` most of the time and stray from it sometimes."""
    if schema == LEAF:
        return LEAVES
    if isinstance(schema, list):
        return st.lists(shaped(schema[0]), max_size=3) | LEAVES
    fields = {key: shaped(child) for key, child in schema.items()}
    mapping = st.fixed_dictionaries({}, optional=fields)
    with_junk = st.tuples(mapping, JUNK_KEY, LEAVES).map(lambda t: {**t[0], t[1]: t[2]})
    return st.one_of(mapping, mapping, mapping, with_junk, LEAVES)


def dump(document: Any) -> str:
    return yaml.safe_dump(document, allow_unicode=True, sort_keys=False)


def assert_only_config_errors(text: str) -> None:
    try:
        result = parse_config(text, SOURCE)
    except ConfigError as err:
        assert str(err).startswith(SOURCE + ":"), f"error does not name the file: {err}"
    else:
        assert isinstance(result, Config)


def assert_only_scenario_errors(text: str) -> None:
    try:
        result = parse_scenario(text, SOURCE)
    except ScenarioError as err:
        assert str(err).startswith(SOURCE + ":"), f"error does not name the file: {err}"
    else:
        assert isinstance(result, Scenario) and result.gpus


# --- config loader ------------------------------------------------------------


@pytest.mark.timeout(60)
@FUZZ
@given(text=YAML_TEXT)
def test_config_from_arbitrary_text_gives_only_config_errors(text: str) -> None:
    assert_only_config_errors(text)


@pytest.mark.timeout(60)
@FUZZ
@given(document=shaped(CONFIG_SCHEMA))
def test_config_shaped_documents_give_only_config_errors(document: Any) -> None:
    assert_only_config_errors(dump(document))


def test_config_fuzzer_reaches_the_deep_keys() -> None:
    """The generator is able to build a valid document touching nested keys
    (guards the fuzzer itself: a schema typo would make it shallow)."""
    document = {
        "carbon": {"intensity": {"source": "static", "grams_per_kwh": 300}, "cost": {"price_per_kwh": 0.2}},
        "teams": {"workloads": [{"match": "^Job/", "team": "batch"}]},
        "state": {"interval": "1m"},
    }
    config = parse_config(dump(document), SOURCE)
    assert config.carbon.intensity.grams_per_kwh == 300 and config.teams.workload_patterns == (("^Job/", "batch"),)
    assert set(document) <= set(CONFIG_SCHEMA)


# --- scenario loader ----------------------------------------------------------


@pytest.mark.timeout(60)
@FUZZ
@given(text=YAML_TEXT)
def test_scenario_from_arbitrary_text_gives_only_scenario_errors(text: str) -> None:
    assert_only_scenario_errors(text)


@pytest.mark.timeout(60)
@FUZZ
@given(document=shaped(SCENARIO_SCHEMA))
def test_scenario_shaped_documents_give_only_scenario_errors(document: Any) -> None:
    assert_only_scenario_errors(dump(document))


@pytest.mark.timeout(60)
@settings(max_examples=100, deadline=None)
@given(
    util=st.lists(st.tuples(st.floats(-10, 1e6) | st.integers(-5, 10**6), st.floats(-1, 2)), min_size=1, max_size=4),
    gpus=st.lists(st.integers(-2, 4), min_size=0, max_size=3),
    start=st.floats(-10, 1e6) | st.none(),
    end=st.floats(-10, 1e6) | st.none(),
)
def test_scenario_near_valid_workloads_give_only_scenario_errors(util, gpus, start, end) -> None:
    """Values one step off valid, where the range checks live (most random
    documents fail earlier, at the first key)."""
    workload = {"workload": "Job/w", "gpus": gpus, "sm_util": [list(step) for step in util]}
    workload |= {k: v for k, v in (("start", start), ("end", end)) if v is not None}
    assert_only_scenario_errors(dump({"gpus": [{"model": "G", "count": 2}], "workloads": [workload]}))


# --- web config: arbitrary bytes (text and mappings are fuzzed in its own tests)


@pytest.mark.timeout(60)
@settings(max_examples=150, deadline=None)
@given(
    content=st.binary(max_size=300)
    | st.tuples(YAML_TEXT, st.binary(min_size=1, max_size=4)).map(
        lambda t: t[0].encode("utf-8", "surrogatepass") + t[1]
    )
)
def test_web_config_from_arbitrary_bytes_gives_only_web_config_errors(content: bytes) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "web.yml"
        path.write_bytes(content)
        try:
            load_web_config(path)
        except WebConfigError as err:
            assert str(err).startswith(str(path)), err


# --- regressions: what the fuzzers found -----------------------------------------
#
# Each of these escaped as a non-loader error until aa4ba0d (PyYAML's eager
# constructors raise ValueError/RecursionError, float() of a huge int raises
# OverflowError, re.compile raises OverflowError/RecursionError, null was kept
# as None). Kept as fixed examples so a regression fails by name, not by luck.

HUGE_INT = "9" * 400  # fits YAML's int resolver; float(int) overflows
OVER_STR_DIGITS = "9" * 5000  # beyond Python's int/str conversion limit (4300 digits)
DEEP = "[" * 3_000  # past the recursion limit of PyYAML's composer

CONFIG_HOSTILE = {
    "impossible date": "state: {dir: 2024-13-45}",
    "int past the str-digits limit": f"carbon: {{pue: {OVER_STR_DIGITS}}}",
    "deep nesting": DEEP,
    "huge number": f"carbon: {{pue: {HUGE_INT}}}",
    "huge duration": f"state: {{interval: {HUGE_INT}}}",
    "regex repeat count too large": "teams: {workloads: [{match: 'a{4294967296}', team: t}]}",
    "regex nested too deeply": "teams: {workloads: [{match: '%s', team: t}]}" % ("(" * 500 + ")" * 500),
    "duration given a list": "retention: {finished: []}",
    "duration given a mapping": "limits: {gpu_read_timeout: {a: 1}}",
}

SCENARIO_HOSTILE = {
    "impossible date": "gpus: [{model: 2024-13-45}]",
    "int past the str-digits limit": f"seed: {OVER_STR_DIGITS}",
    "deep nesting": DEEP,
    "huge number": f"speed: {HUGE_INT}\ngpus: [{{model: G}}]",
    "null utilization step": "gpus: [{model: G}]\nworkloads: [{workload: w, gpus: [0], sm_util: [[null, 0.5]]}]",
}

SCENARIO_NULLS = {
    "idle_watts": "gpus: [{model: G, idle_watts: null}]",
    "memory_bytes": "gpus: [{model: G, memory_bytes: null}]",
    "speed": "speed: null\ngpus: [{model: G}]",
    "start": "gpus: [{model: G}]\nworkloads: [{workload: w, gpus: [0], start: null}]",
    "fault start": "gpus: [{model: G}]\nfaults: [{gpu: 0, kind: lost, start: null}]",
}


@pytest.mark.parametrize("text", CONFIG_HOSTILE.values(), ids=CONFIG_HOSTILE.keys())
def test_hostile_config_yaml_gives_a_one_line_config_error(text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, SOURCE)
    assert str(caught.value).startswith(SOURCE + ":") and "\n" not in str(caught.value)


@pytest.mark.parametrize("text", SCENARIO_HOSTILE.values(), ids=SCENARIO_HOSTILE.keys())
def test_hostile_scenario_yaml_gives_a_one_line_scenario_error(text: str) -> None:
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(text, SOURCE)
    assert str(caught.value).startswith(SOURCE + ":") and "\n" not in str(caught.value)


@pytest.mark.parametrize("text", SCENARIO_NULLS.values(), ids=SCENARIO_NULLS.keys())
def test_null_for_a_scenario_number_means_its_default(text: str) -> None:
    scenario = parse_scenario(text, SOURCE)
    values = [scenario.speed] + [v for g in scenario.gpus for v in (g.idle_watts, g.max_watts, g.memory_bytes)]
    values += [w.start for w in scenario.workloads] + [f.start for f in scenario.faults]
    assert all(isinstance(v, (int, float)) for v in values), values


def test_web_config_survives_the_same_hostile_yaml(tmp_path: Path) -> None:
    for text in ("tls_server_config: {cert_file: 2024-13-45}", f"x: {OVER_STR_DIGITS}", DEEP):
        path = tmp_path / "web.yml"
        path.write_text(text)
        with pytest.raises(WebConfigError, match="not valid YAML"):
            load_web_config(path)


# --- null for a key that has a default ------------------------------------------


def _config_leaf_paths(schema: dict, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = []
    for key, child in schema.items():
        if child == LEAF:
            paths.append(path + (key,))
        elif isinstance(child, dict):
            paths.extend(_config_leaf_paths(child, path + (key,)))
    return paths


def _nones_in_required_fields(node: Any, prefix: str = "") -> list[str]:
    """Dotted names of fields typed without None that hold None."""
    found = []
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        if dataclasses.is_dataclass(value):
            found += _nones_in_required_fields(value, f"{prefix}{f.name}.")
        elif value is None and "None" not in str(f.type):
            found.append(prefix + f.name)
    return found


@pytest.mark.parametrize("path", [pytest.param(p, id=".".join(p)) for p in _config_leaf_paths(CONFIG_SCHEMA)])
def test_null_for_a_key_gives_its_default_or_a_config_error(path: tuple[str, ...]) -> None:
    document: Any = None
    for key in reversed(path):
        document = {key: document}
    try:
        config = parse_config(dump(document), SOURCE)
    except ConfigError:
        return
    assert _nones_in_required_fields(config) == []
