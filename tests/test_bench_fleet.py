"""The fleet generator (bench/simfleet.py) that bench/fleet.py sizes fleets
with: a typical node stays under the series budget, copies of a template are
distinct series, and promtool accepts the OpenMetrics it writes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import simfleet  # noqa: E402

HOURS = 3
SCRAPE_S = 60.0
START = 1_767_225_600.0


@pytest.fixture(scope="module")
def node() -> tuple[dict, list]:
    scenario = simfleet.node_scenario(seed=5, period_s=HOURS * 3600, gpus=8)
    assert len(scenario.gpus) == 8
    return simfleet.scrape_node(scenario, START, HOURS * 3600, SCRAPE_S)


def test_a_typical_node_exports_under_300_series(node) -> None:
    """Issue 16's budget: 8 GPUs, up to 16 holders, under 300 series (the
    process_* families come on top and are 8)."""
    _, series = node
    last = max(s.points[-1][0] for s in series)
    live = [s for s in series if s.points[-1][0] >= last]
    holders = {dict(s.labels)["pod"] for s in live if s.name == "gpucarbon_workload_held_seconds_total"}
    assert 1 <= len(holders) <= 16
    assert len(live) + 8 < 300, len(live)
    assert any(s.name == "gpucarbon_gpu_energy_joules_total" for s in live)


def test_promtool_backfills_two_relabelled_copies(node, tmp_path: Path) -> None:
    types, series = node
    om = tmp_path / "fleet.om"
    samples = simfleet.write_openmetrics(om, types, [(series, "node-a"), (series, "node-b")], "test")
    assert samples == 2 * sum(len(s.points) for s in series)
    text = om.read_text()
    assert 'node="node-a"' in text and 'node="node-b"' in text and text.endswith("# EOF\n")
    # A copy's per-node labels differ, so the two nodes do not collide as one series.
    assert text.count('uuid="GPU-') and "-node-a" in text and "-node-b" in text
    result = subprocess.run(
        ["promtool", "tsdb", "create-blocks-from", "openmetrics", "-q", str(om), str(tmp_path / "data")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert any((tmp_path / "data").iterdir())
