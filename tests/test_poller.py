"""The poll loop end to end in-process: conservation, idle policy, faults."""

import pytest
from fakes.gpu import FakeGpu, FakeGpuBackend
from pipeline import MutableIntensity, assert_conserved, make_poller

from gpucarbon.device.model import GpuProcess
from gpucarbon.identity.resolver import Resolver
from gpucarbon.simulation import SimulatedNode
from gpucarbon.simulation.scenario import load_scenario, parse_scenario


async def test_demo_day_conserves_every_millijoule(clock):
    sim = SimulatedNode.build(load_scenario(None), clock)
    poller = make_poller(sim, clock, retention=120.0)
    for _ in range(200):  # 2000 simulated seconds: jobs start, finish and expire
        await poller.poll()
        clock.advance(10.0)
    assert_conserved(poller)
    assert any(g.retired_mj for g in poller.ledger.gpus.values()), "finished jobs expired"
    snapshot = poller.snapshot
    assert snapshot.ready and snapshot.nvml_up
    assert {t.team for t in snapshot.teams} == {"nlp", "platform", "vision"}


async def test_allocated_idle_pod_pays_exactly_the_idle_draw(clock):
    sim = SimulatedNode.build(
        parse_scenario("""
gpus: [{model: G, idle_watts: 80, max_watts: 400}]
workloads: [{namespace: v, pod: nb, container: c, workload: Pod/nb, team: vision, gpus: [0], allocated_only: true}]
"""),
        clock,
    )
    poller = make_poller(sim, clock, idle_watts=80.0)
    await poller.poll()
    clock.advance(60.0)
    await poller.poll()
    (entry,) = poller.ledger.workloads.values()
    assert entry.energy_mj == 80 * 60 * 1000
    assert entry.busy_s == 0 and entry.held_s == 60.0
    assert poller.ledger.gpus[sim.gpus.list_gpus()[0]].unattributed_mj == 0


async def test_unallocated_gpu_energy_is_unattributed(clock):
    sim = SimulatedNode.build(parse_scenario("gpus: [{model: G, idle_watts: 50}]"), clock)
    poller = make_poller(sim, clock)
    await poller.poll()
    clock.advance(10.0)
    await poller.poll()
    gpu = poller.ledger.gpus[sim.gpus.list_gpus()[0]]
    assert gpu.unattributed_mj == gpu.energy_mj == 500_000


async def test_lost_gpu_is_down_others_continue_and_gap_energy_is_unattributed(clock):
    sim = SimulatedNode.build(
        parse_scenario("""
gpus: [{model: G, count: 2, idle_watts: 100, max_watts: 300}]
workloads: [{workload: Job/j, team: t, gpus: [0, 1], sm_util: 0.5}]
faults: [{gpu: 1, kind: lost, start: 15, end: 35}]
"""),
        clock,
    )
    poller = make_poller(sim, clock)
    a, b = sim.gpus.list_gpus()
    for _ in range(3):
        await poller.poll()
        clock.advance(10.0)
    snap = poller.snapshot  # t=20: GPU 1 lost
    up = {g.uuid: g.up for g in snap.gpus}
    assert up == {a: True, b: False}
    assert [g for g in snap.gpus if g.uuid == b][0].power_w is None, "no stale gauges for a lost GPU"
    assert ("nvmlDeviceGetTotalEnergyConsumption", "GpuIsLost", 1) in snap.nvml_errors
    unattributed_before = poller.ledger.gpus[b].unattributed_mj
    for _ in range(3):
        await poller.poll()
        clock.advance(10.0)
    assert {g.uuid: g.up for g in poller.snapshot.gpus} == {a: True, b: True}
    assert poller.ledger.gpus[b].unattributed_mj > unattributed_before
    assert poller.ledger.gpus[a].unattributed_mj == 0
    assert_conserved(poller)


async def test_driver_reload_is_counted_and_never_negative(clock):
    sim = SimulatedNode.build(parse_scenario("gpus: [{model: G}]\nfaults: [{gpu: 0, kind: reset, start: 25}]"), clock)
    poller = make_poller(sim, clock)
    for _ in range(5):
        await poller.poll()
        clock.advance(10.0)
    (gpu,) = poller.snapshot.gpus
    assert gpu.resets == 1 and gpu.energy_j > 0
    assert_conserved(poller)


async def test_stuck_gpu_does_not_stall_the_poll_or_pile_up_threads(clock):
    backend = FakeGpuBackend.of(clock, FakeGpu("GPU-ok", 0, mj_per_read=100_000), FakeGpu("GPU-stuck", 1))
    release = backend.gpu("GPU-stuck").stuck()
    poller = make_poller(backend, clock, timeout=0.2)
    try:
        for _ in range(4):
            await poller.poll()
            clock.advance(1.0)
        assert backend.calls == {"GPU-ok": 4, "GPU-stuck": 1}, "no second call while the first hangs"
        up = {g.uuid: g.up for g in poller.snapshot.gpus}
        assert up == {"GPU-ok": True, "GPU-stuck": False}
        assert poller.ledger.gpus["GPU-ok"].energy_mj == 300_000
        assert poller.snapshot.poll.sum_s < 4 * 0.2 + 1.0
    finally:
        release.set()


async def test_reads_never_queue_behind_other_gpus_hung_calls(clock):
    """The reader's worker threads: one per GPU, so with all but one GPU hung
    (each holding a thread) the last one is still read at once, every poll."""
    gpus = [FakeGpu(f"GPU-stuck-{i}", i) for i in range(3)] + [FakeGpu("GPU-ok", 3, mj_per_read=100_000)]
    backend = FakeGpuBackend.of(clock, *gpus)
    releases = [backend.gpu(f"GPU-stuck-{i}").stuck() for i in range(3)]
    poller = make_poller(backend, clock, timeout=0.2)
    try:
        for _ in range(3):
            await poller.poll()
            clock.advance(1.0)
        assert backend.calls == {"GPU-stuck-0": 1, "GPU-stuck-1": 1, "GPU-stuck-2": 1, "GPU-ok": 3}
        assert {g.uuid for g in poller.snapshot.gpus if g.up} == {"GPU-ok"}
        assert poller.ledger.gpus["GPU-ok"].energy_mj == 200_000
    finally:
        for release in releases:
            release.set()
    for _ in range(50):  # the hung calls return: those GPUs are read again and come back
        await poller.poll()
        clock.advance(1.0)
        if all(g.up for g in poller.snapshot.gpus):
            break
    assert all(g.up for g in poller.snapshot.gpus)


async def test_missing_library_is_reported_and_retried(clock):
    backend = FakeGpuBackend.of(clock, FakeGpu("GPU-x", counter_mj=1), available=False)
    poller = make_poller(backend, clock)
    snap = await poller.poll()
    assert not snap.nvml_up and "driver not loaded" in snap.nvml_reason and not snap.ready
    backend.available = True
    await poller.poll()  # inside the backoff window: not retried yet
    assert not poller.snapshot.nvml_up
    clock.advance(5.0)
    assert (await poller.poll()).nvml_up


async def test_nvml_up_is_not_exported_until_the_first_poll_says_what_it_is(clock):
    """A scrape before the first poll must not show a healthy driver as down
    (gpucarbon_nvml_up 0 would fire GPUCarbonNVMLDown on every restart)."""
    from gpucarbon.exporter.http import render_text

    healthy = make_poller(SimulatedNode.build(load_scenario(None), clock), clock)
    assert "gpucarbon_nvml_up" not in render_text(lambda: healthy.snapshot)
    await healthy.poll()
    assert "gpucarbon_nvml_up 1.0" in render_text(lambda: healthy.snapshot)
    missing = make_poller(FakeGpuBackend.of(clock, FakeGpu("GPU-x", counter_mj=1), available=False), clock)
    await missing.poll()
    assert "gpucarbon_nvml_up 0.0" in render_text(lambda: missing.snapshot), "after a poll, the truth: down"


async def test_emissions_use_the_intensity_valid_in_each_interval(clock):
    sim = SimulatedNode.build(parse_scenario("gpus: [{model: G, idle_watts: 100}]"), clock)
    intensity = MutableIntensity(100.0)
    poller = make_poller(sim, clock, intensity=intensity, pue=1.5)
    await poller.poll()
    clock.advance(3600.0)
    await poller.poll()  # 0.1 kWh at 100 g/kWh
    intensity.grams = 500.0
    clock.advance(3600.0)
    await poller.poll()  # 0.1 kWh at 500 g/kWh
    (gpu,) = poller.snapshot.gpus
    # (0.1 * 100 + 0.1 * 500) * 1.5 = 90 g; energy x current intensity would say 150 g
    assert gpu.grams == pytest.approx(90.0)
    assert gpu.energy_j == pytest.approx(720_000.0)


async def test_series_cap_keeps_totals(clock):
    workloads = "\n".join(f"  - {{workload: Job/w{i}, team: t{i % 3}, gpus: [0], sm_util: 0.1}}" for i in range(10))
    sim = SimulatedNode.build(parse_scenario(f"gpus: [{{model: G}}]\nworkloads:\n{workloads}\n"), clock)
    poller = make_poller(sim, clock, cap=4)
    for _ in range(3):
        await poller.poll()
        clock.advance(5.0)
    names = {w.workload for w in poller.snapshot.workloads}
    assert "overflow" in names and len(names) == 5
    assert poller.snapshot.dropped_series > 0
    assert_conserved(poller)


async def test_vanished_pid_energy_lands_on_unresolved_and_is_counted(tmp_path, clock):
    from gpucarbon.identity.procfs import ProcessCache, ProcFS

    cache = ProcessCache(ProcFS(str(tmp_path)))  # an empty procfs: every pid has vanished
    resolver = Resolver(lookup_process=cache.lookup, process_cache=cache)
    backend = FakeGpuBackend.of(clock, FakeGpu("GPU-v", mj_per_read=5_000, processes=(GpuProcess(31337),)))
    poller = make_poller(backend, clock, resolver=resolver)
    for _ in range(3):
        await poller.poll()
        clock.advance(1.0)
    (workload,) = poller.snapshot.workloads
    assert workload.workload == "unresolved" and workload.energy_j == 10.0
    assert poller.snapshot.gpus[0].unattributed_j == 0
    assert dict(resolver.failures())["vanished"] >= 2
    assert_conserved(poller)


async def test_library_lost_mid_run_is_closed_and_reopened(clock):
    driver = FakeGpuBackend.of(clock, FakeGpu("GPU-r", mj_per_read=1_000))
    poller = make_poller(driver, clock)
    await poller.poll()
    clock.advance(1.0)
    driver.unload()
    snap = await poller.poll()
    assert not snap.nvml_up and "Uninitialized" in snap.nvml_reason and driver.closes == 1
    clock.advance(5.0)
    assert not (await poller.poll()).nvml_up  # still unloaded: retried with backoff
    driver.reload()  # a reload restarts the energy counter
    clock.advance(10.0)
    await poller.poll()
    clock.advance(1.0)
    snap = await poller.poll()
    assert snap.nvml_up and driver.opens == 2 and snap.gpus[0].up
    assert_conserved(poller)


async def test_zone_overrides_for_pue_and_price_follow_the_intensity_zone(clock):
    sim = SimulatedNode.build(
        parse_scenario(
            "gpus: [{model: G, idle_watts: 100}]\n"
            "workloads: [{workload: Pod/p, team: t, gpus: [0], allocated_only: true}]"
        ),
        clock,
    )
    poller = make_poller(
        sim,
        clock,
        intensity=MutableIntensity(200.0),
        pue=1.5,
        pue_by_zone={"ZZ": 1.1},
        price_per_kwh=0.30,
        price_by_zone={"ZZ": 0.10},
    )
    await poller.poll()
    clock.advance(3600.0)
    await poller.poll()  # 0.1 kWh in zone ZZ: 0.1 x 200 x 1.1 = 22 g
    (gpu,) = poller.snapshot.gpus
    assert gpu.grams == pytest.approx(22.0)
    assert poller.snapshot.carbon.pue == 1.1 and poller.snapshot.carbon.currency == "USD"
    (workload,) = poller.snapshot.workloads
    assert workload.cost == pytest.approx(0.1 * 0.10)  # the zone's price, not the default 0.30


async def test_workload_views_carry_each_ledger_figure_under_its_own_name(clock):
    """snapshot.py builds the views by position for speed: every figure must
    land in the field of its name (distinct numbers, so a swap shows)."""
    sim = SimulatedNode.build(
        parse_scenario("""
gpus: [{model: G, idle_watts: 80, max_watts: 400}]
workloads: [{namespace: v, pod: nb, container: c, workload: Job/nb, team: vision, gpus: [0], sm_util: 0.5}]
"""),
        clock,
    )
    poller = make_poller(sim, clock, idle_watts=80.0)
    await poller.poll()
    clock.advance(60.0)
    await poller.poll()
    (entry,) = poller.ledger.workloads.values()
    entry.grams, entry.power_w, entry.held_s, entry.busy_s, entry.embodied_grams, entry.cost = (
        1.5,
        2.5,
        3.5,
        4.5,
        5.5,
        6.5,
    )
    entry.energy_mj, entry.idle_mj = 7_000, 8_000
    view = poller.poller._publish(last_poll_wall=None).workloads[0]  # the same ledger, published again
    c = entry.consumer
    assert (view.gpu, view.namespace, view.pod, view.container, view.workload, view.team, view.key) == (
        "0",
        c.namespace,
        c.pod,
        c.container,
        c.workload,
        c.team,
        c.key,
    )
    assert (view.grams, view.power_w, view.held_s, view.busy_s, view.embodied_grams, view.cost) == (
        1.5,
        2.5,
        3.5,
        4.5,
        5.5,
        6.5,
    )
    assert (view.energy_j, view.idle_j, view.holding, view.mig_instance, view.mig_uuid) == (7.0, 8.0, True, "", "")
    assert view.uuid == sim.gpus.list_gpus()[0]
