"""The real NVML backend (over the real pynvml bindings and the fake library at
the C ABI) feeding the poller: per-process samples, MIG, MPS and driver faults
as they change the numbers users see. Energy is checked to the millijoule."""

from __future__ import annotations

import asyncio
import threading
from types import SimpleNamespace

import pynvml
import pytest
from fakes.libnvml import (
    NVML_ERROR_UNKNOWN,
    FakeGpu,
    FakeMig,
    FakeNvmlLibrary,
    FakeProcess,
    FakeSample,
)
from pipeline import make_poller as make_pipeline

from gpucarbon.attribution.policy import split_exact
from gpucarbon.attribution.sharing import InstanceShare, share_mps_server, split_mig_board
from gpucarbon.clock import ManualClock
from gpucarbon.device import reader as reader_module
from gpucarbon.device.nvml import NvmlBackend
from gpucarbon.exporter.http import render_text
from gpucarbon.identity.model import CgroupIdentity, Consumer
from gpucarbon.identity.resolver import Resolver

UUID = "GPU-aaaaaaaa-0000-0000-0000-000000000000"
MIG_1 = "MIG-11111111-2222-3333-4444-555555555555"
MIG_2 = "MIG-66666666-7777-8888-9999-000000000000"


@pytest.fixture
def lib_factory():
    made: list[FakeNvmlLibrary] = []

    def make(gpus, **kwargs):
        lib = FakeNvmlLibrary(gpus, **kwargs).install()
        made.append(lib)
        return lib

    yield make
    for lib in made:
        assert lib.callback_errors == []
        lib.uninstall()


def processes(comms: dict[int, str]):
    """A /proc stand-in: pid -> comm, each a plain host process of user 'u'."""

    def lookup(pid):
        return SimpleNamespace(user="u", comm=comms[pid], cgroup=CgroupIdentity()) if pid in comms else None

    return lookup


def make_poller(clock, comms, *, idle_w=100.0, held=None, allocations=None):
    """The daemon's pipeline (reader -> accountant -> ledger -> snapshot) over
    the real NVML backend and the fake library."""

    class Held:
        def allocations(self):
            return held or {}

    return make_pipeline(
        NvmlBackend(nvml=pynvml, clock=clock.monotonic, wall=clock.wall),
        clock,
        allocations=allocations or Held(),
        idle_watts=idle_w,
        resolver=Resolver(lookup_process=processes(comms)),
        retention=3600.0,
    )


def workloads(poller):
    return {key: entry for (_, key), entry in poller.ledger.workloads.items()}


def stamp(clock, back_s=0.5):
    return int((clock.wall() - back_s) * 1_000_000)


async def two_polls(poller, clock, gpu, energy_mj, dt=10.0, before_second=None):
    await poller.poll()
    clock.advance(dt)
    gpu.advance(energy_mj)
    if before_second:
        before_second()
    await poller.poll()


# -- per-process samples ------------------------------------------------------------


async def test_busy_seconds_are_each_process_utilization_not_divided_by_process_count(lib_factory):
    """Three processes at 60/20/10 %: busy 6/2/1 s of 10 s (was 2/0.67/0.33)."""
    clock = ManualClock()
    gpu = FakeGpu(UUID, processes=[FakeProcess(1), FakeProcess(2), FakeProcess(3)])
    lib_factory([gpu])
    poller = make_poller(clock, {1: "a", 2: "b", 3: "c"}, idle_w=100.0)

    def samples():
        gpu.samples = [
            FakeSample(1, stamp(clock, 0.9), 60),
            FakeSample(2, stamp(clock, 0.6), 20),
            FakeSample(3, stamp(clock, 0.3), 10),
        ]

    await two_polls(poller, clock, gpu, 3_000_000, before_second=samples)

    entries = workloads(poller)
    assert [entries[f"process/u/{c}"].busy_s for c in "abc"] == [
        pytest.approx(6.0),
        pytest.approx(2.0),
        pytest.approx(1.0),
    ]
    idle, active = 1_000_000, 2_000_000
    idle_parts = split_exact(idle, [1, 1, 1])
    active_parts = split_exact(active, [0.6, 0.2, 0.1])
    expected = [i + a for i, a in zip(idle_parts, active_parts, strict=True)]
    assert [entries[f"process/u/{c}"].energy_mj for c in "abc"] == expected


# -- MIG ------------------------------------------------------------------------------


def mig_gpu(gpm: bool) -> FakeGpu:
    return FakeGpu(
        UUID,
        mig_enabled=True,
        gpm_supported=gpm,
        migs=[
            FakeMig(
                MIG_1, gpu_instance_id=1, sm_count=42, slice_count=3, processes=[FakeProcess(10)], gpm_sm_util=80.0
            ),
            FakeMig(
                MIG_2, gpu_instance_id=5, sm_count=14, slice_count=1, processes=[FakeProcess(11)], gpm_sm_util=40.0
            ),
            FakeMig("MIG-99999999-0000-0000-0000-000000000000", gpu_instance_id=9, sm_count=42, slice_count=3),
        ],
    )


async def test_mig_board_energy_splits_by_gpm_sm_utilization_weighted_by_sm_count(lib_factory):
    clock = ManualClock()
    gpu = mig_gpu(gpm=True)
    lib = lib_factory([gpu])
    poller = make_poller(clock, {10: "big", 11: "small"}, idle_w=70.0)
    await poller.poll()
    clock.advance(10.0)
    lib.now_s += 10.0
    gpu.advance(5_000_000)
    await poller.poll()

    entries = workloads(poller)
    idle, active = 700_000, 4_300_000
    idle_by_instance = split_exact(idle, [3, 1, 3])  # by slices; the empty 3g instance has nobody
    active_by_instance = split_exact(active, [0.8 * 42, 0.4 * 14, 0.0])
    assert entries["process/u/big"].energy_mj == idle_by_instance[0] + active_by_instance[0]
    assert entries["process/u/small"].energy_mj == idle_by_instance[1] + active_by_instance[1]
    totals = poller.ledger.gpus[UUID]
    assert totals.unattributed_mj == idle_by_instance[2]
    assert (
        entries["process/u/big"].energy_mj + entries["process/u/small"].energy_mj + totals.unattributed_mj
        == totals.energy_mj
        == 5_000_000
    )
    # busy: the instance's GPM utilization as a share of the board's SMs
    assert entries["process/u/big"].busy_s == pytest.approx(10.0 * 0.8 * 42 / 98)
    # board power is not repeated per instance: one GPU series, one energy total;
    # the workload says which instance it ran in
    assert [g.uuid for g in poller.snapshot.gpus] == [UUID]
    text = render_text(lambda: poller.snapshot)
    assert text.count("gpucarbon_gpu_energy_joules_total{") == 1
    assert f'gpu_instance="1",mig_uuid="{MIG_1}"' in text
    assert f'gpu_instance="5",mig_uuid="{MIG_2}"' in text


async def test_mig_without_gpm_splits_active_energy_by_slices_of_busy_instances(lib_factory):
    clock = ManualClock()
    gpu = mig_gpu(gpm=False)
    lib_factory([gpu])
    poller = make_poller(clock, {10: "big", 11: "small"}, idle_w=70.0)
    await two_polls(poller, clock, gpu, 5_000_000)
    entries = workloads(poller)
    active_by_instance = split_exact(4_300_000, [3, 1, 0])
    idle_by_instance = split_exact(700_000, [3, 1, 3])
    assert entries["process/u/small"].energy_mj == idle_by_instance[1] + active_by_instance[1]


async def test_mig_allocation_holder_without_a_process_pays_idle_of_the_empty_instance(lib_factory):
    clock = ManualClock()
    gpu = mig_gpu(gpm=False)
    lib_factory([gpu])
    notebook = Consumer(key="pod/nb/c", namespace="ns", pod="nb", container="c", workload="Pod/nb")
    poller = make_poller(clock, {10: "big", 11: "small"}, idle_w=70.0, held={UUID: (notebook,)})
    await two_polls(poller, clock, gpu, 5_000_000)
    entries = workloads(poller)
    assert entries["pod/nb/c"].energy_mj == split_exact(700_000, [3, 1, 3])[2]
    assert poller.ledger.gpus[UUID].unattributed_mj == 0


def test_mig_split_sums_exactly_for_awkward_numbers():
    shares = [
        InstanceShare("1", ["a"], {"a": 0.0}, 3, 42, 0.33),
        InstanceShare("2", ["b", "c"], {"b": 0.0}, 2, 28, 0.71),
        InstanceShare("3", [], {}, 2, 28, None),
    ]
    for energy in (0, 1, 7, 999_999_937):
        split, by_instance = split_mig_board(energy, 12_345, shares)
        assert sum(split.parts.values()) + split.unattributed_mj == energy == sum(by_instance.values())


# -- MPS ---------------------------------------------------------------------------------


async def test_mps_server_is_never_charged_and_its_share_goes_to_the_clients(lib_factory):
    """The server appears as a compute process; if the samples name it, its
    utilization is split equally among the MPS clients."""
    clock = ManualClock()
    gpu = FakeGpu(
        UUID,
        processes=[FakeProcess(500), FakeProcess(501), FakeProcess(502)],
        mps_clients=[FakeProcess(501), FakeProcess(502)],
    )
    lib_factory([gpu])
    poller = make_poller(clock, {500: "nvidia-cuda-mps", 501: "train", 502: "infer"}, idle_w=100.0)

    def samples():
        gpu.samples = [FakeSample(500, stamp(clock), 90)]

    await two_polls(poller, clock, gpu, 3_000_000, before_second=samples)

    entries = workloads(poller)
    assert "process/u/nvidia-cuda-mps" not in entries
    assert entries["process/u/train"].energy_mj + entries["process/u/infer"].energy_mj == 3_000_000
    assert entries["process/u/train"].busy_s == pytest.approx(4.5)


def test_mps_share_moves_equally_and_keeps_client_samples():
    assert share_mps_server({1: 0.6, 2: 0.1}, {1}, [2, 3]) == {2: pytest.approx(0.4), 3: pytest.approx(0.3)}
    assert share_mps_server({1: 0.6}, {1}, []) == {}


# -- driver faults --------------------------------------------------------------------------


async def test_driver_unloaded_mid_run_closes_and_reopens_nvml(lib_factory):
    clock = ManualClock()
    gpu = FakeGpu(UUID)
    lib = lib_factory([gpu])
    poller = make_poller(clock, {})
    await two_polls(poller, clock, gpu, 1_000)
    assert poller.snapshot.nvml_up and poller.snapshot.ready

    lib.driver_loaded = False
    clock.advance(10.0)
    await poller.poll()
    assert not poller.snapshot.nvml_up
    assert "DriverNotLoaded" in poller.snapshot.nvml_reason
    assert lib.calls_to("nvmlShutdown")  # closed, not left half-open

    lib.driver_loaded = True
    clock.advance(10.0)
    await poller.poll()
    assert poller.snapshot.nvml_up
    assert len(lib.calls_to("nvmlInitWithFlags")) == 2


async def test_persistent_unknown_error_at_init_turns_not_ready_with_a_recreate_message(lib_factory):
    clock = ManualClock()
    gpu = FakeGpu(UUID)
    lib = lib_factory([gpu])
    poller = make_poller(clock, {})
    await two_polls(poller, clock, gpu, 1_000)
    assert poller.snapshot.ready

    # systemctl daemon-reload (nvidia-container-toolkit#48): reads and init fail
    lib.driver_loaded = False
    await poller.poll()
    lib.driver_loaded, lib.init_error = True, NVML_ERROR_UNKNOWN
    elapsed = 0.0
    while elapsed < reader_module.DOWN_UNREADY_S - 10:
        clock.advance(10.0)
        elapsed += 10.0
        await poller.poll()
        assert poller.snapshot.ready, "a short outage does not fail readiness"
    clock.advance(20.0)
    await poller.poll()
    assert not poller.snapshot.ready and not poller.snapshot.nvml_up
    assert "must be recreated" in poller.snapshot.nvml_reason


async def test_hung_nvml_init_is_bounded_and_not_ready(lib_factory, monkeypatch):
    monkeypatch.setattr(reader_module, "OPEN_TIMEOUT_S", 0.2)
    clock = ManualClock()
    lib = lib_factory([FakeGpu(UUID)])
    lib.init_hang = threading.Event()
    poller = make_poller(clock, {})
    try:
        await asyncio.wait_for(poller.poll(), 5.0)
        assert not poller.snapshot.ready and not poller.snapshot.nvml_up
        assert "did not answer" in poller.snapshot.nvml_reason
        clock.advance(5.0)
        await asyncio.wait_for(poller.poll(), 5.0)  # the hung attempt is not started twice
        assert "has not answered" in poller.snapshot.nvml_reason
        assert len(lib.calls_to("nvmlInitWithFlags")) == 1
    finally:
        lib.init_hang.set()
    await asyncio.sleep(0.05)
    clock.advance(60.0)
    await poller.poll()
    assert poller.snapshot.nvml_up


async def test_not_ready_before_the_first_successful_poll(lib_factory):
    clock = ManualClock()
    lib_factory([FakeGpu(UUID)], init_error=NVML_ERROR_UNKNOWN)
    poller = make_poller(clock, {})
    assert not poller.snapshot.ready
    await poller.poll()
    assert not poller.snapshot.ready and not poller.snapshot.nvml_up


async def test_grace_module_scope_is_exported_with_each_figure(lib_factory):
    clock = ManualClock()
    gpu = FakeGpu(UUID, name="NVIDIA GH200 480GB", module_power_mw=650_000)
    lib_factory([gpu])
    poller = make_poller(clock, {})
    await two_polls(poller, clock, gpu, 6_500_000)
    text = render_text(lambda: poller.snapshot)
    assert 'energy_scope="module"' in text
    assert f'gpucarbon_gpu_module_power_watts{{gpu="0",uuid="{UUID}"}} 650.0' in text
    assert f'gpucarbon_gpu_power_watts{{gpu="0",uuid="{UUID}"}} 310.0' in text  # GPU-only field


# -- Slurm: a job holding an idle GPU pays its idle draw ------------------------------


async def test_slurm_job_holding_an_idle_gpu_pays_its_idle_draw(lib_factory):
    """Slurm index 1 is /dev/nvidia1, which NVML enumerates first here."""
    from gpucarbon.identity.slurm import SlurmAllocations, SlurmJobInfo, minors_of

    class Jobs:  # what SlurmAllocations asks of the Slurm source
        def info(self, job_id):
            return SlurmJobInfo(job_id, "physics", "alice", gpus_by_node={"n1": (1,)})

        def job(self, job_id):
            return SimpleNamespace(workload=f"slurm/{job_id}", team="physics")

    clock = ManualClock()
    second = "GPU-bbbbbbbb-0000-0000-0000-000000000000"
    gpus = [FakeGpu(second, minor=1), FakeGpu(UUID, minor=0)]
    lib_factory(gpus)
    box = {}
    held = SlurmAllocations(Jobs(), "n1", lambda: minors_of(box["reader"].latest()), job_ids=lambda: ["4242"])
    poller = make_poller(clock, {}, idle_w=80.0, allocations=held)
    box["reader"] = poller.reader
    await poller.poll()
    clock.advance(10.0)
    for gpu in gpus:
        gpu.advance(1_000_000)
    await poller.poll()
    entries = {(u, k): e for (u, k), e in poller.ledger.workloads.items()}
    # the only holder, no process: it pays the whole interval (docs/attribution.md)
    assert entries[(second, "slurm/4242")].energy_mj == 1_000_000
    assert entries[(second, "slurm/4242")].held_s == 10.0 and entries[(second, "slurm/4242")].busy_s == 0.0
    assert (UUID, "slurm/4242") not in entries
    assert poller.ledger.gpus[UUID].unattributed_mj == 1_000_000


@pytest.mark.parametrize(
    "model, watts",
    [
        ("NVIDIA H200", 75.0),
        ("NVIDIA H100 80GB HBM3", 70.0),
        ("NVIDIA A100-SXM4-40GB", 46.0),
        ("Tesla T4", 8.0),
        ("NVIDIA GH200 480GB", 90.0),  # not the H200 default: 10 % of its 900 W limit
    ],
)
def test_idle_defaults_do_not_take_a_grace_superchip_for_a_gpu(model, watts):
    from gpucarbon.attribution.idle import default_idle_watts

    assert default_idle_watts(model, 900.0) == pytest.approx(watts)


async def test_every_gpu_answering_unknown_error_reopens_and_says_recreate(lib_factory):
    """After `systemctl daemon-reload` the running process loses its devices:
    every call answers Unknown Error, and so does nvmlInit (toolkit#48)."""
    clock = ManualClock()
    gpus = [FakeGpu(UUID), FakeGpu("GPU-bbbbbbbb-0000-0000-0000-000000000000")]
    lib = lib_factory(gpus)
    poller = make_poller(clock, {})
    await two_polls(poller, clock, gpus[0], 1_000)
    lib.errors["nvmlDeviceGetName"] = NVML_ERROR_UNKNOWN
    lib.init_error = NVML_ERROR_UNKNOWN
    clock.advance(10.0)
    await poller.poll()
    assert lib.calls_to("nvmlShutdown")  # closed to find out
    clock.advance(10.0)
    await poller.poll()
    assert not poller.snapshot.nvml_up and "must be recreated" in poller.snapshot.nvml_reason


async def test_one_gpu_answering_unknown_is_that_gpu_only(lib_factory):
    clock = ManualClock()
    gpus = [FakeGpu(UUID), FakeGpu("GPU-bbbbbbbb-0000-0000-0000-000000000000")]
    lib = lib_factory(gpus)
    poller = make_poller(clock, {})
    await two_polls(poller, clock, gpus[0], 1_000)
    gpus[0].errors["nvmlDeviceGetName"] = NVML_ERROR_UNKNOWN
    clock.advance(10.0)
    await poller.poll()
    assert poller.snapshot.nvml_up and lib.calls_to("nvmlShutdown") == []
    assert [g.up for g in poller.snapshot.gpus] == [False, True]
