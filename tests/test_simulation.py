"""The simulated GPU: the scenario format, exact physics, determinism, faults."""

import pytest

from gpucarbon.clock import ManualClock
from gpucarbon.device.model import GpuReadError
from gpucarbon.simulation import SimulatedNode
from gpucarbon.simulation.scenario import ScenarioError, load_scenario, parse_scenario

ONE_GPU = """
seed: 3
gpus: [{model: Test GPU, idle_watts: 100, max_watts: 500}]
workloads:
  - {namespace: a, pod: p, container: c, workload: Job/a, team: t, gpus: [0], start: 10, end: 30, sm_util: 0.5}
"""


def backend(text, clock=None):
    clock = clock or ManualClock()
    return SimulatedNode.build(parse_scenario(text), clock), clock


def test_energy_counter_integrates_the_power_model_exactly():
    sim, clock = backend(ONE_GPU.replace("sm_util: 0.5", "sm_util: 0.0"))
    (uuid,) = sim.gpus.list_gpus()
    sim.gpus.read_gpu(uuid)
    clock.advance(40)
    # util 0 -> idle power throughout: 100 W * 40 s = 4000 J
    assert sim.gpus.read_gpu(uuid).energy_mj == 4_000_000


def test_power_between_idle_and_max_follows_utilization():
    sim, clock = backend(ONE_GPU)
    (uuid,) = sim.gpus.list_gpus()
    sim.gpus.read_gpu(uuid)
    clock.advance(20)
    reading = sim.gpus.read_gpu(uuid)
    # 10 s idle (1000 J) + 10 s at ~50% +-5% jitter: 100 + 400*u, u in [0.475, 0.525]
    assert 1000_000 + 10 * (100 + 400 * 0.475) * 1000 <= reading.energy_mj <= 1000_000 + 10 * (100 + 400 * 0.525) * 1000
    assert reading.processes and reading.samples
    # the sample averages over the whole 20 s read interval, half of it idle
    assert 0.2375 <= reading.samples[0].sm_util <= 0.2625


def test_same_seed_same_readings_other_seed_differs():
    def run(seed):
        sim, clock = backend(ONE_GPU.replace("seed: 3", f"seed: {seed}"))
        (uuid,) = sim.gpus.list_gpus()
        sim.gpus.read_gpu(uuid)
        clock.advance(25)
        return uuid, sim.gpus.read_gpu(uuid).energy_mj

    assert run(3) == run(3)
    assert run(3) != run(4)


def test_finished_workload_releases_allocation_and_process():
    sim, clock = backend(ONE_GPU)
    (uuid,) = sim.gpus.list_gpus()
    clock.advance(15)
    assert sim.scheduler.allocations()[uuid][0].workload == "Job/a"
    assert sim.gpus.read_gpu(uuid).processes
    clock.advance(20)
    assert uuid not in sim.scheduler.allocations()
    assert not sim.gpus.read_gpu(uuid).processes


def test_allocated_only_holds_without_processes():
    sim, clock = backend(ONE_GPU.replace("sm_util: 0.5", "sm_util: 0.5, allocated_only: true"))
    (uuid,) = sim.gpus.list_gpus()
    clock.advance(15)
    assert sim.scheduler.allocations()[uuid]
    assert sim.gpus.read_gpu(uuid).processes == ()


def test_lost_fault_raises_for_that_gpu_only_and_recovers():
    text = """
gpus: [{model: G, count: 2}]
faults: [{gpu: 1, kind: lost, start: 5, end: 10}]
"""
    sim, clock = backend(text)
    a, b = sim.gpus.list_gpus()
    clock.advance(6)
    sim.gpus.read_gpu(a)
    with pytest.raises(GpuReadError) as err:
        sim.gpus.read_gpu(b)
    assert err.value.error == "GpuIsLost"
    clock.advance(5)
    assert sim.gpus.read_gpu(b).energy_mj > 0


def test_reset_fault_drops_the_counter():
    sim, clock = backend("gpus: [{model: G}]\nfaults: [{gpu: 0, kind: reset, start: 10}]\n")
    (uuid,) = sim.gpus.list_gpus()
    clock.advance(9)
    before = sim.gpus.read_gpu(uuid).energy_mj
    clock.advance(2)
    after = sim.gpus.read_gpu(uuid).energy_mj
    assert after < before and after == 70 * 1 * 1000  # 1 s since the reload at 70 W


def test_demo_scenario_shows_every_case():
    scenario = load_scenario(None)
    assert len({w.team for w in scenario.workloads}) >= 3
    assert any(len(w.gpus) > 1 for w in scenario.workloads)
    assert any(w.allocated_only for w in scenario.workloads), "held by the scheduler, no process"
    assert any(not w.allocated_only and w.sm_util == ((0.0, 0.0),) for w in scenario.workloads), (
        "a process holding a context and doing nothing"
    )
    assert any(w.end is not None for w in scenario.workloads)
    used = {g for w in scenario.workloads for g in w.gpus}
    assert set(range(len(scenario.gpus))) - used, "an unallocated GPU"
    shared = [g for g in used if sum(g in w.gpus for w in scenario.workloads if w.start == 0) > 1]
    assert shared, "two pods time-slicing one GPU"


@pytest.mark.parametrize(
    "text, key",
    [
        ("gpus: [{model: G}]\nbogus: 1", "bogus"),
        ("gpus: []", "gpus"),
        ("gpus: [{model: G, count: 0}]", "gpus[0].count"),
        ("gpus: [{model: G, idle_watts: 800, max_watts: 700}]", "gpus[0].max_watts"),
        ("gpus: [{model: G}]\nworkloads: [{workload: W, gpus: [3]}]", "workloads[0].gpus"),
        ("gpus: [{model: G}]\nworkloads: [{workload: W, gpus: [0], sm_util: 1.5}]", "workloads[0].sm_util[0].util"),
        ("gpus: [{model: G}]\nworkloads: [{workload: W, gpus: [0], start: 5, end: 2}]", "workloads[0].end"),
        ("gpus: [{model: G}]\nworkloads: [{workload: W, gpus: [0], colour: red}]", "workloads[0].colour"),
        ("gpus: [{model: G}]\nfaults: [{gpu: 0, kind: melt}]", "faults[0].kind"),
        ("speed: fast\ngpus: [{model: G}]", ".speed"),
        ("gpus: [{model: G, count: 2, minor_numbers: [0]}]", "gpus[0].minor_numbers"),
        ("gpus: [{model: G, minor_numbers: [0]}, {model: G, minor_numbers: [0]}]", "minor numbers [0, 0] repeat"),
        ("gpus: [", ""),
    ],
)
def test_bad_scenarios_name_the_key(text, key):
    with pytest.raises(ScenarioError) as err:
        parse_scenario(text, "s.yaml")
    assert str(err.value).startswith("s.yaml: ")
    assert key in str(err.value)


def test_missing_scenario_file_is_a_clear_error(tmp_path):
    with pytest.raises(ScenarioError, match="nope.yaml: cannot read"):
        load_scenario(str(tmp_path / "nope.yaml"))


def test_hostile_scenario_key_keeps_the_error_on_one_line():
    with pytest.raises(ScenarioError) as err:
        parse_scenario('gpus: [{model: G}]\n"evil\\nkey": 1\n', "s.yaml")
    assert "\n" not in str(err.value)


async def test_pid_with_cgroup_goes_through_the_real_cgroup_parser(tmp_path):
    from gpucarbon.app import RunOptions, build_daemon
    from gpucarbon.config import Config

    uid = "6f1b8e2a-3c4d-4e5f-9a0b-1c2d3e4f5a6b"
    cid = "ab" * 32
    cgroup = (
        f"0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid.replace('-', '_')}"
        f".slice/cri-containerd-{cid}.scope"
    )
    scenario = parse_scenario(f"""
gpus: [{{model: G}}]
workloads:
  - {{workload: Job/ignored, container: trainer, gpus: [0], pid: 4242, cgroup: "{cgroup}", sm_util: 0.5}}
  - {{workload: Job/plain, gpus: [0], pid: 4343, sm_util: 0.5}}
""")
    clock = ManualClock()
    daemon = build_daemon(Config(), RunOptions(scenario=scenario, procfs=str(tmp_path)), base_clock=clock)
    await daemon.poller.poll()
    clock.advance(10)
    await daemon.poller.poll()
    workloads = {w.workload: w for w in daemon.poller.snapshot.workloads}
    assert set(workloads) == {f"Pod/uid-{uid}", "unresolved"}, "no procfs entry for 4343: unresolved"
    assert workloads[f"Pod/uid-{uid}"].container == cid[:12]


def test_an_open_context_draws_context_watts_not_idle():
    sim, clock = backend("""
gpus: [{model: G, idle_watts: 70, context_watts: 118, max_watts: 700}]
workloads: [{workload: Pod/nb, gpus: [0], sm_util: 0.0}]
""")
    (uuid,) = sim.gpus.list_gpus()
    sim.gpus.read_gpu(uuid)
    clock.advance(10)
    reading = sim.gpus.read_gpu(uuid)
    assert reading.energy_mj == 118 * 10 * 1000 and reading.power_w == 118.0
    assert reading.utilization == 0.0 and reading.processes


def test_context_watts_must_lie_between_idle_and_max():
    with pytest.raises(ScenarioError, match="gpus\\[0\\].context_watts"):
        parse_scenario("gpus: [{model: G, idle_watts: 70, context_watts: 50}]", "s.yaml")


def test_simulated_gpus_report_minor_numbers_the_index_unless_the_scenario_says():
    sim, _ = backend("gpus: [{model: G, count: 2}, {model: G, count: 2, minor_numbers: [7, 5]}]")
    assert [sim.gpus.read_gpu(u).minor_number for u in sim.gpus.list_gpus()] == [0, 1, 7, 5]


def test_a_workload_without_team_gets_what_the_team_rules_decide():
    from gpucarbon.teams import TeamRules

    text = """
gpus: [{model: G, count: 3}]
workloads:
  - {namespace: research, workload: Job/a, gpus: [0], allocated_only: true}
  - {namespace: serving, workload: Deployment/llm-api, gpus: [1], allocated_only: true}
  - {namespace: research, workload: Job/b, team: given, gpus: [2], allocated_only: true}
"""
    rules = TeamRules(
        default="nobody", namespaces={"research": "nlp"}, workload_patterns=((r"Deployment/llm-.*", "platform"),)
    )
    sim = SimulatedNode.build(parse_scenario(text), ManualClock(), rules)
    teams = {h.workload: h.team for holders in sim.scheduler.allocations().values() for h in holders}
    assert teams == {"Job/a": "nlp", "Deployment/llm-api": "platform", "Job/b": "given"}
    without_rules = SimulatedNode.build(parse_scenario(text), ManualClock())
    assert {h.team for hs in without_rules.scheduler.allocations().values() for h in hs} == {"", "given"}
