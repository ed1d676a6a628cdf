"""Benchmark the daemon: 8 simulated GPUs, 64 workloads, 1 s polling.

    python bench/bench_daemon.py [--seconds 60] [--scrapes 200]

Reports CPU time per poll, daemon CPU% over the run, peak RSS, scrape latency
(median, p99) and the number of series. Targets (issue 2): <= 1% of one core,
<= 60 MB RSS, scrape <= 10 ms median.
"""

from __future__ import annotations

import argparse
import json
import os
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--scrapes", type=int, default=200)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp())
    (tmp / "scenario.yaml").write_text(scenario())
    port = free_port()
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
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        wait_until(
            lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2).status == 200, 30, "ready"
        )
        # Steady state: measure CPU over the window while Prometheus-like scrapes
        # arrive every 15 s (a scrape per 15 s is typical; latency is measured apart).
        cpu0, polls0, t0 = cpu_seconds(proc.pid), poll_count(scrape(url)[1]), time.monotonic()
        while time.monotonic() - t0 < args.seconds:
            time.sleep(min(15.0, args.seconds - (time.monotonic() - t0)) if args.seconds > 1 else 0)
            scrape(url)
        cpu1, wall, body = cpu_seconds(proc.pid), time.monotonic() - t0, scrape(url)[1]
        polls = poll_count(body) - polls0
        latencies = sorted(scrape(url)[0] for _ in range(args.scrapes))
        series = sum(1 for line in body.decode().splitlines() if line and not line.startswith("#"))
        result = {
            "gpus": 8,
            "workloads": 64,
            "window_s": round(wall, 1),
            "polls": polls,
            "cpu_percent_of_one_core": round(100 * (cpu1 - cpu0) / wall, 2),
            "cpu_ms_per_poll_incl_idle_loop": round(1000 * (cpu1 - cpu0) / max(polls, 1), 2),
            "peak_rss_mb": round(peak_rss_mib(proc.pid), 1),
            "scrape_ms_median": round(1000 * statistics.median(latencies), 2),
            "scrape_ms_p99": round(1000 * latencies[int(0.99 * (len(latencies) - 1))], 2),
            "series": series,
            "exposition_bytes": len(body),
        }
        print(json.dumps(result, indent=2))
    finally:
        proc.terminate()
        proc.wait(15)


if __name__ == "__main__":
    main()
