"""Benchmark the daemon: 8 simulated GPUs, 64 workloads, 1 s polling.

    python bench/bench_daemon.py [--seconds 60] [--scrapes 200]

Side by side with Debian's prometheus-node-exporter (when installed), both
scraped every 15 s: CPU % of one core, peak RSS, series, and CPU per series
rendered (the daemon's in-process TextWriter against client_python's
generate_latest on the same snapshot; the node exporter's CPU per scrape over
its series). Also CPU per poll and scrape latency (median, p99).
Targets (issue 16): <= 0.5% of one core, <= 40 MB RSS, <= 5 us per series.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "daemon"))
from procs import free_port, wait_until  # noqa: E402
from procstat import cpu_seconds, peak_rss_mib  # noqa: E402


def scenario(gpus: int = 8, per_gpu: int = 8) -> str:
    lines = [
        "speed: 1",
        "seed: 11",
        "gpus:",
        f"  - {{model: NVIDIA H100 80GB HBM3, count: {gpus}, idle_watts: 70, max_watts: 700}}",
        "workloads:",
    ]
    for g in range(gpus):
        for w in range(per_gpu):
            util = round(0.05 + 0.1 * w, 2)
            lines.append(
                f"  - {{namespace: ns{g}, pod: pod-{g}-{w}, container: main, workload: Job/job-{g}-{w}, "
                f"team: team{w % 4}, gpus: [{g}], sm_util: {util}}}"
            )
    return "\n".join(lines) + "\n"


def scrape(url: str) -> tuple[float, bytes]:
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=10) as resp:
        body = resp.read()
    return time.perf_counter() - started, body


def poll_count(body: bytes) -> float:
    for line in body.decode().splitlines():
        if line.startswith("gpucarbon_poll_duration_seconds_count"):
            return float(line.split()[-1])
    return 0.0


def render_us_per_series(snapshots: int = 3, repeats: int = 20) -> dict:
    """In-process: CPU microseconds per series to render the 8 x 64 snapshot,
    client_python's generate_latest against the daemon's TextWriter."""
    import asyncio

    from clientpython import registry_of
    from prometheus_client.exposition import generate_latest

    from gpucarbon.app import RunOptions, build_daemon
    from gpucarbon.clock import ManualClock
    from gpucarbon.config import load_config
    from gpucarbon.exporter.collector import SnapshotCollector
    from gpucarbon.exporter.exposition import TextWriter
    from gpucarbon.simulation.scenario import parse_scenario

    async def polled():
        clock = ManualClock(start=1000.0, wall_start=1.7e9)
        daemon = build_daemon(load_config(None), RunOptions(scenario=parse_scenario(scenario())), base_clock=clock)
        for _ in range(snapshots):
            await daemon.poller.poll()
            clock.advance(1.0)
        return daemon.poller.snapshot

    snap = asyncio.run(polled())
    collector = SnapshotCollector(lambda: snap)
    registry = registry_of(collector.families)  # client_python's view of the same families
    writer = TextWriter()
    body = writer.render(collector.families())
    assert body == generate_latest(registry), "TextWriter and generate_latest disagree"
    series = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))

    def cpu_us(render) -> float:
        started = time.process_time()
        for _ in range(repeats):
            render()
        return 1e6 * (time.process_time() - started) / repeats / series

    return {
        "series": series,
        "generate_latest_us_per_series": round(cpu_us(lambda: generate_latest(registry)), 2),
        "textwriter_us_per_series": round(cpu_us(lambda: writer.render(collector.families())), 2),
    }


def start_node_exporter(port: int) -> subprocess.Popen | None:
    """Debian's prometheus-node-exporter with its default collectors, if installed."""
    binary = shutil.which("prometheus-node-exporter") or shutil.which("node_exporter")
    if binary is None:
        return None
    return subprocess.Popen(
        [binary, f"--web.listen-address=127.0.0.1:{port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def series_of(body: bytes) -> int:
    return sum(1 for line in body.decode().splitlines() if line and not line.startswith("#"))


def cpu_per_scrape_us_per_series(proc: subprocess.Popen, url: str, scrapes: int) -> float:
    """Back-to-back scrapes: the exporter's CPU per scrape divided by its series.
    (The daemon serves cached bytes between polls; this is the node exporter's
    figure, which collects and renders on every scrape.)"""
    body = scrape(url)[1]
    cpu0 = cpu_seconds(proc.pid)
    for _ in range(scrapes):
        scrape(url)
    return 1e6 * (cpu_seconds(proc.pid) - cpu0) / scrapes / series_of(body)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--scrapes", type=int, default=200)
    parser.add_argument("--scrape-interval", type=float, default=15.0)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp())
    (tmp / "scenario.yaml").write_text(scenario())
    port, ne_port = free_port(), free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "daemon")}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gpucarbon",
            f"--simulate={tmp / 'scenario.yaml'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--poll.interval=1s",
        ],
        env=env,
        stderr=subprocess.DEVNULL,
    )
    node_exporter = start_node_exporter(ne_port)
    url, ne_url = f"http://127.0.0.1:{port}/metrics", f"http://127.0.0.1:{ne_port}/metrics"
    try:
        wait_until(
            lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2).status == 200, 30, "ready"
        )
        if node_exporter is not None:
            wait_until(lambda: scrape(ne_url)[1] != b"", 30, "node exporter")
        # Steady state, side by side: both scraped every --scrape-interval (as one
        # Prometheus would) while the daemon polls every second.
        targets = [("gpu-carbon-exporter", proc, url)]
        if node_exporter is not None:
            targets.append(("prometheus-node-exporter", node_exporter, ne_url))
        cpu0 = {name: cpu_seconds(p.pid) for name, p, _ in targets}
        polls0, t0 = poll_count(scrape(url)[1]), time.monotonic()
        for _, _, u in targets[1:]:
            scrape(u)
        while time.monotonic() - t0 < args.seconds:
            time.sleep(min(args.scrape_interval, max(0.0, args.seconds - (time.monotonic() - t0))))
            for _, _, u in targets:
                scrape(u)
        wall = time.monotonic() - t0
        cpu1 = {name: cpu_seconds(p.pid) for name, p, _ in targets}
        bodies = {name: scrape(u)[1] for name, _, u in targets}
        polls = poll_count(bodies["gpu-carbon-exporter"]) - polls0
        latencies = sorted(scrape(url)[0] for _ in range(args.scrapes))
        side_by_side = {}
        for name, p, _ in targets:
            side_by_side[name] = {
                "cpu_percent_of_one_core": round(100 * (cpu1[name] - cpu0[name]) / wall, 3),
                "peak_rss_mb": round(peak_rss_mib(p.pid), 1),
                "series": series_of(bodies[name]),
                "exposition_bytes": len(bodies[name]),
            }
        if node_exporter is not None:
            side_by_side["prometheus-node-exporter"]["cpu_us_per_series_per_scrape"] = round(
                cpu_per_scrape_us_per_series(node_exporter, ne_url, 50), 2
            )
        render = render_us_per_series()
        side_by_side["gpu-carbon-exporter"]["cpu_us_per_series_rendered"] = render["textwriter_us_per_series"]
        result = {
            "gpus": 8,
            "workloads": 64,
            "poll_interval_s": 1,
            "scrape_interval_s": args.scrape_interval,
            "window_s": round(wall, 1),
            "polls": polls,
            "cpu_ms_per_poll_incl_idle_loop": round(
                1000 * (cpu1["gpu-carbon-exporter"] - cpu0["gpu-carbon-exporter"]) / max(polls, 1), 2
            ),
            "scrape_ms_median": round(1000 * statistics.median(latencies), 2),
            "scrape_ms_p99": round(1000 * latencies[int(0.99 * (len(latencies) - 1))], 2),
            "side_by_side": side_by_side,
            "render": render,
            "node_exporter": "found" if node_exporter else "missing: apt-get install prometheus-node-exporter",
        }
        print(json.dumps(result, indent=2))
    finally:
        for p in (proc, node_exporter):
            if p is not None:
                p.terminate()
                p.wait(15)


if __name__ == "__main__":
    main()
