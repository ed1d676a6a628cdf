"""A month of a simulated fleet in a real Prometheus, fast.

The simulation's nodes run through the daemon's own pipeline (backend ->
poller -> ledger -> snapshot -> collector) on a hand-moved clock: one poll per
scrape interval, no sleeping, no HTTP. Every scrape's samples go into one
OpenMetrics file with timestamps, which `promtool tsdb create-blocks-from
openmetrics` turns into TSDB blocks; `promtool tsdb create-blocks-from rules`
then evaluates prometheus/rules/gpucarbon-recording.yaml over them (rules that
read other rules in a second pass, as promtool's docs require).

Ground truth comes from the simulation itself, not from the daemon: each GPU's
exact energy between allocation boundaries (its energy counter integrates the
power model exactly) and each workload's held time from the scenario.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import multiprocessing
import shutil
import subprocess
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from clientpython import FamiliesCollector
from procs import (
    ROOT,
    backfill_openmetrics,
    backfill_rules,
    free_port,
    http_get,
    move_blocks,
    prometheus_binary,
    wait_until,
)

from gpucarbon.app import RunOptions, build_daemon
from gpucarbon.clock import ManualClock
from gpucarbon.config import load_config
from gpucarbon.exporter.collector import SnapshotCollector
from gpucarbon.simulation import SimTime, SimulatedGpus
from gpucarbon.simulation.gpu import gpu_uuids
from gpucarbon.simulation.scenario import Scenario, parse_scenario

DAY = 86400
SCRAPE_S = 120  # scrape (= poll) interval; the rules' [5m] windows see 2-3 samples
RULES = ROOT / "prometheus" / "rules" / "gpucarbon-recording.yaml"
CLUSTER = "sim-eu"
# What the report reads; the other families (temperatures, memory...) would
# only make the file bigger.
FAMILIES = {
    "gpucarbon_build_info",
    "gpucarbon_pue_ratio",
    "gpucarbon_grid_carbon_intensity_grams_per_kwh",
    "gpucarbon_gpu_idle_power_watts",
    "gpucarbon_gpu_energy_joules",
    "gpucarbon_gpu_unattributed_energy_joules",
    "gpucarbon_gpu_emissions_grams",
    "gpucarbon_workload_energy_joules",
    "gpucarbon_workload_emissions_grams",
    "gpucarbon_workload_held_seconds",
    "gpucarbon_workload_busy_seconds",
    "gpucarbon_workload_energy_cost",
    "gpucarbon_team_energy_joules",
    "gpucarbon_team_emissions_grams",
    "gpucarbon_team_energy_cost",
}
# Inference servers expose their own token counter; vLLM's is documented at
# https://docs.vllm.ai/en/latest/serving/metrics.html (vllm:generation_tokens_total).
# The fake vLLM beside the simulated llm-api pod generates tokens in proportion
# to the pod's SM utilization; Prometheus' Kubernetes discovery adds namespace and pod.
TOKENS_FAMILY = "vllm:generation_tokens"
TOKENS_PER_UTIL_SECOND = 2500.0  # tokens/s at 100% SM utilization
INFERENCE_WORKLOADS = {"Deployment/llm-api"}
CONFIG = {"carbon": {"pue": 1.2, "cost": {"price_per_kwh": 0.25, "currency": "EUR"}}}


def _w(ns, name, team, gpus, start_d, end_d, util, **extra):
    return {
        "namespace": ns,
        "pod": name.split("/")[-1].lower() + "-0",
        "container": "main",
        "workload": name,
        "team": team,
        "gpus": gpus,
        "start": int(start_d * DAY),
        "end": None if end_d is None else int(end_d * DAY),
        "sm_util": util,
        **extra,
    }


def _diurnal(days: int, busy: float, quiet: float) -> list[list[float]]:
    """Busy from 08:00 to 20:00, quiet otherwise, every day."""
    return [
        step
        for d in range(days)
        for step in ([d * DAY, quiet], [d * DAY + 8 * 3600, busy], [d * DAY + 20 * 3600, quiet])
    ]


def fleet(days: int = 30) -> dict[str, Scenario]:
    """Three nodes, three teams; every GPU has at most one holder at a time, so
    each joule's owner is unambiguous in the ground truth."""
    h100 = {"model": "NVIDIA H100 80GB HBM3", "idle_watts": 70, "context_watts": 118, "max_watts": 700}
    a100 = {"model": "NVIDIA A100-SXM4-80GB", "idle_watts": 55, "context_watts": 90, "max_watts": 400}
    l4 = {"model": "NVIDIA L4", "idle_watts": 16, "context_watts": 28, "max_watts": 72}
    sweeps = [
        _w("vision", f"Job/resnet-sweep-{i}", "vision", [0], 2 * i + 0.25, 2 * i + 1.25, 0.8) for i in range(days // 2)
    ]
    nodes = {
        "gpu-node-a": {
            "gpus": [{**h100, "count": 2}],
            "workloads": [
                _w("research", "Job/llm-pretrain-1", "nlp", [0], 0, 9, [[0, 0.92], [3 * DAY, 0.85]]),
                _w("research", "Job/llm-pretrain-2", "nlp", [0], 9.25, 20, 0.9),
                _w("research", "PyTorchJob/llama-ft", "nlp", [0], 21, max(days, 22), 0.95),
                _w("serving", "Deployment/llm-api", "platform", [1], 0, None, _diurnal(days, 0.6, 0.15)),
            ],
        },
        "gpu-node-b": {
            "gpus": [{**a100, "count": 2}],
            "workloads": sweeps
            + [
                _w("research", "RayCluster/research-ray", "nlp", [1], 0, 10, 0.0, allocated_only=True),
                _w("vision", "StatefulSet/notebook-alice", "vision", [1], 10, 18, 0.0),
                _w("research", "PyTorchJob/llama-ft", "nlp", [1], 21, max(days, 22), 0.95),
            ],
        },
        "gpu-node-c": {
            "gpus": [{**l4, "count": 2}],
            "workloads": [
                _w("batch", f"Job/embeddings-nightly-{d}", "platform", [0], d + 1 / 24, d + 3 / 24, 0.85)
                for d in range(days)
            ]
            + [
                _w("serving", "Deployment/reranker", "platform", [1], 5, 25, 0.4),
            ],
        },
    }
    for spec in nodes.values():  # a shorter fleet (quick runs) keeps what starts in time
        spec["workloads"] = [
            w for w in spec["workloads"] if w["start"] < days * DAY and (w["end"] is None or w["end"] > w["start"])
        ]
    return {
        name: parse_scenario(yaml.safe_dump({"seed": i + 1, **spec}), name)
        for i, (name, spec) in enumerate(nodes.items())
    }


@dataclass
class GroundTruth:
    """Per team: exact GPU energy (J) and held GPU-seconds from the simulation;
    emissions (g) as the daemon booked them (the carbon model is the daemon's)."""

    energy_j: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    held_s: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    grams: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    unattributed_j: float = 0.0
    total_j: float = 0.0
    samples: int = 0
    tokens: dict[str, float] = field(default_factory=lambda: defaultdict(float))  # "namespace/pod" -> tokens


def exact_energy(scenario: Scenario, end_s: float, truth: GroundTruth) -> None:
    """Read a fresh simulated node at every allocation boundary: the counter
    difference between two boundaries belongs to the one holder in between."""
    for g, uuid in enumerate(gpu_uuids(scenario)):
        holders = [w for w in scenario.workloads if g in w.gpus]
        edges = sorted({0.0, end_s} | {t for w in holders for t in (w.start, w.end) if t is not None and t < end_s})
        clock = ManualClock(start=0.0)
        fresh = SimulatedGpus(scenario, SimTime(clock, clock.monotonic()))
        last = fresh.read_gpu(uuid).energy_mj
        for a, b in itertools.pairwise(edges):
            clock.advance(b - a)
            now = fresh.read_gpu(uuid).energy_mj
            owner = next((w for w in holders if w.running_at((a + b) / 2)), None)
            joules = (now - last) / 1000.0
            truth.total_j += joules
            if owner is None:
                truth.unattributed_j += joules
            else:
                truth.energy_j[owner.team] += joules
                truth.held_s[owner.team] += b - a
            last = now


def _labels(names, values, extra: dict[str, str]) -> str:
    pairs = list(zip(names, values, strict=True)) + list(extra.items())
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in pairs) + "}"


def _escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class InlineExecutor(concurrent.futures.ThreadPoolExecutor):
    """Runs each GPU read in the calling thread: with a hand-moved clock nothing
    can hang, and a month of polls spends its time simulating, not handing
    work to threads."""

    def submit(self, fn, /, *args, **kwargs):
        future: concurrent.futures.Future = concurrent.futures.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as err:  # noqa: BLE001 - handed to the awaiting poller
            future.set_exception(err)
        return future


async def _scrape_node(
    name: str,
    scenario: Scenario,
    config,
    start_wall: float,
    end_s: float,
    sinks: dict[str, list[str]],
    types: dict[str, str],
    truth: GroundTruth,
) -> None:
    asyncio.get_running_loop().set_default_executor(InlineExecutor(max_workers=1))
    clock = ManualClock(start=1000.0, wall_start=start_wall)
    daemon = build_daemon(config, RunOptions(scenario=scenario, poll_interval_s=SCRAPE_S), base_clock=clock)
    poller = daemon.poller
    collector = FamiliesCollector(SnapshotCollector(lambda: poller.snapshot).families)
    target = {"cluster": CLUSTER, "instance": f"{name}:9789", "job": "gpu-carbon-exporter", "node": name}
    prefixes: dict[tuple, str] = {}  # (sample name, label values) -> 'name{labels} '
    servers = [w for w in scenario.workloads if w.workload in INFERENCE_WORKLOADS]
    t = 0.0
    while True:
        await poller.poll()
        ts = f"{clock.wall():.3f}"
        for w in servers:
            _serve_tokens(w, t, name, ts, sinks, types, truth)
        for family in collector.collect():
            if family.name not in FAMILIES:
                continue
            types[family.name] = family.type
            sink = sinks[family.name]
            for s in family.samples:
                key = (s.name, tuple(s.labels.items()))
                prefix = prefixes.get(key)
                if prefix is None:
                    prefix = prefixes[key] = f"{s.name}{_labels(s.labels.keys(), s.labels.values(), target)} "
                sink.append(f"{prefix}{s.value!r} {ts}\n")
                truth.samples += 1
        if t >= end_s:
            break
        clock.advance(SCRAPE_S)
        t += SCRAPE_S
    for team in poller.snapshot.teams:
        truth.grams[team.team] += team.grams


def _serve_tokens(w, t: float, node: str, ts: str, sinks, types, truth: GroundTruth) -> None:
    """The fake vLLM's counter at simulated second t (a step per scrape interval)."""
    key = f"{w.namespace}/{w.pod}"
    if t > 0 and w.running_at(t - SCRAPE_S / 2):
        truth.tokens[key] += TOKENS_PER_UTIL_SECOND * w.util_at(t - SCRAPE_S / 2) * SCRAPE_S
    labels = {
        "model_name": "meta-llama/Llama-3.1-8B-Instruct",
        "namespace": w.namespace,
        "pod": w.pod,
        "instance": f"{w.pod}:8000",
        "job": "vllm",
        "cluster": CLUSTER,
        "node": node,
    }
    types[TOKENS_FAMILY] = "counter"
    sinks[TOKENS_FAMILY].append(
        f"{TOKENS_FAMILY}_total{_labels(labels.keys(), labels.values(), {})} {truth.tokens[key]!r} {ts}\n"
    )


def _node(name: str, days: int, start_wall: float, config_path: str, out: Path) -> tuple[dict, dict]:
    """One node's month, in its own process: samples to out/<family>, and
    (family types, ground truth) back to the parent."""
    scenario = fleet(days)[name]
    truth = GroundTruth()
    sinks: dict[str, list[str]] = defaultdict(list)
    types: dict[str, str] = {}
    end_s = days * DAY
    asyncio.run(_scrape_node(name, scenario, load_config(config_path), start_wall, end_s, sinks, types, truth))
    exact_energy(scenario, end_s, truth)
    out.mkdir(parents=True)
    for family, lines in sinks.items():
        (out / family).write_text("".join(lines))
    return types, {k: (dict(v) if isinstance(v, dict) else v) for k, v in vars(truth).items()}


def write_openmetrics(path: Path, start_wall: float, days: int, config_path: Path) -> GroundTruth:
    """Scrape every node of the fleet for `days` (one process per node) into
    one OpenMetrics file, families grouped as the format requires."""
    config_path.write_text(yaml.safe_dump(CONFIG))
    load_config(str(config_path))  # a bad CONFIG fails here, not in a child
    names = list(fleet(days))
    parts = path.parent / "nodes"
    context = multiprocessing.get_context("fork")
    with concurrent.futures.ProcessPoolExecutor(len(names), mp_context=context) as pool:
        results = list(
            pool.map(
                _node,
                names,
                [days] * len(names),
                [start_wall] * len(names),
                [str(config_path)] * len(names),
                [parts / n for n in names],
            )
        )
    truth = GroundTruth()
    types: dict[str, str] = {}
    for node_types, node_truth in results:
        types.update(node_types)
        for key in ("energy_j", "held_s", "grams", "tokens"):
            for team, value in node_truth[key].items():
                getattr(truth, key)[team] += value
        truth.unattributed_j += node_truth["unattributed_j"]
        truth.total_j += node_truth["total_j"]
        truth.samples += node_truth["samples"]
    with path.open("w") as out:
        for family, kind in types.items():
            out.write(f"# TYPE {family} {kind}\n")
            for name in names:
                part = parts / name / family
                if part.exists():
                    with part.open() as src:
                        shutil.copyfileobj(src, out)
        out.write("# EOF\n")
    shutil.rmtree(parts)
    return truth


def split_rules(rules: Path, out_dir: Path) -> list[Path]:
    """Pass 1: rules over the daemon's series; pass 2: rules over rules.
    Each group keeps its own `interval`: `promtool tsdb create-blocks-from
    rules` evaluates a group at its interval and only groups without one at
    --eval-interval, so the hourly and daily rollups hold one sample per hour
    and per day, as on a live Prometheus, and their sums add up to the period."""
    doc = yaml.safe_load(rules.read_text())
    recorded = {r["record"] for g in doc["groups"] for r in g["rules"] if "record" in r}
    passes: list[dict[str | None, list[dict]]] = [defaultdict(list), defaultdict(list)]
    for group in doc["groups"]:
        for rule in group["rules"]:
            if "record" in rule:
                passes[any(name in rule["expr"] for name in recorded)][group.get("interval")].append(rule)
    files = []
    for i, by_interval in enumerate(passes):
        if by_interval:
            groups = [
                {"name": f"pass{i + 1}-{interval or 'default'}", "rules": rules_in_group}
                | ({"interval": interval} if interval else {})
                for interval, rules_in_group in by_interval.items()
            ]
            path = out_dir / f"rules-pass{i + 1}.yaml"
            path.write_text(yaml.safe_dump({"groups": groups}))
            files.append(path)
    return files


class BackfilledPrometheus:
    """Prometheus serving a data directory that promtool filled; no scraping."""

    def __init__(self, data: Path, workdir: Path) -> None:
        self.data = data
        self.port = free_port()
        config = workdir / "prometheus.yml"
        config.write_text("global: {evaluation_interval: 1m}\n")
        self.log = workdir / f"prometheus-{self.port}.log"
        self.proc = subprocess.Popen(
            [
                prometheus_binary(),
                f"--config.file={config}",
                f"--storage.tsdb.path={data}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=10y",
                "--query.max-samples=200000000",
                "--web.enable-admin-api",  # TSDB snapshots, for tests that copy the data elsewhere
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(self.log, "wb"),
        )
        self.url = f"http://127.0.0.1:{self.port}"
        wait_until(lambda: self._ready(), 120, "prometheus ready")

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited: {self.log.read_text()[-2000:]}")
        return http_get(self.url + "/-/ready")[0] == 200

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def backfill(workdir: Path, start_wall: float, days: int) -> tuple[Path, GroundTruth]:
    """Raw blocks, then rule blocks pass by pass; returns the data directory."""
    data = workdir / "data"
    data.mkdir(parents=True)
    metrics = workdir / "fleet.om"
    truth = write_openmetrics(metrics, start_wall, days, workdir / "gpucarbon.yaml")
    backfill_openmetrics(metrics, data, "720h")
    metrics.unlink()  # hundreds of MB, not needed once in blocks
    end_wall = start_wall + days * DAY
    for rules in split_rules(RULES, workdir):
        prom = BackfilledPrometheus(data, workdir)
        try:
            blocks = backfill_rules(prom.url, start_wall, end_wall, rules, workdir)
        finally:
            prom.stop()
        move_blocks(blocks, data)
    return data, truth
