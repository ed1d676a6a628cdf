"""Profile the poll hot path in-process: 8 simulated GPUs x 64 workloads.

    python bench/poll_profile.py [--polls 300] [--top 30] [--sort cumulative|tottime] [--no-profile]
                                 [--dump FILE]

Builds the daemon as bench_daemon.py's render_us_per_series does (build_daemon
with a ManualClock and the bench's scenario), warms it up, then runs `--polls`
polls on one event loop, the clock moved 1 s between polls. Prints CPU ms per
poll without a profiler (least and median of five rounds) (the steadier figure: the process is alone on its
thread, unlike bench_daemon.py's whole-process CPU over a 60 s window), the
share of it spent in the simulated GPUs' model (simulation/gpu.py, not daemon
cost on real hardware), and then a cProfile of the same polls (the event loop
thread's CPU time; the worker threads' reads are not in it), top functions
by `--sort`. `--dump FILE` also writes the exposition after 120 polls of a
fresh daemon (receipts included), to diff two trees: a cut must not change a byte.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import pstats
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "daemon"))
from bench_daemon import scenario  # noqa: E402

WARMUP_POLLS = 5
ROUNDS = 5  # timed rounds; the least is the figure least disturbed by other work on the machine


def build():
    from gpucarbon.app import RunOptions, build_daemon
    from gpucarbon.clock import ManualClock
    from gpucarbon.config import load_config
    from gpucarbon.simulation.scenario import parse_scenario

    clock = ManualClock(start=1000.0, wall_start=1.7e9)
    daemon = build_daemon(load_config(None), RunOptions(scenario=parse_scenario(scenario())), base_clock=clock)
    return daemon, clock


async def polls(daemon, clock, n: int) -> None:
    for _ in range(n):
        await daemon.poller.poll()
        clock.advance(1.0)


def timed(daemon, clock, n: int) -> float:
    """CPU ms per poll over n polls (process time: includes the worker threads)."""

    async def run() -> float:
        await polls(daemon, clock, WARMUP_POLLS)
        started = time.process_time()
        await polls(daemon, clock, n)
        return 1000 * (time.process_time() - started) / n

    return asyncio.run(run())


def simulation_ms(daemon, clock, n: int) -> float:
    """CPU ms per poll of the simulated GPUs' own model: read_gpu of every GPU,
    called directly (what the reader's worker threads run)."""
    gpus = daemon.poller._reader._backend  # the SimulatedGpus the reader reads
    uuids = list(gpus.list_gpus())
    started = time.process_time()
    for _ in range(n):
        for uuid in uuids:
            gpus.read_gpu(uuid)
        clock.advance(1.0)
    return 1000 * (time.process_time() - started) / n


def exposition_after(n: int) -> str:
    from gpucarbon.exporter.http import render_text

    daemon, clock = build()
    asyncio.run(polls(daemon, clock, n))
    volatile = ("gpucarbon_poll_duration_seconds_", "process_")  # real time and this process: differ run to run
    lines = render_text(daemon.poller.latest).splitlines(keepends=True)
    return "".join(line for line in lines if not line.startswith(volatile))


def profile(daemon, clock, n: int, sort: str, top: int) -> str:
    # The event loop thread's CPU time, not wall time: with wall time, waking
    # the worker threads shows up as seconds "in" SimpleQueue.put and
    # epoll (the OS running other threads), which is no CPU of this thread.
    profiler = cProfile.Profile(time.thread_time)

    async def run() -> None:
        await polls(daemon, clock, WARMUP_POLLS)
        profiler.enable()
        await polls(daemon, clock, n)
        profiler.disable()

    asyncio.run(run())
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out).strip_dirs().sort_stats(sort)
    stats.print_stats(top)
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--polls", type=int, default=300)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--sort", choices=("cumulative", "tottime"), default="cumulative")
    parser.add_argument("--no-profile", action="store_true", help="only the CPU ms per poll")
    parser.add_argument("--dump", type=Path, help="write the exposition after 120 polls here")
    args = parser.parse_args()
    if args.dump is not None:
        args.dump.write_text(exposition_after(120))
    rounds = []
    for _ in range(ROUNDS):
        daemon, clock = build()
        rounds.append(timed(daemon, clock, args.polls))
    daemon, clock = build()
    sim = simulation_ms(daemon, clock, args.polls)
    print(
        json.dumps(
            {
                "gpus": 8,
                "workloads": 64,
                "polls": args.polls,
                "cpu_ms_per_poll_rounds": [round(r, 3) for r in rounds],
                "cpu_ms_per_poll_min": round(min(rounds), 3),
                "cpu_ms_per_poll_median": round(sorted(rounds)[ROUNDS // 2], 3),
                "of_which_simulated_gpus_ms": round(sim, 3),
            },
            indent=2,
        )
    )
    if not args.no_profile:
        daemon, clock = build()
        print(profile(daemon, clock, args.polls, args.sort, args.top))


if __name__ == "__main__":
    main()
