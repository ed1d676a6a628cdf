"""Simulated fleets as Prometheus would have scraped them, written as
OpenMetrics with timestamps for `promtool tsdb create-blocks-from openmetrics`.

Shared by bench/fleet.py (the sizing bench) and any test that needs a
backfilled fleet: import it with `bench/` on sys.path.

How it stays fast without running N daemons:
- `node_scenario(seed, ...)` draws a node: GPU count and model, a workload mix
  (training jobs that come and go, serving deployments with a daily cycle,
  notebooks held idle, allocated-never-started pods), teams and namespaces
  from fixed pools, all from the seed.
- `scrape_node(...)` runs the daemon's own pipeline (reader -> accountant ->
  ledger -> snapshot -> collector, via app.build_daemon) over that scenario on
  a hand-moved clock: one poll per scrape, no sleeping, no HTTP, no threads.
- A fleet of N nodes runs K such template nodes through the pipeline and
  stamps out the rest as relabelled copies: node i is template i mod K under
  its own node/instance/pod/UUID names (workload names suffixed with the
  node). Series count, churn and samples per node are the simulation's; copies
  of one template share its values, which only makes them compress alike.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import random
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "daemon"))

from gpucarbon.app import RunOptions, build_daemon  # noqa: E402
from gpucarbon.clock import ManualClock  # noqa: E402
from gpucarbon.config import Config, load_config  # noqa: E402
from gpucarbon.exporter.collector import SnapshotCollector  # noqa: E402
from gpucarbon.simulation.scenario import Scenario, parse_scenario  # noqa: E402

HOUR = 3600.0
DAY = 86400.0
GPU_MODELS = (
    {"model": "NVIDIA H100 80GB HBM3", "idle_watts": 70, "context_watts": 118, "max_watts": 700},
    {"model": "NVIDIA A100-SXM4-80GB", "idle_watts": 55, "context_watts": 90, "max_watts": 400},
    {"model": "NVIDIA L4", "idle_watts": 16, "context_watts": 28, "max_watts": 72},
)
TEAMS = tuple(f"team-{i:02d}" for i in range(12))
NAMESPACES = tuple(f"ns-{i:02d}" for i in range(30))


def node_scenario(seed: int, period_s: float, gpus: int | None = None, max_workloads: int = 16) -> Scenario:
    """One node's scenario over [0, period_s): a GPU count of 8 (most nodes),
    4 or 2, and per GPU a mix drawn from the seed; at most `max_workloads`
    concurrent holders (the typical node of docs/scale.md)."""
    rng = random.Random(seed)
    count = gpus or rng.choice((8, 8, 8, 4, 2))
    model = GPU_MODELS[0] if rng.random() < 0.6 else rng.choice(GPU_MODELS)
    workloads: list[dict] = []

    def add(g: list[int], name: str, start: float, end: float | None, util, **extra) -> None:
        ns, team = rng.choice(NAMESPACES), rng.choice(TEAMS)
        pod = f"{name.split('/')[-1].lower()}-{len(workloads)}"
        workloads.append(
            {
                "namespace": ns,
                "pod": pod,
                "container": "main",
                "workload": name,
                "team": team,
                "gpus": g,
                "start": round(start),
                "end": None if end is None else round(end),
                "sm_util": util,
                **extra,
            }
        )

    for g in range(count):
        kind = rng.random()
        if kind < 0.55:  # batch training: jobs of 1-12 h back to back with gaps
            t = rng.uniform(0, 2 * HOUR)
            while t < period_s:
                length = rng.uniform(1, 12) * HOUR
                add(
                    [g],
                    f"Job/train-{seed}-{g}-{int(t)}",
                    t,
                    min(t + length, period_s + HOUR),
                    round(rng.uniform(0.6, 0.98), 2),
                )
                t += length + rng.uniform(0.1, 2) * HOUR
        elif kind < 0.75:  # serving: busy by day, quiet by night, every day
            steps = [
                [d * DAY + h * HOUR, u]
                for d in range(int(period_s // DAY) + 1)
                for h, u in ((0, 0.15), (8, 0.7), (20, 0.15))
            ]
            add([g], f"Deployment/serve-{seed % 7}", 0, None, steps)
        elif kind < 0.85:  # a notebook holding the GPU open, idle
            add([g], f"StatefulSet/notebook-{seed}-{g}", 0, None, 0.0)
        elif kind < 0.92:  # allocated, never started
            add([g], f"RayCluster/ray-{seed}", 0, None, 0.0, allocated_only=True)
        # else: unallocated
    if count >= 4 and rng.random() < 0.3:  # a multi-GPU job across half the node, for a day
        add(list(range(count // 2)), f"PyTorchJob/ft-{seed}", 0.25 * period_s, 0.25 * period_s + DAY, 0.9)
    workloads = workloads[: max(max_workloads * 8, 1)]
    return parse_scenario(
        yaml.safe_dump({"seed": seed, "gpus": [{**model, "count": count}], "workloads": workloads}), f"node-{seed}"
    )


class _InlineExecutor(concurrent.futures.ThreadPoolExecutor):
    """Each GPU read in the calling thread: a hand-moved clock cannot hang."""

    def submit(self, fn, /, *args, **kwargs):
        future: concurrent.futures.Future = concurrent.futures.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as err:  # noqa: BLE001 - handed to the awaiting poller
            future.set_exception(err)
        return future


@dataclass(frozen=True)
class Series:
    """One series of one template node over the period."""

    name: str  # sample name
    kind: str  # family type
    labels: tuple[tuple[str, str], ...]
    points: list[tuple[float, float]]  # (unix seconds, value)


def scrape_node(
    scenario: Scenario, start_wall: float, period_s: float, scrape_s: float, config: Config | None = None
) -> tuple[dict[str, str], list[Series]]:
    """Poll the scenario through the daemon's pipeline once per scrape and keep
    what a scrape would have seen: family types and every series' points."""
    config = config or load_config(None)

    async def run() -> tuple[dict[str, str], list[Series]]:
        asyncio.get_running_loop().set_default_executor(_InlineExecutor(max_workers=1))
        clock = ManualClock(start=1000.0, wall_start=start_wall)
        daemon = build_daemon(config, RunOptions(scenario=scenario, poll_interval_s=scrape_s), base_clock=clock)
        collector = SnapshotCollector(lambda: daemon.poller.snapshot)
        types: dict[str, str] = {}
        series: dict[tuple[str, tuple], Series] = {}
        t = 0.0
        while t <= period_s:
            await daemon.poller.poll()
            now = clock.wall()
            for family in collector.families():
                types[family.name if family.kind != "histogram" else family.base] = family.kind
                for sample_name, names, values, value in family.rows:
                    key = (sample_name, values)
                    s = series.get(key)
                    if s is None:
                        s = series[key] = Series(sample_name, family.kind, tuple(zip(names, values, strict=True)), [])
                    s.points.append((now, float(value)))
            clock.advance(scrape_s)
            t += scrape_s
        return types, list(series.values())

    return asyncio.run(run())


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


# Labels a copy renames so that its series are its own (pods and workloads are
# per node in a real fleet; GPUs have their own UUIDs).
_PER_NODE = {"uuid", "pod", "workload"}


def node_lines(template: list[Series], node: str, cluster: str) -> Iterator[tuple[str, list[str]]]:
    """One fleet node as (sample name, OpenMetrics lines) per series: the
    template relabelled for `node` (its own GPU UUIDs, pods and workloads)."""
    target = f'cluster="{cluster}",instance="{node}:9789",job="gpu-carbon-exporter",node="{node}"'
    for s in template:
        pairs = [f'{k}="{_escape(v + "-" + node if k in _PER_NODE else v)}"' for k, v in s.labels]
        prefix = f"{s.name}{{{','.join([*pairs, target])}}} "
        yield s.name, [prefix + point for point in _points(s)]


_POINTS: dict[int, list[str]] = {}


def _points(s: Series) -> list[str]:
    """'value timestamp\\n' per point, formatted once per template series."""
    text = _POINTS.get(id(s))
    if text is None:
        text = _POINTS[id(s)] = [f"{v!r} {ts:.3f}\n" for ts, v in s.points]
    return text


def write_openmetrics(path: Path, types: dict[str, str], nodes: list[tuple[list[Series], str]], cluster: str) -> int:
    """Nodes' series into one OpenMetrics file, families grouped as the format
    requires. Returns the number of samples written."""
    by_family: dict[str, list[str]] = {name: [] for name in types}
    samples = 0
    for template, node in nodes:
        for sample_name, lines in node_lines(template, node, cluster):
            by_family[_family_of(sample_name, types)].extend(lines)
            samples += len(lines)
    with path.open("w") as out:
        for family, kind in types.items():
            if by_family[family]:
                out.write(f"# TYPE {_om_name(family, kind)} {kind}\n")
                out.writelines(by_family[family])
        out.write("# EOF\n")
    return samples


def _om_name(family: str, kind: str) -> str:
    return family.removesuffix("_total") if kind == "counter" else family


def _family_of(sample_name: str, types: dict[str, str]) -> str:
    if sample_name in types:
        return sample_name
    for suffix in ("_bucket", "_count", "_sum"):
        base = sample_name.removesuffix(suffix)
        if base != sample_name and base in types:
            return base
    raise KeyError(sample_name)
