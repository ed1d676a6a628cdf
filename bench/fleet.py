"""Size a fleet: simulated nodes backfilled into a real Prometheus, the
recording rules evaluated over them, every dashboard query timed.

    python bench/fleet.py --nodes 3,9,27 --days 1 --scrape 60 [--templates 4] [--workdir DIR]
                          [--dashboards DIR]   # e.g. an older revision's, to compare

For each fleet size: write N simulated nodes' exposition over the period
(bench/simfleet.py: the daemon's own pipeline over seeded scenarios), backfill
it with `promtool tsdb create-blocks-from openmetrics`, evaluate
prometheus/rules/gpucarbon-recording.yaml over the same period with `promtool
tsdb create-blocks-from rules` (one pass: no rule reads another), start
Prometheus on the result and run every query of every dashboard (variables
All, then one team) over ranges of 6 h, 1 day and the whole period, the way
Grafana would (instant queries at the range's end, range queries with
Grafana's step), with stats=all; ranges of a week or more also with the
boards' "Totals from" ($rollup) set to the daily rollups (keys ".../1d"). Prints series per node, samples, TSDB bytes
per node-day, and per dashboard the latency p50/p95/max and the most samples
any one query read per node-day. A JSON copy goes to <workdir>/fleet-<N>-<checkout>.json.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import math
import os
import pickle
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import simfleet  # noqa: E402

ROOT = simfleet.ROOT
sys.path.insert(0, str(ROOT / "tests"))
from dashboards import DEFAULT_SUBSTITUTIONS, load_dashboards, panel_queries  # noqa: E402
from procs import backfill_openmetrics, backfill_rules, free_port, move_blocks, wait_until  # noqa: E402

RULES = ROOT / "prometheus" / "rules" / "gpucarbon-recording.yaml"
CLUSTER = "bench"
START_WALL = 1_767_225_600.0  # 2026-01-01T00:00:00Z, so blocks are in the past
NODES_PER_FILE = 4  # OpenMetrics text per promtool run: bounded disk, not one huge file


def _template(seed: int, days: float, scrape_s: float) -> tuple[dict, list]:
    scenario = simfleet.node_scenario(seed, days * simfleet.DAY)
    return simfleet.scrape_node(scenario, START_WALL, days * simfleet.DAY, scrape_s)


def templates(count: int, days: float, scrape_s: float, cache: Path) -> list[tuple[dict, list]]:
    """K template nodes through the daemon's pipeline (cached between runs)."""
    path = cache / f"templates-{count}-{days}-{scrape_s}.pickle"
    if path.exists():
        return pickle.loads(path.read_bytes())
    with concurrent.futures.ProcessPoolExecutor(min(2, count)) as pool:
        out = list(pool.map(_template, range(1, count + 1), [days] * count, [scrape_s] * count))
    path.write_bytes(pickle.dumps(out))
    return out


class Prometheus:
    """Prometheus serving a backfilled data directory; no scraping."""

    def __init__(self, data: Path, workdir: Path) -> None:
        self.port = free_port()
        config = workdir / "prometheus.yml"
        config.write_text("global: {evaluation_interval: 1m}\n")
        self.log = open(workdir / "prometheus.log", "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={config}",
                f"--storage.tsdb.path={data}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=10y",
                "--query.timeout=10m",
                "--query.max-samples=500000000",
                "--log.level=warn",
            ],
            stdout=subprocess.DEVNULL,
            stderr=self.log,
        )
        self.url = f"http://127.0.0.1:{self.port}"
        wait_until(self._ready, 300, "prometheus ready", interval=0.5)

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise SystemExit(f"prometheus exited {self.proc.returncode}; see {self.log.name}")
        try:
            return urllib.request.urlopen(self.url + "/-/ready", timeout=2).status == 200
        except OSError:
            return False

    def get(self, path: str, params: dict) -> tuple[float, dict]:
        url = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        started = time.perf_counter()
        with urllib.request.urlopen(url, timeout=900) as response:
            body = json.loads(response.read())
        return time.perf_counter() - started, body

    def rss_mib(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        return 0.0

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def backfill(nodes: int, tmpl: list, data: Path, work: Path) -> int:
    """Raw blocks for `nodes` relabelled template copies; returns samples."""
    types: dict[str, str] = {}
    for t, _ in tmpl:
        types.update(t)
    samples = 0
    for first in range(0, nodes, NODES_PER_FILE):
        batch = [(tmpl[i % len(tmpl)][1], f"node-{i:04d}") for i in range(first, min(nodes, first + NODES_PER_FILE))]
        om = work / "batch.om"
        samples += simfleet.write_openmetrics(om, types, batch, CLUSTER)
        out = work / "raw-blocks"
        backfill_openmetrics(om, out, "24h")
        om.unlink()
        move_blocks(out, data)
    return samples


def evaluate_rules(data: Path, work: Path, start: float, end: float) -> float:
    prom = Prometheus(data, work)
    started = time.perf_counter()
    try:
        blocks = backfill_rules(prom.url, start, end, RULES, work)
    finally:
        prom.stop()
    move_blocks(blocks, data)
    return time.perf_counter() - started


def _nice_step(range_s: float, scrape_s: float) -> int:
    """Grafana: interval = range / max data points (about the panel's width in
    pixels, ~1,000), rounded, and never below the data source's scrape interval."""
    raw = range_s / 1000
    nice = next(
        (n for n in (15, 30, 60, 120, 300, 600, 900, 1200, 1800, 3600, 7200, 21600, 43200, 86400) if n >= raw), 86400
    )
    return max(nice, int(scrape_s))


def _duration(seconds: float) -> str:
    return f"{int(seconds)}s"


def time_queries(
    prom: Prometheus,
    end: float,
    range_s: float,
    scrape_s: float,
    team: str | None,
    node_days: float,
    dashboards: Path,
    rollup: str = "1h",
) -> list[dict]:
    step = _nice_step(range_s, scrape_s)
    values = dict(DEFAULT_SUBSTITUTIONS)
    values.update(
        {
            "__range": _duration(range_s),
            "__range_s": str(int(range_s)),
            "__range_ms": str(int(range_s * 1000)),
            "__interval": _duration(step),
            "__rate_interval": _duration(max(step + scrape_s, 4 * scrape_s)),
        }
    )
    if team is not None:
        values["team"] = team
    values["rollup"] = rollup
    rows = []
    for query in panel_queries(load_dashboards(dashboards), values):
        if query.instant:
            path, params = "/api/v1/query", {"query": query.expr, "time": end, "stats": "all"}
        else:
            path, params = (
                "/api/v1/query_range",
                {"query": query.expr, "start": end - range_s, "end": end, "step": step, "stats": "all"},
            )
        try:
            seconds, body = prom.get(path, params)
            stats = body.get("data", {}).get("stats", {}).get("samples", {})
            samples = stats.get("totalQueryableSamples", 0)
            error = None if body.get("status") == "success" else body.get("error")
        except urllib.error.HTTPError as err:
            seconds, samples, error = math.nan, 0, err.read().decode()[:200]
        rows.append(
            {
                "dashboard": query.dashboard,
                "panel": query.panel,
                "ref": query.ref_id,
                "instant": query.instant,
                "seconds": seconds,
                "samples": samples,
                "samples_per_node_day": samples / node_days,
                "error": error,
            }
        )
    return rows


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p * (len(ordered) - 1))))]


def summarize(rows: list[dict]) -> list[dict]:
    out = []
    for dashboard in sorted({r["dashboard"] for r in rows}):
        mine = [r for r in rows if r["dashboard"] == dashboard and not math.isnan(r["seconds"])]
        secs = [r["seconds"] for r in mine]
        worst = max(mine, key=lambda r: r["samples_per_node_day"])
        out.append(
            {
                "dashboard": dashboard,
                "queries": len(mine),
                "p50_ms": 1000 * statistics.median(secs),
                "p95_ms": 1000 * _pct(secs, 0.95),
                "max_ms": 1000 * max(secs),
                "max_samples_per_node_day": worst["samples_per_node_day"],
                "heaviest": worst["panel"],
                "errors": sum(1 for r in rows if r["dashboard"] == dashboard and r["error"]),
            }
        )
    return out


def series_per_node(tmpl: list, end: float) -> dict:
    live = [sum(1 for s in series if s.points[-1][0] >= end - 1) for _, series in tmpl]
    total = [len(series) for _, series in tmpl]
    return {
        "live_at_end_mean": statistics.mean(live),
        "live_at_end_max": max(live),
        "distinct_over_period_mean": statistics.mean(total),
    }


def bench_size(nodes: int, tmpl: list, args, workdir: Path) -> dict:
    work = workdir / f"fleet-{nodes}"
    data = work / "data"
    period = args.days * simfleet.DAY
    start, end = START_WALL, START_WALL + period
    meta = work / "backfill.json"
    if args.reuse and meta.exists():  # a --keep run's data: time queries only
        samples, raw_bytes, rule_bytes, backfill_s, rules_s = json.loads(meta.read_text())
    else:
        shutil.rmtree(work, ignore_errors=True)
        data.mkdir(parents=True)
        t0 = time.perf_counter()
        samples = backfill(nodes, tmpl, data, work)
        raw_bytes = du(data)
        backfill_s = time.perf_counter() - t0
        rules_s = evaluate_rules(data, work, start, end)
        rule_bytes = du(data) - raw_bytes
        meta.write_text(json.dumps([samples, raw_bytes, rule_bytes, backfill_s, rules_s]))
    prom = Prometheus(data, work)
    try:
        node_days = nodes * args.days
        ranges = sorted({6 * 3600.0, simfleet.DAY, period} - {0.0})
        timings = {}
        # One team that exists: the first of the pool the scenarios draw from.
        # Each range with the boards' "Totals from" ($rollup) at hourly, and at
        # daily for ranges of a week or more (what docs/scale.md recommends there).
        for range_s in ranges:
            for rollup in ("1h", "1d") if range_s >= 7 * simfleet.DAY else ("1h",):
                for team in (None, simfleet.TEAMS[0]):
                    # Normalise by the node-days the range covers (data exists only for the period).
                    covered = nodes * min(range_s, period) / simfleet.DAY
                    rows = time_queries(prom, end, range_s, args.scrape, team, covered, args.dashboards, rollup)
                    key = f"{range_s / 3600:g}h/{'all' if team is None else 'team'}"
                    timings[key if rollup == "1h" else f"{key}/{rollup}"] = rows
        rss = prom.rss_mib()
    finally:
        prom.stop()
    result = {
        "nodes": nodes,
        "days": args.days,
        "scrape_s": args.scrape,
        "templates": len(tmpl),
        "series_per_node": series_per_node(tmpl, end),
        "raw_samples": samples,
        "raw_bytes_per_node_day": raw_bytes / node_days,
        "rule_bytes_per_day": rule_bytes / args.days,
        "bytes_per_raw_sample": raw_bytes / samples,
        "backfill_s": backfill_s,
        "rules_backfill_s": rules_s,
        "prometheus_peak_rss_mib": rss,
        "dashboards": {key: summarize(rows) for key, rows in timings.items()},
        "queries": timings,
    }
    (workdir / f"fleet-{nodes}-{args.dashboards.parent.parent.name}.json").write_text(json.dumps(result, indent=1))
    if not args.keep:
        shutil.rmtree(work)
    return result


def report(result: dict) -> None:
    s = result["series_per_node"]
    print(
        f"\n== {result['nodes']} nodes x {result['days']} d, scrape {result['scrape_s']} s "
        f"({result['templates']} simulated templates)"
    )
    print(
        f"series per node: {s['live_at_end_mean']:.0f} live at the end (max {s['live_at_end_max']}), "
        f"{s['distinct_over_period_mean']:.0f} distinct over the period (churn)"
    )
    print(
        f"raw samples {result['raw_samples']:,}; TSDB {result['raw_bytes_per_node_day'] / 1e6:.2f} MB per node-day "
        f"({result['bytes_per_raw_sample']:.2f} B/sample); rule output {result['rule_bytes_per_day'] / 1e6:.2f} MB "
        f"per day; backfill {result['backfill_s']:.0f} s, rules {result['rules_backfill_s']:.0f} s; "
        f"Prometheus peak RSS {result['prometheus_peak_rss_mib']:.0f} MiB"
    )
    print(
        f"{'range/vars':<14} {'dashboard':<20} {'n':>3} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8} "
        f"{'max smp/node-day':>16}  heaviest"
    )
    for key, rows in result["dashboards"].items():
        for row in rows:
            print(
                f"{key:<14} {row['dashboard']:<20} {row['queries']:>3} {row['p50_ms']:>8.1f} {row['p95_ms']:>8.1f} "
                f"{row['max_ms']:>8.1f} {row['max_samples_per_node_day']:>16.0f}  {row['heaviest']}"
                + (f"  ERRORS {row['errors']}" if row["errors"] else "")
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", default="3,9,27", help="fleet sizes, comma-separated")
    parser.add_argument("--days", type=float, default=1.0)
    parser.add_argument("--scrape", type=float, default=60.0, help="scrape interval, seconds")
    parser.add_argument("--templates", type=int, default=4, help="simulated nodes run through the pipeline")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the data directories")
    parser.add_argument("--reuse", action="store_true", help="query a kept data directory instead of backfilling")
    parser.add_argument(
        "--dashboards",
        type=Path,
        default=ROOT / "grafana" / "dashboards",
        help="dashboards to time (e.g. an older revision's, to compare)",
    )
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="gpucarbon-fleet-"))
    workdir.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    tmpl = templates(args.templates, args.days, args.scrape, workdir)
    print(
        f"{args.templates} template nodes x {args.days} d through the pipeline: {time.perf_counter() - t:.0f} s "
        f"(workdir {workdir}, {os.cpu_count()} CPUs)"
    )
    for nodes in (int(n) for n in args.nodes.split(",")):
        report(bench_size(nodes, tmpl, args, workdir))


if __name__ == "__main__":
    main()
