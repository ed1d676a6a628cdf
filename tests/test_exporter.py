"""The exposition: a golden file for a fixed snapshot, promtool-clean, and the HTTP front.

Regenerate the golden file after an intended change with
    GPUCARBON_UPDATE_GOLDEN=1 python -m pytest tests/test_exporter.py
"""

import os
import subprocess
from pathlib import Path

from served import served

from gpucarbon.carbon.model import IntensityReading
from gpucarbon.exporter.http import build_server, parse_listen_address, render_text
from gpucarbon.snapshot import CarbonView, GpuView, PollStats, Snapshot, SourceView, TeamView, WorkloadView

GOLDEN = Path(__file__).parent / "fixtures" / "exposition" / "snapshot.prom"


def fixed_snapshot(sequence=1, ready=True):
    gpu = GpuView(
        index=0,
        uuid="GPU-0000",
        model="NVIDIA H100 80GB HBM3",
        driver_version="580.1",
        mig_mode="disabled",
        energy_source="counter",
        up=True,
        power_w=350.5,
        power_limit_w=700.0,
        utilization=0.5,
        memory_used_bytes=2**30,
        memory_total_bytes=80 * 2**30,
        temperature_c=55.0,
        idle_power_w=70.0,
        energy_j=1000.0,
        unattributed_j=100.0,
        retired_j=50.0,
        grams=0.1,
        unattributed_grams=0.01,
        retired_grams=0.005,
        resets=1,
    )
    lost = GpuView(
        index=1,
        uuid="GPU-1111",
        model="NVIDIA H100 80GB HBM3",
        driver_version="580.1",
        mig_mode="unknown",
        energy_source="counter",
        up=False,
        power_w=None,
        power_limit_w=None,
        utilization=None,
        memory_used_bytes=None,
        memory_total_bytes=None,
        temperature_c=None,
        idle_power_w=70.0,
        energy_j=5.0,
        unattributed_j=5.0,
        retired_j=0.0,
        grams=0.0005,
        unattributed_grams=0.0005,
        retired_grams=0.0,
        resets=0,
    )
    workload = WorkloadView(
        gpu="0",
        uuid="GPU-0000",
        namespace="ns",
        pod='evil"pod\nname',
        container="c",
        workload="Job/train",
        team="nlp",
        energy_j=850.0,
        grams=0.085,
        power_w=300.0,
        held_s=10.0,
        busy_s=5.0,
        embodied_grams=0.0,
        cost=0.0,
        holding=True,
    )
    return Snapshot(
        sequence=sequence,
        ready=ready,
        nvml_up=True,
        nvml_reason="",
        gpus=(gpu, lost),
        workloads=(workload,),
        teams=(TeamView("nlp", 850.0, 0.085, 0.0, 0.0),),
        carbon=CarbonView(
            IntensityReading(420.0, "GB", "uk-carbon-intensity"),
            1.2,
            "uk-carbon-intensity",
            True,
            (("rate_limited", 2),),
            125.0,
            1,
            False,
            None,
        ),
        sources=(SourceView("procfs", True, (("vanished", 2),)),),
        nvml_errors=(("nvmlDeviceGetTotalEnergyConsumption", "GpuIsLost", 3),),
        dropped_series=0,
        poll=PollStats((0.01, 0.1), (4, 5, 5), 5, 0.05, 1_700_000_000.0),
    )


def exposition_without_process_metrics(text):
    return "".join(line + "\n" for line in text.splitlines() if "process_" not in line)


def test_exposition_matches_golden_file():
    text = exposition_without_process_metrics(render_text(fixed_snapshot))
    if os.environ.get("GPUCARBON_UPDATE_GOLDEN"):
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text()


def test_exposition_passes_promtool(tmp_path):
    result = subprocess.run(
        ["promtool", "check", "metrics"], input=render_text(fixed_snapshot), capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == ""


def test_lost_gpu_exports_up_zero_and_no_stale_gauges():
    text = render_text(fixed_snapshot)
    assert 'gpucarbon_gpu_up{gpu="1",uuid="GPU-1111"} 0.0' in text
    assert 'gpucarbon_gpu_power_watts{gpu="1"' not in text
    assert 'gpucarbon_gpu_energy_joules_total{gpu="1",uuid="GPU-1111"} 5.0' in text


def test_label_values_are_escaped_and_sanitised():
    # The quote is escaped by the exposition format; the newline never gets
    # that far: every rendered label goes through the one sanitiser.
    text = render_text(fixed_snapshot)
    assert 'pod="evil\\"podname"' in text
    assert "\\n" not in text.split("# HELP process_")[0]


def test_a_lone_surrogate_or_huge_label_never_breaks_a_scrape():
    # Issue 11: a zone "FR\ud800" from a carbon API made every /metrics a 500.
    from dataclasses import replace

    snap = fixed_snapshot()
    hostile = replace(
        snap,
        teams=tuple(replace(t, team="evil\ud800team") for t in snap.teams),
        workloads=tuple(w._replace(workload="W" * 30000) for w in snap.workloads),
    )
    text = render_text(lambda: hostile)
    assert 'team="evilteam"' in text
    assert "W" * 400 not in text and "W" * 300 in text


async def test_http_serves_metrics_health_and_readiness():
    state = {"snap": fixed_snapshot(ready=False), "healthy": True}
    server = build_server(latest=lambda: state["snap"], healthy=lambda: state["healthy"])
    async with served(server) as client:
        assert (await client.get("/readyz")).status == 503
        state["snap"] = fixed_snapshot(sequence=2, ready=True)
        assert (await client.get("/readyz")).status == 200
        assert (await client.get("/healthz")).status == 200
        state["healthy"] = False
        assert (await client.get("/healthz")).status == 503
        metrics = await client.get("/metrics", headers={"Accept-Encoding": "gzip"})
        assert metrics.status == 200 and "gpucarbon_gpu_energy_joules_total" in await metrics.text()
        assert metrics.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        assert "Metrics" in await (await client.get("/")).text()


async def test_scrapes_between_polls_reuse_one_rendering():
    calls = {"n": 0}
    snap = fixed_snapshot()

    def latest():
        calls["n"] += 1
        return snap

    server = build_server(latest=latest, healthy=lambda: True)
    async with served(server) as client:
        bodies = {await (await client.get("/metrics")).text() for _ in range(5)}
    assert len(bodies) == 1
    # one collect() per rendering calls latest() once more than the cache checks
    assert calls["n"] <= 5 + 1


def test_listen_addresses():
    assert parse_listen_address(":9789").host is None
    assert parse_listen_address("[::1]:80").host == "::1"
    assert parse_listen_address("127.0.0.1:0").port == 0
    for bad in ("9789", "host:", "::1:80", "a:99999"):
        try:
            parse_listen_address(bad)
        except ValueError:
            continue
        raise AssertionError(f"{bad!r} accepted")
