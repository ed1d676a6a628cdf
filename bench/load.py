"""Load: concurrent scrapers against the demo scenario, and the poll loop's cadence.

    python bench/load.py [--clients 50] [--seconds 60] [--poll-interval 1s] [--think 0]

Starts the daemon (`--simulate`, the built-in demo) on a loopback port and runs
`--clients` scrapers, each with its own keep-alive connection, scraping
/metrics back to back (`--think` seconds apart; 0 is the worst case, far above
Prometheus' usual one scrape per 15-60 s) for `--seconds`. Meanwhile one probe
reads `gpucarbon_last_poll_timestamp_seconds` every 50 ms; the intervals between
its distinct values are the poll loop's real cadence.

Prints JSON: requests, errors (non-200 or transport), requests/s, scrape
latency p50/p90/p99/max (ms, request sent to body read), and poll jitter: mean,
stddev and max absolute deviation of the poll intervals from the configured
interval, and how many intervals were over 1.5x (a skipped tick or a missed
sample). The daemon's CPU seconds and peak RSS over the run come with it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))
from procs import free_port, http_get, wait_until  # noqa: E402
from procstat import cpu_seconds, peak_rss_mib  # noqa: E402

LAST_POLL = "gpucarbon_last_poll_timestamp_seconds "
POLL_COUNT = "gpucarbon_poll_duration_seconds_count "


@dataclass
class ScrapeStats:
    latencies_s: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1


@dataclass(frozen=True)
class Jitter:
    intervals: int
    mean_s: float
    stddev_s: float
    max_abs_deviation_s: float
    over_1_5x: int


def metric_value(text: str, prefix: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line.split()[-1])
    return None


def percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


async def scraper(url: str, until: float, think_s: float, stats: ScrapeStats) -> None:
    """One scraper: its own connection, kept alive, scraping until `until` (loop time)."""
    loop = asyncio.get_running_loop()
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=1)) as session:
        while loop.time() < until:
            started = loop.time()
            try:
                async with session.get(url) as resp:
                    await resp.read()
                    if resp.status != 200:
                        stats.error(f"status {resp.status}")
                        continue
            except (TimeoutError, aiohttp.ClientError) as err:
                stats.error(type(err).__name__)
                continue
            stats.latencies_s.append(loop.time() - started)
            if think_s:
                await asyncio.sleep(think_s)


async def poll_timestamps(url: str, until: float, every_s: float = 0.05) -> list[float]:
    """Distinct values of the last-poll timestamp, sampled every `every_s`."""
    loop = asyncio.get_running_loop()
    seen: list[float] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        while loop.time() < until:
            try:
                async with session.get(url) as resp:
                    value = metric_value(await resp.text(), LAST_POLL)
            except (TimeoutError, aiohttp.ClientError):
                value = None
            if value is not None and (not seen or value != seen[-1]):
                seen.append(value)
            await asyncio.sleep(every_s)
    return seen


def jitter(timestamps: list[float], interval_s: float) -> Jitter:
    gaps = [b - a for a, b in zip(timestamps, timestamps[1:], strict=False)]
    if len(gaps) < 2:
        return Jitter(len(gaps), float("nan"), float("nan"), float("nan"), 0)
    return Jitter(
        intervals=len(gaps),
        mean_s=statistics.fmean(gaps),
        stddev_s=statistics.stdev(gaps),
        max_abs_deviation_s=max(abs(g - interval_s) for g in gaps),
        over_1_5x=sum(1 for g in gaps if g > 1.5 * interval_s),
    )


async def run_load(url: str, clients: int, seconds: float, think_s: float) -> tuple[ScrapeStats, list[float]]:
    loop = asyncio.get_running_loop()
    until = loop.time() + seconds
    stats = ScrapeStats()
    probe = asyncio.create_task(poll_timestamps(url, until))
    await asyncio.gather(*(scraper(url, until, think_s, stats) for _ in range(clients)))
    return stats, await probe


def seconds_of(text: str) -> float:
    return float(text[:-2]) / 1000 if text.endswith("ms") else float(text.rstrip("s"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--poll-interval", default="1s")
    p.add_argument("--think", type=float, default=0.0, help="seconds each scraper waits between scrapes")
    args = p.parse_args()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "daemon")}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gpucarbon",
            "--simulate",
            f"--poll.interval={args.poll_interval}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        env=env,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: http_get(base + "/readyz")[0] == 200, 30, "daemon ready")
        polls0 = metric_value(http_get(base + "/metrics")[1].decode(), POLL_COUNT) or 0.0
        cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
        stats, stamps = asyncio.run(run_load(base + "/metrics", args.clients, args.seconds, args.think))
        wall = time.monotonic() - t0
        cpu = cpu_seconds(proc.pid) - cpu0
        polls = (metric_value(http_get(base + "/metrics")[1].decode(), POLL_COUNT) or 0.0) - polls0
        latencies = sorted(stats.latencies_s)
        interval = seconds_of(args.poll_interval)
        result = {
            "clients": args.clients,
            "seconds": round(wall, 1),
            "think_s": args.think,
            "poll_interval_s": interval,
            "requests": len(latencies) + sum(stats.errors.values()),
            "errors": stats.errors,
            "requests_per_s": round(len(latencies) / wall, 1),
            "latency_ms": {
                name: round(1000 * percentile(latencies, q), 2)
                for name, q in (("p50", 0.50), ("p90", 0.90), ("p99", 0.99), ("max", 1.0))
            },
            "polls": polls,
            "polls_expected": round(wall / interval, 1),
            "poll_jitter_s": {
                k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(jitter(stamps, interval)).items()
            },
            "daemon_cpu_percent_of_one_core": round(100 * cpu / wall, 1),
            "daemon_peak_rss_mib": round(peak_rss_mib(proc.pid), 1),
        }
        print(json.dumps(result, indent=2))
    finally:
        proc.terminate()
        proc.wait(15)


if __name__ == "__main__":
    main()
