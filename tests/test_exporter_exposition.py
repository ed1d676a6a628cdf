"""The fast text writer writes, byte for byte, what client_python's
generate_latest writes for the same families, and promtool accepts it.

Golden snapshots: the exporter's fixed snapshot (escaped label values, a lost
GPU, a histogram), a simulated 8-GPU x 64-workload node after a few polls, and
families with the awkward values (exponents, inf, NaN, negative zero, huge
counters, UTF-8, backslashes). Each is rendered twice with changed values and a
vanished series, so the prefix cache is exercised, not only the first render.
"""

from __future__ import annotations

import asyncio
import math
import subprocess
import sys
from dataclasses import replace

import pytest
from clientpython import SanitisedCollector, reference_bytes
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from test_exporter import fixed_snapshot

from gpucarbon.app import RunOptions, build_daemon
from gpucarbon.clock import ManualClock
from gpucarbon.config import load_config
from gpucarbon.exporter.collector import SnapshotCollector
from gpucarbon.exporter.exposition import Family, TextWriter, go_float
from gpucarbon.simulation.scenario import parse_scenario
from gpucarbon.snapshot import Snapshot

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent.parent / "bench"))
from bench_daemon import scenario  # noqa: E402


def _reference(families: list[Family]) -> bytes:
    """client_python's rendering of the same families."""
    return reference_bytes(lambda: families)


def _collector_reference(latest) -> bytes:
    return reference_bytes(SnapshotCollector(latest).families)


def _simulated_snapshots(polls: int = 4) -> list[Snapshot]:
    async def run() -> list[Snapshot]:
        clock = ManualClock(start=1000.0, wall_start=1.7e9)
        options = RunOptions(scenario=parse_scenario(scenario(8, 8)))
        daemon = build_daemon(load_config(None), options, base_clock=clock)
        out = []
        for _ in range(polls):
            out.append(await daemon.poller.poll())
            clock.advance(1.0)
        return out

    return asyncio.run(run())


def _awkward(values: list[float], with_last: bool = True) -> list[Family]:
    gauge = Family("odd_values", "gauge", "Back\\slash and\nnewline in help.", ["k", "z", "a"])
    for i, value in enumerate(values):
        gauge.add_metric([f"v{i}", 'q"uo\\te\nd', "ünïcødé ☃"], value)
    counter = Family("odd_total", "counter", "A counter.", ["x"])
    counter.add_metric(["1"], 12345678901234.0)
    if with_last:
        counter.add_metric(["2"], 3)
    hist = Family("odd_latency", "histogram", "A histogram.", unit="seconds")
    hist.add_histogram([("0.005", 1), ("1e+06", 2), ("+Inf", 2)], 0.25)
    return [gauge, counter, hist]


AWKWARD = [
    0.0,
    -0.0,
    1.0,
    1e-7,
    0.1,
    123456.789,
    999999.9,
    1e6,
    1234567.0,
    1e21,
    -1e21,
    -5.5,
    math.inf,
    -math.inf,
    math.nan,
    2**53,
    17,
]


def test_awkward_values_and_labels_match_generate_latest() -> None:
    writer = TextWriter()
    for families in (_awkward(AWKWARD), _awkward(list(reversed(AWKWARD)), with_last=False), _awkward(AWKWARD)):
        assert writer.render(families) == _reference(families)


@pytest.mark.parametrize("value", AWKWARD)
def test_go_float_matches_client_python(value: float) -> None:
    from prometheus_client.utils import floatToGoString

    assert go_float(value) == floatToGoString(value)


def test_fixed_snapshot_matches_generate_latest() -> None:
    writer = TextWriter()
    for snapshot in (fixed_snapshot(), fixed_snapshot(sequence=2, ready=False), fixed_snapshot()):
        collector = SnapshotCollector(lambda s=snapshot: s)
        assert writer.render(collector.families()) == _collector_reference(lambda s=snapshot: s)


def test_simulated_node_matches_generate_latest_poll_after_poll() -> None:
    writer = TextWriter()
    snapshots = _simulated_snapshots()
    # A poll where half the workloads have gone: their cached prefixes must not leak.
    snapshots.append(replace(snapshots[-1], workloads=snapshots[-1].workloads[::2]))
    snapshots.append(snapshots[0])
    lines = []
    for snapshot in snapshots:
        ours = writer.render(SnapshotCollector(lambda s=snapshot: s).families())
        assert ours == _collector_reference(lambda s=snapshot: s)
        lines.append(len(ours.splitlines()))
    assert max(lines) > 500, lines


def test_writer_output_passes_promtool() -> None:
    snapshot = _simulated_snapshots(2)[-1]
    text = TextWriter().render(SnapshotCollector(lambda: snapshot).families())
    text += TextWriter().render(_awkward(AWKWARD))
    result = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, timeout=60)
    assert result.returncode == 0, (result.stdout + result.stderr).decode()


def test_prefix_cache_forgets_series_that_left() -> None:
    writer = TextWriter()
    writer.render(_awkward(AWKWARD))
    writer.render(_awkward([1.0]))
    assert len(writer._prefixes) == 1 + 2 + 5  # one gauge, two counters, three buckets + count + sum


def test_dirty_label_values_are_sanitised_as_the_registry_path_does() -> None:
    """/metrics (Exposition: TextWriter + the one sanitiser) serves the bytes
    client_python serves through the sanitising registry, lone surrogates and
    over-long values included."""
    from gpucarbon.exporter.http import Exposition

    base = fixed_snapshot()
    dirty = base.workloads[0]._replace(pod="bad\ud800pod", container="x" * 5000)
    snapshot = replace(base, workloads=(dirty,))

    def without_process(text: bytes) -> bytes:
        return b"".join(line + b"\n" for line in text.splitlines() if b"process_" not in line)

    ours = Exposition(lambda: snapshot).render()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SanitisedCollector(SnapshotCollector(lambda: snapshot).families))
    reference = generate_latest(registry)
    assert without_process(ours) == without_process(reference)
    assert "\ud800".encode("utf-8", "surrogatepass") not in ours


def test_process_families_match_client_pythons_process_collector() -> None:
    """The process_* families without client_python: the same names, help,
    types and order as its ProcessCollector, and the same values (the ones that
    move while the test runs, within what can move between two reads)."""
    from prometheus_client.process_collector import ProcessCollector

    from gpucarbon.exporter.process import ProcessFamilies

    ours = TextWriter().render(ProcessFamilies().families()).decode()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ProcessCollector(registry=None))
    theirs = generate_latest(registry).decode()
    assert [line for line in ours.splitlines() if line.startswith("#")] == [
        line for line in theirs.splitlines() if line.startswith("#")
    ]

    def values(text: str) -> dict[str, float]:
        return {line.split()[0]: float(line.split()[1]) for line in text.splitlines() if not line.startswith("#")}

    mine, reference = values(ours), values(theirs)
    assert mine.keys() == reference.keys() and len(mine) == 6
    for exact in ("process_start_time_seconds", "process_max_fds"):
        assert mine[exact] == reference[exact]
    assert abs(mine["process_resident_memory_bytes"] - reference["process_resident_memory_bytes"]) < 16 << 20
    assert abs(mine["process_virtual_memory_bytes"] - reference["process_virtual_memory_bytes"]) < 64 << 20
    assert abs(mine["process_cpu_seconds_total"] - reference["process_cpu_seconds_total"]) < 1.0
    assert abs(mine["process_open_fds"] - reference["process_open_fds"]) <= 4
