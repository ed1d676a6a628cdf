"""The one typed configuration tree, loaded and validated in one place.

Every key has a default, so an empty or missing file is a valid configuration.
Errors name the file, the dotted key and the offending value, e.g.
``config.yaml: carbon.pue: -1: must be at least 1.0``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gpucarbon.errors import GpuCarbonError
from gpucarbon.teams import TeamRules
from gpucarbon.yamlcheck import MISSING, YAML_ERRORS, is_number, key_text, show, yaml_where


class ConfigError(GpuCarbonError):
    """A configuration problem; str() is one line naming file, key and value."""

    def __init__(self, source: str, key: str, value: Any, problem: str) -> None:
        shown = show(value)
        where = f"{source}: {key}" if key else source
        super().__init__(f"{where}: {shown}: {problem}" if shown else f"{where}: {problem}")
        self.source, self.key, self.value, self.problem = source, key, value, problem


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str | int | float) -> float:
    """'1s', '500ms', '1h30m' or a number of seconds -> seconds (ValueError if bad)."""
    if isinstance(text, bool):
        raise ValueError("not a duration")
    if isinstance(text, (int, float)):
        if not is_number(text):
            raise ValueError("must be a finite, non-negative duration")
        seconds = float(text)
    elif not isinstance(text, str):
        raise ValueError("not a duration (examples: 500ms, 1s, 10m, 1h30m)")
    else:
        stripped = text.strip()
        parts = _DURATION_PART.findall(stripped)
        if not parts or "".join(n + u for n, u in parts) != stripped:
            raise ValueError("not a duration (examples: 500ms, 1s, 10m, 1h30m)")
        if len(stripped) > 64:
            raise ValueError("not a duration (too long)")
        seconds = sum(float(n) * _DURATION_UNITS[u] for n, u in parts)
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError("must be a finite, non-negative duration")
    return seconds


# --- the tree -------------------------------------------------------------


@dataclass(frozen=True)
class AttributionConfig:
    # Watts a GPU draws doing nothing: one number for all GPUs, or a map from
    # model name or GPU UUID to watts. None: learn it, else per-model default.
    idle_watts: float | None = None
    idle_watts_by_gpu: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class IntensityConfig:
    source: str = "table"  # bundled yearly averages unless a live source is chosen
    zone: str = "auto"  # auto: detected from the node's labels, else WORLD
    grams_per_kwh: float | None = None  # required for source "static"
    timeout: float = 10.0  # seconds per live API request
    signal_type: str = "co2_moer"  # WattTime: co2_moer (marginal) or co2_aoer (average)
    refresh: float | None = None  # seconds between live fetches (None: provider default)
    stale_after: float = 3600.0  # seconds before a live value falls back to the table
    base_url: str | None = None
    token_env: str | None = None
    token_file: str | None = None
    username_env: str | None = None  # WattTime basic auth
    password_env: str | None = None
    region: str | None = None  # uk-carbon-intensity postcode, WattTime region


@dataclass(frozen=True)
class CarbonConfig:
    pue: float = 1.0
    intensity: IntensityConfig = field(default_factory=IntensityConfig)
    embodied_enabled: bool = False
    embodied_lifetime_years: float = 4.0  # GPU service life (see docs/carbon.md)
    # kg CO2e to make one GPU, by a token of its model name ("H100"); adds to or
    # replaces the bundled figures (docs/carbon.md).
    embodied_kg_by_model: Mapping[str, float] = field(default_factory=dict)
    price_per_kwh: float | None = None
    currency: str = "USD"
    # Overrides by grid zone (the zone the intensity provider resolved, e.g. FR).
    pue_by_zone: Mapping[str, float] = field(default_factory=dict)
    price_by_zone: Mapping[str, float] = field(default_factory=dict)


# Team rules (first match wins) are validated values with behaviour; the config
# tree holds them as they are: gpucarbon.teams.TeamRules.


@dataclass(frozen=True)
class RetentionConfig:
    finished: float = 600.0  # seconds a finished workload's series stay


@dataclass(frozen=True)
class LimitsConfig:
    max_workload_series: int = 2000
    gpu_read_timeout: float = 5.0  # seconds one GPU's read may take


@dataclass(frozen=True)
class KubernetesConfig:
    enabled: bool = False
    node_name: str | None = None  # default: $NODE_NAME
    kubeconfig: str | None = None  # None: in-cluster service account
    podresources_socket: str = "/var/lib/kubelet/pod-resources/kubelet.sock"
    podresources_enabled: bool = False
    podresources_interval: float = 10.0
    # Owner kinds whose own controller is read (a GET each, cached), and how many
    # reads up one chain at most. StatefulSet and RayCluster widen the RBAC needed.
    owners_follow: tuple[str, ...] = ("ReplicaSet", "Job")
    owners_max_depth: int = 4


_KIND = re.compile(r"[A-Z][A-Za-z0-9]{0,62}")


@dataclass(frozen=True)
class SlurmConfig:
    enabled: bool = True  # off by itself when scontrol is not installed
    scontrol: str = "scontrol"
    node: str | None = None  # this node's Slurm NodeName; None: the short host name


@dataclass(frozen=True)
class StateConfig:
    dir: str | None = None
    interval: float = 30.0


DEFAULT_OFFSET_PRICE_PER_TONNE = 10.0  # the source article prices offsets at 10 USD per tonne


@dataclass(frozen=True)
class WebhookSettings:
    url: str
    token_env: str | None = None
    token_file: str | None = None
    timeout_s: float = 10.0
    outbox_size: int = 1000


@dataclass(frozen=True)
class ReceiptSettings:
    """The `receipts:` section: receipts for finished runs (docs/receipts.md)."""

    enabled: bool = True
    processes: bool = False  # plain processes get receipts too
    offset_price_per_tonne: float = DEFAULT_OFFSET_PRICE_PER_TONNE
    repeat_window_s: float = 7 * 86400.0
    file_max_bytes: int = 16 << 20  # receipts.jsonl is rotated before it passes this
    file_keep: int = 5  # rotated files kept
    memory: int = 5000  # receipts kept in memory for the endpoint
    events: bool = True  # Kubernetes Events, when kubernetes.enabled
    webhook: WebhookSettings | None = None


@dataclass(frozen=True)
class Config:
    attribution: AttributionConfig = field(default_factory=AttributionConfig)
    carbon: CarbonConfig = field(default_factory=CarbonConfig)
    teams: TeamRules = field(default_factory=TeamRules)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    kubernetes: KubernetesConfig = field(default_factory=KubernetesConfig)
    slurm: SlurmConfig = field(default_factory=SlurmConfig)
    state: StateConfig = field(default_factory=StateConfig)
    receipts: ReceiptSettings = field(default_factory=ReceiptSettings)


INTENSITY_SOURCES = ("static", "table", "electricitymaps", "watttime", "uk-carbon-intensity")
# The carbon.intensity keys each source reads besides `source` and `zone`; any other
# key is refused, since a key the chosen source ignores silently does nothing
# (`grams_per_kwh: 400` without `source: static` used to give the table's figure).
_LIVE_KEYS = frozenset({"refresh", "stale_after", "timeout", "base_url", "region"})
INTENSITY_KEYS_BY_SOURCE: Mapping[str, frozenset[str]] = {
    "static": frozenset({"grams_per_kwh"}),
    "table": frozenset(),
    "electricitymaps": _LIVE_KEYS | {"token_env", "token_file"},
    "watttime": _LIVE_KEYS | {"username_env", "password_env", "token_file", "signal_type"},
    "uk-carbon-intensity": _LIVE_KEYS,
}
# Every key carbon.intensity accepts: `token` is accepted only to be refused with a
# line that says to use token_env or token_file instead.
INTENSITY_KEYS = frozenset({"source", "zone", "token"}).union(*INTENSITY_KEYS_BY_SOURCE.values())


# --- loading --------------------------------------------------------------


def load_config(path: str | Path | None) -> Config:
    """Read and validate a YAML file; None gives the defaults."""
    if path is None:
        return Config()
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(source, "", MISSING, f"cannot read: {err.strerror or err}") from None
    except UnicodeDecodeError:
        raise ConfigError(source, "", MISSING, "not UTF-8 text") from None
    return parse_config(text, source)


def parse_config(text: str, source: str = "<config>") -> Config:
    try:
        raw = yaml.safe_load(text)
    except YAML_ERRORS as err:
        raise ConfigError(source, "", MISSING, f"invalid YAML{yaml_where(err)}") from None
    if raw is None:
        return Config()
    return _Reader(source).config(raw)


class _Reader:
    """Walks the raw YAML, checking keys and types, building the tree."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, value: Any, problem: str) -> ConfigError:
        return ConfigError(self.source, key, value, problem)

    def section(self, raw: Any, key: str, allowed: AbstractSet[str]) -> Mapping[str, Any]:
        if raw is None:
            return {}
        if not isinstance(raw, Mapping):
            raise self.fail(key or "(top level)", raw, "must be a mapping")
        for name in raw:
            if not isinstance(name, str) or name not in allowed:
                full = f"{key}.{key_text(name)}" if key else key_text(name)
                raise self.fail(full, MISSING, f"unknown key (allowed: {', '.join(sorted(allowed))})")
        return raw

    def number(
        self,
        raw: Mapping,
        key: str,
        path: str,
        default: Any,
        minimum: float | None = None,
        maximum: float | None = None,
    ) -> Any:
        value = raw.get(key)
        if value is None:  # absent or null: the default
            return default
        full = f"{path}.{key}"
        if not is_number(value):
            raise self.fail(full, value, "must be a number")
        if minimum is not None and value < minimum:
            raise self.fail(full, value, f"must be at least {minimum}")
        if maximum is not None and value > maximum:
            raise self.fail(full, value, f"must be at most {maximum}")
        return float(value)

    def integer(self, raw: Mapping, key: str, path: str, default: int, minimum: int) -> int:
        value = raw.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int) or not is_number(value):
            raise self.fail(f"{path}.{key}", value, "must be an integer")
        if value < minimum:
            raise self.fail(f"{path}.{key}", value, f"must be at least {minimum}")
        return value

    def string(self, raw: Mapping, key: str, path: str, default: Any, choices: tuple[str, ...] = ()) -> Any:
        value = raw.get(key)
        if value is None:
            return default
        full = f"{path}.{key}"
        if not isinstance(value, str) or not value:
            raise self.fail(full, value, "must be a non-empty string")
        if choices and value not in choices:
            raise self.fail(full, value, f"must be one of: {', '.join(choices)}")
        return value

    def boolean(self, raw: Mapping, key: str, path: str, default: bool) -> bool:
        value = raw.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.fail(f"{path}.{key}", value, "must be true or false")
        return value

    def duration(self, raw: Mapping, key: str, path: str, default: Any, minimum: float = 0.0) -> Any:
        value = raw.get(key)
        if value is None:
            return default
        full = f"{path}.{key}"
        try:
            seconds = parse_duration(value)
        except (ValueError, TypeError) as err:
            raise self.fail(full, value, str(err)) from None
        if seconds < minimum:
            raise self.fail(full, value, f"must be at least {minimum}s")
        return seconds

    def number_map(self, raw: Mapping, key: str, path: str, minimum: float, maximum: float) -> dict[str, float]:
        value = raw.get(key) or {}
        full = f"{path}.{key}"
        if not isinstance(value, Mapping):
            raise self.fail(full, value, "must be a mapping of names to numbers")
        for name, item in value.items():
            if not is_number(item) or not minimum <= item <= maximum:
                raise self.fail(f"{full}.{key_text(name)}", item, f"must be a number from {minimum} to {maximum}")
        return {str(name): float(item) for name, item in value.items()}

    def string_map(self, raw: Mapping, key: str, path: str) -> dict[str, str]:
        value = raw.get(key) or {}
        full = f"{path}.{key}"
        if not isinstance(value, Mapping):
            raise self.fail(full, value, "must be a mapping of strings to strings")
        for name, item in value.items():
            if not isinstance(name, str) or not isinstance(item, str) or not item:
                raise self.fail(f"{full}.{key_text(name)}", item, "must be a non-empty string")
        return dict(value)

    # sections

    def config(self, raw: Any) -> Config:
        top = self.section(
            raw,
            "",
            {"attribution", "carbon", "teams", "retention", "limits", "kubernetes", "slurm", "state", "receipts"},
        )
        return Config(
            attribution=self.attribution(top.get("attribution")),
            carbon=self.carbon(top.get("carbon")),
            teams=self.teams(top.get("teams")),
            retention=self.retention(top.get("retention")),
            limits=self.limits(top.get("limits")),
            kubernetes=self.kubernetes(top.get("kubernetes")),
            slurm=self.slurm(top.get("slurm")),
            state=self.state(top.get("state")),
            receipts=self.receipts(top.get("receipts")),
        )

    def attribution(self, raw: Any) -> AttributionConfig:
        sec = self.section(raw, "attribution", {"idle_watts"})
        value = sec.get("idle_watts")
        if value is None:
            return AttributionConfig()
        if isinstance(value, Mapping):
            by_gpu: dict[str, float] = {}
            for name, watts in value.items():
                if not is_number(watts) or not 0 <= watts < 1e5:
                    raise self.fail(f"attribution.idle_watts.{key_text(name)}", watts, "must be a number of watts >= 0")
                by_gpu[str(name)] = float(watts)
            return AttributionConfig(idle_watts_by_gpu=by_gpu)
        watts = self.number(sec, "idle_watts", "attribution", None, minimum=0.0)
        return AttributionConfig(idle_watts=watts)

    def carbon(self, raw: Any) -> CarbonConfig:
        sec = self.section(raw, "carbon", {"pue", "pue_by_zone", "intensity", "embodied", "cost"})
        embodied = self.section(sec.get("embodied"), "carbon.embodied", {"enabled", "lifetime", "kg_co2e_by_model"})
        cost = self.section(sec.get("cost"), "carbon.cost", {"price_per_kwh", "price_per_kwh_by_zone", "currency"})
        defaults = CarbonConfig()
        lifetime = self.number(embodied, "lifetime", "carbon.embodied", defaults.embodied_lifetime_years, minimum=0.1)
        return CarbonConfig(
            pue=self.number(sec, "pue", "carbon", defaults.pue, minimum=1.0, maximum=5.0),
            intensity=self.intensity(sec.get("intensity")),
            embodied_enabled=self.boolean(embodied, "enabled", "carbon.embodied", False),
            embodied_lifetime_years=lifetime,
            embodied_kg_by_model=self.number_map(embodied, "kg_co2e_by_model", "carbon.embodied", 0.001, 1e5),
            price_per_kwh=self.number(cost, "price_per_kwh", "carbon.cost", None, minimum=0.0),
            pue_by_zone=self.number_map(sec, "pue_by_zone", "carbon", 1.0, 5.0),
            price_by_zone=self.number_map(cost, "price_per_kwh_by_zone", "carbon.cost", 0.0, 1e6),
            currency=self.string(cost, "currency", "carbon.cost", defaults.currency),
        )

    def intensity(self, raw: Any) -> IntensityConfig:
        path = "carbon.intensity"
        if isinstance(raw, Mapping) and raw.get("source") == "static" and raw.get("grams_per_kwh") is None:
            raise self.fail(f"{path}.grams_per_kwh", MISSING, "required when source is static")
        sec = self.section(raw, path, INTENSITY_KEYS)
        if "token" in sec:
            raise self.fail(
                f"{path}.token", MISSING, "tokens are never read from the config file; use token_env or token_file"
            )
        d = IntensityConfig()
        source = self.string(sec, "source", path, d.source, INTENSITY_SOURCES)
        self.only_keys_of_source(sec, path, source)
        return IntensityConfig(
            source=source,
            zone=self.string(sec, "zone", path, d.zone),
            grams_per_kwh=self.number(sec, "grams_per_kwh", path, d.grams_per_kwh, minimum=0.0, maximum=5000.0),
            timeout=self.duration(sec, "timeout", path, d.timeout, minimum=0.1),
            signal_type=self.string(sec, "signal_type", path, d.signal_type, ("co2_moer", "co2_aoer")),
            refresh=self.duration(sec, "refresh", path, None, minimum=1.0),
            stale_after=self.duration(sec, "stale_after", path, d.stale_after, minimum=1.0),
            base_url=self.string(sec, "base_url", path, None),
            token_env=self.string(sec, "token_env", path, None),
            token_file=self.string(sec, "token_file", path, None),
            username_env=self.string(sec, "username_env", path, None),
            password_env=self.string(sec, "password_env", path, None),
            region=self.string(sec, "region", path, None),
        )

    def teams(self, raw: Any) -> TeamRules:
        path = "teams"
        sec = self.section(raw, path, {"default", "pod_label", "namespace_label", "namespaces", "workloads", "users"})
        d = TeamRules()
        patterns = []
        workloads = sec.get("workloads") or []
        if not isinstance(workloads, list):
            raise self.fail(f"{path}.workloads", workloads, "must be a list of {match: regex, team: name}")
        for i, rule in enumerate(workloads):
            rule = self.section(rule, f"{path}.workloads[{i}]", {"match", "team"})
            regex = self.string(rule, "match", f"{path}.workloads[{i}]", None)
            team = self.string(rule, "team", f"{path}.workloads[{i}]", None)
            if regex is None or team is None:
                raise self.fail(f"{path}.workloads[{i}]", MISSING, "needs both match and team")
            try:
                re.compile(regex)
            except (re.error, OverflowError, RecursionError, ValueError) as err:
                raise self.fail(f"{path}.workloads[{i}].match", regex, f"invalid regex: {err}") from None
            patterns.append((regex, team))
        try:
            return TeamRules(
                default=self.string(sec, "default", path, d.default),
                pod_label=self.string(sec, "pod_label", path, d.pod_label),
                namespace_label=self.string(sec, "namespace_label", path, d.namespace_label),
                namespaces=self.string_map(sec, "namespaces", path),
                workload_patterns=tuple(patterns),
                users=self.string_map(sec, "users", path),
            )
        except ValueError as err:  # e.g. a default with no printable character
            raise ConfigError(self.source, "", MISSING, str(err)) from None

    def retention(self, raw: Any) -> RetentionConfig:
        sec = self.section(raw, "retention", {"finished"})
        return RetentionConfig(finished=self.duration(sec, "finished", "retention", RetentionConfig().finished))

    def limits(self, raw: Any) -> LimitsConfig:
        sec = self.section(raw, "limits", {"max_workload_series", "gpu_read_timeout"})
        d = LimitsConfig()
        return LimitsConfig(
            max_workload_series=self.integer(sec, "max_workload_series", "limits", d.max_workload_series, 1),
            gpu_read_timeout=self.duration(sec, "gpu_read_timeout", "limits", d.gpu_read_timeout, 0.01),
        )

    def only_keys_of_source(self, sec: Mapping[str, Any], path: str, source: str) -> None:
        read = INTENSITY_KEYS_BY_SOURCE[source] | {"source", "zone"}
        for key in sorted(sec.keys() - read):
            readers = [name for name, keys in INTENSITY_KEYS_BY_SOURCE.items() if key in keys]
            raise self.fail(
                f"{path}.{key}", sec[key], f"source {source!r} does not read it (read by: {', '.join(readers)})"
            )

    def kubernetes(self, raw: Any) -> KubernetesConfig:
        path = "kubernetes"
        sec = self.section(raw, path, {"enabled", "node_name", "kubeconfig", "podresources", "owners"})
        pr = self.section(sec.get("podresources"), f"{path}.podresources", {"enabled", "socket", "interval"})
        owners = self.section(sec.get("owners"), f"{path}.owners", {"follow", "max_depth"})
        d = KubernetesConfig()
        return KubernetesConfig(
            enabled=self.boolean(sec, "enabled", path, d.enabled),
            node_name=self.string(sec, "node_name", path, None),
            kubeconfig=self.string(sec, "kubeconfig", path, None),
            podresources_enabled=self.boolean(pr, "enabled", f"{path}.podresources", d.podresources_enabled),
            podresources_socket=self.string(pr, "socket", f"{path}.podresources", d.podresources_socket),
            podresources_interval=self.duration(pr, "interval", f"{path}.podresources", d.podresources_interval, 0.1),
            owners_follow=self.kinds(owners, "follow", f"{path}.owners", d.owners_follow),
            owners_max_depth=self.integer(owners, "max_depth", f"{path}.owners", d.owners_max_depth, 1),
        )

    def kinds(self, sec: Mapping[str, Any], key: str, path: str, default: tuple[str, ...]) -> tuple[str, ...]:
        raw = sec.get(key)
        if raw is None:
            return default
        if not isinstance(raw, list):
            raise self.fail(f"{path}.{key}", raw, "must be a list of kinds, e.g. [ReplicaSet, Job, RayCluster]")
        for i, kind in enumerate(raw):
            if not isinstance(kind, str) or not _KIND.fullmatch(kind) or kind in ("Node", "Pod"):
                raise self.fail(f"{path}.{key}[{i}]", kind, "must be the Kind of an owner object, e.g. RayCluster")
        return tuple(dict.fromkeys(raw))

    def slurm(self, raw: Any) -> SlurmConfig:
        sec = self.section(raw, "slurm", {"enabled", "scontrol", "node"})
        d = SlurmConfig()
        return SlurmConfig(
            enabled=self.boolean(sec, "enabled", "slurm", d.enabled),
            scontrol=self.string(sec, "scontrol", "slurm", d.scontrol),
            node=self.string(sec, "node", "slurm", d.node),
        )

    def state(self, raw: Any) -> StateConfig:
        sec = self.section(raw, "state", {"dir", "interval"})
        d = StateConfig()
        return StateConfig(
            dir=self.string(sec, "dir", "state", None),
            interval=self.duration(sec, "interval", "state", d.interval, 1.0),
        )

    def receipts(self, raw: Any) -> ReceiptSettings:
        path = "receipts"
        sec = self.section(
            raw,
            path,
            {"enabled", "processes", "offset_price_per_tonne", "repeat_window", "memory", "events", "file", "webhook"},
        )
        files = self.section(sec.get("file"), f"{path}.file", {"max_bytes", "keep"})
        d = ReceiptSettings()
        enabled = self.boolean(sec, "enabled", path, d.enabled)
        webhook = self.webhook(sec.get("webhook"))
        if webhook is not None and not enabled:
            raise self.fail(f"{path}.webhook.url", webhook.url, "does nothing while receipts.enabled is false")
        return ReceiptSettings(
            enabled=enabled,
            processes=self.boolean(sec, "processes", path, d.processes),
            offset_price_per_tonne=self.number(
                sec, "offset_price_per_tonne", path, d.offset_price_per_tonne, minimum=0.0, maximum=1e6
            ),
            repeat_window_s=self.duration(sec, "repeat_window", path, d.repeat_window_s, minimum=1.0),
            memory=self.integer(sec, "memory", path, d.memory, 1),
            events=self.boolean(sec, "events", path, d.events),
            file_max_bytes=self.integer(files, "max_bytes", f"{path}.file", d.file_max_bytes, 4096),
            file_keep=self.integer(files, "keep", f"{path}.file", d.file_keep, 0),
            webhook=webhook,
        )

    def webhook(self, raw: Any) -> WebhookSettings | None:
        path = "receipts.webhook"
        if isinstance(raw, Mapping) and "token" in raw:
            raise self.fail(
                f"{path}.token", MISSING, "tokens are never read from the config file; use token_env or token_file"
            )
        sec = self.section(raw, path, {"url", "token_env", "token_file", "timeout", "outbox_size"})
        if not sec:
            return None
        url = self.string(sec, "url", path, None)
        if url is None:
            raise self.fail(f"{path}.url", MISSING, "required when receipts.webhook is set")
        if not re.fullmatch(r"https?://[^\s/]+(/\S*)?", url):
            raise self.fail(f"{path}.url", url, "must be an http:// or https:// URL")
        token_env = self.string(sec, "token_env", path, None)
        token_file = self.string(sec, "token_file", path, None)
        if token_env and token_file:
            raise self.fail(f"{path}.token_file", token_file, "set token_env or token_file, not both")
        return WebhookSettings(
            url=url,
            token_env=token_env,
            token_file=token_file,
            timeout_s=self.duration(sec, "timeout", path, 10.0, minimum=0.1),
            outbox_size=self.integer(sec, "outbox_size", path, 1000, 1),
        )
