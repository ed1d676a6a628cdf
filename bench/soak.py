"""Soak: a simulated day of churn, sped up, watching memory and series.

    python bench/soak.py [--workloads 10000] [--gpus 8] [--hours 24] [--speed 160]
                         [--poll-interval 0.5s] [--sample-every 5] [--csv soak.csv]

Generates a seeded scenario of short-lived workloads (2-10 simulated minutes
each, start times spread uniformly over the day, one GPU each, ~1 in 8 on two
GPUs) on 8 simulated GPUs, runs the daemon on it with `retention.finished: 10m`
and samples, every few real seconds: the daemon's RSS (VmRSS), the number of
series in /metrics (non-comment lines), the number of workload series, and the
daemon's CPU seconds. Prints the curve as CSV and a JSON summary.

Speed: 160 simulated seconds per real second runs 24 h in 9 minutes. With a
0.5 s poll interval every poll covers 80 simulated seconds, so a workload of
the shortest duration (120 s) is still seen running in at least one poll, and
the 10-minute retention spans 7-8 polls: the ledger's expiry runs many times
within each workload's lifetime, which is what the soak must exercise.

The run lasts the simulated day plus the retention plus a margin: every
workload has ended by then and every finished series should have expired, so
the final workload-series count says whether expiry keeps up. A bench, not a
test: it asserts nothing.

RSS alone cannot show a slow leak here: parsing the 10,000-workload scenario
peaks early and the freed memory stays in Python's arenas, so later growth
would fill those before RSS moves. `--in-process` therefore runs the same day
in this process on a hand-moved clock (one poll per `speed * poll-interval`
simulated seconds, as the daemon would) and samples the Python heap with
tracemalloc, the live object count and the ledger's series after every
simulated hour: a leak shows there as a rising heap however big the arenas.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import tracemalloc
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from procstat import cpu_seconds, status_kib  # noqa: E402

WORKLOAD_SERIES = "gpucarbon_workload_energy_joules_total{"  # one line per workload series
LAST_POLL = "gpucarbon_last_poll_timestamp_seconds "


def parse_duration_s(text: str) -> float:
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    for suffix in ("ms", "s", "m", "h"):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * units[suffix]
    return float(text)


def scenario_text(workloads: int, gpus: int, hours: float, speed: float, seed: int) -> str:
    """JSON (a YAML subset, so the scenario loader reads it) of a churning day."""
    rng = random.Random(seed)
    day_s = hours * 3600.0
    items = []
    for i in range(workloads):
        duration = rng.uniform(120.0, 600.0)
        start = rng.uniform(0.0, day_s - duration)
        first = rng.randrange(gpus)
        on = [first] if rng.random() >= 0.125 else sorted({first, (first + 1) % gpus})
        items.append(
            {
                "namespace": f"ns-{i % 25}",
                "pod": f"job-{i}-worker-0",
                "container": "main",
                "workload": f"Job/job-{i}",
                "team": f"team-{i % 12}",
                "gpus": on,
                "start": round(start, 1),
                "end": round(start + duration, 1),
                "sm_util": round(rng.uniform(0.2, 0.95), 2),
            }
        )
    doc = {
        "speed": speed,
        "seed": seed,
        "gpus": [{"model": "NVIDIA H100 80GB HBM3", "count": gpus, "idle_watts": 70, "max_watts": 700}],
        "workloads": items,
    }
    return json.dumps(doc)


@dataclass(frozen=True)
class Sample:
    wall_s: float
    sim_h: float
    rss_mib: float
    series: int
    workload_series: int
    cpu_s: float


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.read().decode()


def count_series(text: str) -> tuple[int, int, float | None]:
    series = workload = 0
    last_poll = None
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        series += 1
        if line.startswith(WORKLOAD_SERIES):
            workload += 1
        elif line.startswith(LAST_POLL):
            last_poll = float(line.split()[-1])
    return series, workload, last_poll


def wait_ready(proc: subprocess.Popen, base: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"daemon exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(base + "/readyz", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit("daemon not ready in time")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workloads", type=int, default=10_000)
    p.add_argument("--gpus", type=int, default=8)
    p.add_argument("--hours", type=float, default=24.0)
    p.add_argument("--speed", type=float, default=160.0)
    p.add_argument("--poll-interval", default="0.5s")
    p.add_argument("--retention", default="10m")
    p.add_argument("--sample-every", type=float, default=5.0, help="real seconds between samples")
    p.add_argument("--seed", type=int, default=24)
    p.add_argument("--csv", type=Path, default=None, help="also write the curve here")
    p.add_argument("--in-process", action="store_true", help="measure the Python heap instead (see above)")
    args = p.parse_args()
    if args.in_process:
        asyncio.run(in_process(args))
        return

    tmp = Path(tempfile.mkdtemp(prefix="gpucarbon-soak-"))
    (tmp / "scenario.yaml").write_text(scenario_text(args.workloads, args.gpus, args.hours, args.speed, args.seed))
    (tmp / "config.yaml").write_text(f"retention: {{finished: {args.retention}}}\n")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "daemon")}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gpucarbon",
            f"--simulate={tmp / 'scenario.yaml'}",
            f"--simulate.speed={args.speed}",
            f"--poll.interval={args.poll_interval}",
            f"--config.file={tmp / 'config.yaml'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        env=env,
        stderr=open(tmp / "daemon.log", "wb"),
    )
    run_sim_s = (
        args.hours * 3600 + parse_duration_s(args.retention) + 4 * parse_duration_s(args.poll_interval) * args.speed
    )
    samples: list[Sample] = []
    header = "wall_s,sim_h,rss_mib,series,workload_series,cpu_s"
    print(header, flush=True)
    try:
        wait_ready(proc, base, timeout_s=180)
        t0 = time.monotonic()
        sim0 = None
        while True:
            series, workload, last_poll = count_series(scrape(base + "/metrics"))
            sim0 = last_poll if sim0 is None else sim0
            sim_s = (last_poll or sim0 or 0.0) - (sim0 or 0.0)
            sample = Sample(
                round(time.monotonic() - t0, 1),
                round(sim_s / 3600, 3),
                round(status_kib(proc.pid, "VmRSS") / 1024, 1),
                series,
                workload,
                round(cpu_seconds(proc.pid), 1),
            )
            samples.append(sample)
            print(",".join(str(v) for v in vars(sample).values()), flush=True)
            if sim_s >= run_sim_s:
                break
            time.sleep(args.sample_every)
    finally:
        proc.terminate()
        proc.wait(30)
    if args.csv:
        args.csv.write_text(header + "\n" + "".join(",".join(str(v) for v in vars(s).values()) + "\n" for s in samples))
    print(json.dumps(summary(samples, args), indent=2))


async def in_process(args: argparse.Namespace) -> None:
    """The same day in this process: heap (tracemalloc), objects, series per simulated hour."""
    sys.path.insert(0, str(ROOT / "daemon"))
    from gpucarbon.app import RunOptions, build_daemon
    from gpucarbon.clock import ManualClock
    from gpucarbon.config import Config, RetentionConfig, parse_duration
    from gpucarbon.simulation.scenario import parse_scenario

    scenario = parse_scenario(scenario_text(args.workloads, args.gpus, args.hours, 1.0, args.seed), "soak")
    retention = parse_duration(args.retention)
    clock = ManualClock()
    daemon = build_daemon(
        Config(retention=RetentionConfig(finished=retention)), RunOptions(scenario=scenario), base_clock=clock
    )
    step = args.speed * parse_duration(args.poll_interval)  # simulated seconds per poll
    polls = int((args.hours * 3600 + retention) / step) + 4
    per_hour = max(1, int(3600 / step))
    gc.collect()
    tracemalloc.start()
    print("sim_h,heap_mib,objects,workload_series", flush=True)
    rows = []
    for n in range(polls + 1):
        await daemon.poller.poll()
        clock.advance(step)
        if n % per_hour == 0 or n == polls:
            gc.collect()
            row = (
                round(n * step / 3600, 2),
                round(tracemalloc.get_traced_memory()[0] / 2**20, 2),
                len(gc.get_objects()),
                len(daemon.ledger.workloads),
            )
            rows.append(row)
            print(",".join(map(str, row)), flush=True)
    hour1 = rows[min(1, len(rows) - 1)]
    print(
        json.dumps(
            {
                "mode": "in-process",
                "workloads": args.workloads,
                "gpus": args.gpus,
                "polls": polls,
                "simulated_s_per_poll": step,
                "retention": args.retention,
                "heap_mib_after_1h": hour1[1],
                "heap_mib_max": max(r[1] for r in rows),
                "heap_mib_final": rows[-1][1],
                "objects_after_1h": hour1[2],
                "objects_max": max(r[2] for r in rows),
                "objects_final": rows[-1][2],
                "workload_series_max": max(r[3] for r in rows),
                "workload_series_final": rows[-1][3],
            },
            indent=2,
        )
    )


def summary(samples: list[Sample], args: argparse.Namespace) -> dict:
    """Max and final figures, and RSS over the first and last quarter of the run
    (a bounded daemon shows the two about equal once warmed up)."""
    quarter = max(1, len(samples) // 4)
    settled = samples[quarter : 2 * quarter] or samples
    return {
        "workloads": args.workloads,
        "gpus": args.gpus,
        "simulated_hours": samples[-1].sim_h,
        "speed": args.speed,
        "poll_interval": args.poll_interval,
        "retention": args.retention,
        "wall_s": samples[-1].wall_s,
        "samples": len(samples),
        "rss_mib_start": samples[0].rss_mib,
        "rss_mib_max": max(s.rss_mib for s in samples),
        "rss_mib_mean_second_quarter": round(sum(s.rss_mib for s in settled) / len(settled), 1),
        "rss_mib_mean_last_quarter": round(sum(s.rss_mib for s in samples[-quarter:]) / quarter, 1),
        "rss_mib_final": samples[-1].rss_mib,
        "series_max": max(s.series for s in samples),
        "series_final": samples[-1].series,
        "workload_series_max": max(s.workload_series for s in samples),
        "workload_series_final": samples[-1].workload_series,
        "daemon_cpu_s": samples[-1].cpu_s,
    }


if __name__ == "__main__":
    main()
