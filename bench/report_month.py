"""What the 30-day report reads and how long it takes, on a backfilled month.

    python bench/report_month.py [--days 30] [--runs 3] [--compare DIR]

Backfills the e2e report's simulated fleet (tests/backfill.py: 3 nodes, every
rule group at its own interval) into a real Prometheus, then prints, for the
sections whose series grow with every workload that ran (top workloads, top
idle holders, idle energy), the samples each query reads (Prometheus's
stats=all totalQueryableSamples) in all and per node-day, and the wall time of
`gpu-carbon-exporter report --range=<days>d --format=json` by team and by
workload (Python start-up included). --compare DIR times the report of another
checkout (e.g. an older revision: `git archive REV | tar -x -C DIR`) on the
same data, alternating runs. docs/scale.md ("The report's 30-day run") has the
figures and the extrapolation to 1,000 nodes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "daemon"))
from backfill import DAY, BackfilledPrometheus, backfill, fleet  # noqa: E402

from gpucarbon.report import queries  # noqa: E402


def samples(url: str, promql: str, at: int) -> int:
    query = urllib.parse.urlencode({"query": promql, "time": at, "stats": "all"})
    with urllib.request.urlopen(f"{url}/api/v1/query?{query}", timeout=600) as response:
        return int(json.loads(response.read())["data"]["stats"]["samples"]["totalQueryableSamples"])


def time_report(tree: Path, url: str, end: int, days: int, by: str) -> float:
    env = {**os.environ, "PYTHONPATH": str(tree / "daemon")}
    argv = [sys.executable, "-m", "gpucarbon", "report", f"--prometheus.url={url}", f"--end={end}"]
    started = time.monotonic()
    result = subprocess.run(
        [*argv, f"--range={days}d", "--format=json", f"--by={by}"], capture_output=True, text=True, env=env
    )
    if result.returncode != 0:
        raise SystemExit(f"report from {tree} failed: {result.stderr.strip()}")
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--compare", type=Path, help="another checkout whose report to time on the same data")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="report-month-") as tmp:
        work = Path(tmp)
        start = (time.time() // DAY - args.days - 2) * DAY  # midnight UTC, the whole period in the past
        end = int(start + args.days * DAY)
        data, _truth = backfill(work, start, args.days)
        prom = BackfilledPrometheus(data, work)
        try:
            node_days = len(fleet(args.days)) * args.days
            window = f"{args.days * DAY}s"
            sections = {
                "top workloads": queries.top_workloads(window),
                "top idle holders": queries.top_idle_holders(window),
                "idle energy (per team)": queries.idle_energy(("team",), window),
            }
            total = 0
            for name, promql in sections.items():
                n = samples(prom.url, promql, end)
                total += n
                print(f"{name}: {n:,} samples ({n / node_days:.0f} per node-day)")
            print(f"all three: {total:,} samples ({total / node_days:.0f} per node-day over {node_days} node-days)")
            trees = [("this checkout", ROOT)] + ([("--compare", args.compare.resolve())] if args.compare else [])
            for by in ("team", "workload"):
                for _ in range(args.runs):
                    for label, tree in trees:
                        seconds = time_report(tree, prom.url, end, args.days, by)
                        print(f"report --by={by} ({label}): {seconds:.2f}s")
        finally:
            prom.stop()


if __name__ == "__main__":
    main()
