"""The config tree: defaults, the issue's example, and errors that name file, key and value."""

import pytest

from gpucarbon.config import (
    INTENSITY_KEYS_BY_SOURCE,
    INTENSITY_SOURCES,
    Config,
    ConfigError,
    load_config,
    parse_config,
    parse_duration,
)

EXAMPLE = """
attribution:
  idle_watts: 70
carbon:
  pue: 1.2
  intensity: {source: static, grams_per_kwh: 400, zone: US-CAL-CISO}
teams:
  default: unassigned
retention:
  finished: 10m
"""


def test_empty_and_missing_files_give_defaults(tmp_path):
    assert load_config(None) == Config()
    (tmp_path / "empty.yaml").write_text("")
    assert load_config(tmp_path / "empty.yaml") == Config()


def test_issue_example_loads():
    config = parse_config(EXAMPLE)
    assert config.attribution.idle_watts == 70
    assert config.carbon.pue == 1.2
    assert config.carbon.intensity.grams_per_kwh == 400 and config.carbon.intensity.zone == "US-CAL-CISO"
    assert config.retention.finished == 600


def test_idle_watts_map_by_model_or_uuid():
    config = parse_config('attribution: {idle_watts: {"NVIDIA H100 80GB HBM3": 70, "GPU-abc": 65}}')
    assert config.attribution.idle_watts_by_gpu == {"NVIDIA H100 80GB HBM3": 70.0, "GPU-abc": 65.0}


@pytest.mark.parametrize(
    "text, message",
    [
        ("carbon: {pue: 0.5}", "c.yaml: carbon.pue: 0.5: must be at least 1.0"),
        ("carbon: {pue: lots}", "c.yaml: carbon.pue: 'lots': must be a number"),
        ("colour: blue", "c.yaml: colour: unknown key"),
        ("carbon: {intensity: {source: sunshine}}", "c.yaml: carbon.intensity.source: 'sunshine': must be one of"),
        ("carbon: {intensity: {token: s3cret}}", "c.yaml: carbon.intensity.token: tokens are never read"),
        ("retention: {finished: soon}", "c.yaml: retention.finished: 'soon': not a duration"),
        ("attribution: {idle_watts: -3}", "c.yaml: attribution.idle_watts: -3: must be at least 0.0"),
        ("attribution: {idle_watts: {GPU-x: hot}}", "c.yaml: attribution.idle_watts.GPU-x: 'hot'"),
        ("limits: {max_workload_series: 0}", "c.yaml: limits.max_workload_series: 0: must be at least 1"),
        ("teams: {workloads: [{match: '(', team: x}]}", "c.yaml: teams.workloads[0].match: '(': invalid regex"),
        ("teams: [1, 2]", "c.yaml: teams: [1, 2]: must be a mapping"),
        ("carbon: {pue: 1.2", "c.yaml: invalid YAML at line"),
    ],
)
def test_errors_name_file_key_and_value(text, message):
    with pytest.raises(ConfigError) as err:
        parse_config(text, "c.yaml")
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


def test_secret_values_are_not_echoed():
    with pytest.raises(ConfigError) as err:
        parse_config("carbon: {intensity: {token: s3cret}}", "c.yaml")
    assert "s3cret" not in str(err.value)


def test_unreadable_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"missing.yaml: cannot read"):
        load_config(tmp_path / "missing.yaml")


@pytest.mark.parametrize("text, seconds", [("1s", 1), ("500ms", 0.5), ("10m", 600), ("1h30m", 5400), (2, 2)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "1x", "s", "-1s", "1s2", True])
def test_bad_durations(text):
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize(
    "text",
    [
        "carbon: {pue: null}",
        "retention: {finished: null}",
        "teams: {default: null}",
        "limits: {max_workload_series: null}",
        "state: {interval: ~}",
    ],
)
def test_null_means_the_default(text):
    assert parse_config(text) == Config()


@pytest.mark.parametrize(
    "text, key",
    [
        ("carbon: {pue: " + "9" * 400 + "}", "carbon.pue"),
        ("state: {interval: " + "9" * 400 + "}", "state.interval"),
        ("teams: {workloads: [{match: 'a{4294967296}', team: t}]}", "teams.workloads[0].match"),
        ("state: {dir: 2024-13-45}", "invalid YAML"),
        ("[" * 3000, "invalid YAML"),
    ],
)
def test_hostile_values_are_config_errors(text, key):
    with pytest.raises(ConfigError) as err:
        parse_config(text, "c.yaml")
    assert key in str(err.value)


def test_hostile_key_names_keep_the_error_on_one_line():
    with pytest.raises(ConfigError) as err:
        parse_config('"a\\nb": 1\n', "c.yaml")
    assert "\n" not in str(err.value) and "'a\\nb'" in str(err.value)
    with pytest.raises(ConfigError) as err:
        parse_config('teams: {namespaces: {"x\\ny": 3}}', "c.yaml")
    assert "\n" not in str(err.value)


# ---- a carbon.intensity key the chosen source does not read is an error ----------


SAMPLE_VALUES = {
    "grams_per_kwh": 400,
    "refresh": "10m",
    "stale_after": "2h",
    "timeout": "5s",
    "base_url": "https://example.invalid",
    "region": "CAISO_NORTH",
    "token_env": "EM_TOKEN",
    "token_file": "/run/secrets/t",
    "username_env": "WT_USER",
    "password_env": "WT_PASS",
    "signal_type": "co2_aoer",
}
SOURCE_SPECIFIC = sorted(set().union(*INTENSITY_KEYS_BY_SOURCE.values()))
NOT_READ = [
    (key, source)
    for key in SOURCE_SPECIFIC
    for source in INTENSITY_SOURCES
    if key not in INTENSITY_KEYS_BY_SOURCE[source]
]
READ = [(key, source) for source in INTENSITY_SOURCES for key in sorted(INTENSITY_KEYS_BY_SOURCE[source])]


def test_every_source_specific_key_has_a_sample_and_is_checked_somewhere():
    assert set(SAMPLE_VALUES) == set(SOURCE_SPECIFIC)
    assert {key for key, _ in NOT_READ} == set(SOURCE_SPECIFIC)  # every key is foreign to some source


@pytest.mark.parametrize("key, source", NOT_READ)
def test_a_key_the_source_does_not_read_is_refused_naming_key_and_source(key, source):
    extra = {"grams_per_kwh": 1} if source == "static" else {}
    section = {"source": source, **extra, key: SAMPLE_VALUES[key]}
    with pytest.raises(ConfigError) as err:
        parse_config(f"carbon: {{intensity: {section!r}}}".replace("'", '"'), "c.yaml")
    message = str(err.value)
    assert message.startswith(f"c.yaml: carbon.intensity.{key}: ")
    assert f"source '{source}' does not read it" in message and "\n" not in message


@pytest.mark.parametrize("key, source", READ)
def test_a_key_the_source_reads_is_accepted(key, source):
    extra = {"grams_per_kwh": 1} if source == "static" and key != "grams_per_kwh" else {}
    section = {"source": source, **extra, key: SAMPLE_VALUES[key]}
    parse_config(f"carbon: {{intensity: {section!r}}}".replace("'", '"'), "c.yaml")


def test_the_issue_case_grams_without_static_is_refused():
    with pytest.raises(
        ConfigError,
        match=r"carbon.intensity.grams_per_kwh: 400: source 'table' does not "
        r"read it \(read by: static\)",
    ):
        parse_config("carbon: {intensity: {grams_per_kwh: 400}}", "c.yaml")


def test_owner_following_is_configurable_and_checked():
    config = parse_config("kubernetes: {owners: {follow: [ReplicaSet, Job, RayCluster, StatefulSet], max_depth: 3}}")
    assert config.kubernetes.owners_follow == ("ReplicaSet", "Job", "RayCluster", "StatefulSet")
    assert config.kubernetes.owners_max_depth == 3
    for text, message in [
        (
            "kubernetes: {owners: {follow: RayCluster}}",
            "c.yaml: kubernetes.owners.follow: 'RayCluster': must be a list",
        ),
        ("kubernetes: {owners: {follow: [raycluster]}}", "c.yaml: kubernetes.owners.follow[0]: 'raycluster'"),
        ("kubernetes: {owners: {follow: [Node]}}", "c.yaml: kubernetes.owners.follow[0]: 'Node'"),
        ("kubernetes: {owners: {max_depth: 0}}", "c.yaml: kubernetes.owners.max_depth: 0: must be at least 1"),
        ("kubernetes: {owners: {depth: 2}}", "c.yaml: kubernetes.owners.depth: unknown key"),
    ]:
        with pytest.raises(ConfigError) as err:
            parse_config(text, "c.yaml")
        assert str(err.value).startswith(message), str(err.value)
