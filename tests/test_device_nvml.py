"""NvmlBackend over the REAL pynvml bindings and a fake libnvidia-ml at the C
ABI (tests/fakes/libnvml.py): units, unsupported fields, lost GPUs, per-process
samples as NVIDIA documents them, MIG, GPM, MPS, driver faults."""

from __future__ import annotations

import sys
import threading

import pynvml
import pytest
from fakes.libnvml import (
    NVML_ERROR_DRIVER_NOT_LOADED,
    NVML_ERROR_GPU_IS_LOST,
    NVML_ERROR_LIB_RM_VERSION_MISMATCH,
    NVML_ERROR_LIBRARY_NOT_FOUND,
    NVML_ERROR_NO_PERMISSION,
    NVML_ERROR_NOT_SUPPORTED,
    NVML_ERROR_TIMEOUT,
    NVML_ERROR_UNINITIALIZED,
    NVML_ERROR_UNKNOWN,
    FakeGpu,
    FakeMig,
    FakeNvmlLibrary,
    FakeProcess,
    FakeSample,
)

from gpucarbon.device.model import BackendUnavailable, GpuProcess, GpuReadError, ProcessSample
from gpucarbon.device.nvml import NvmlBackend

UUID_A = "GPU-aaaaaaaa-0000-0000-0000-000000000000"
UUID_B = "GPU-bbbbbbbb-0000-0000-0000-000000000000"
GIB = 1 << 30
NOW_S = 1_700_000_000.0  # the wall clock the tests run at
NOW_US = int(NOW_S * 1_000_000)


class FakeClock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def _libraries():
    """Every fake library a test installs is removed afterwards, and a bug
    inside a fake C function fails the test instead of hiding as a code."""
    installed: list[FakeNvmlLibrary] = []
    FakeNvmlLibrary.installed = installed  # type: ignore[attr-defined]
    yield
    for lib in installed:
        assert lib.callback_errors == []
    pynvml.nvmlLib = None
    pynvml._nvmlGetFunctionPointer_cache.clear()


def library(gpus: list[FakeGpu], **kwargs) -> FakeNvmlLibrary:
    lib = FakeNvmlLibrary(gpus, **kwargs).install()
    FakeNvmlLibrary.installed.append(lib)  # type: ignore[attr-defined]
    return lib


def two_gpus() -> FakeNvmlLibrary:
    return library(
        [
            FakeGpu(
                UUID_A,
                energy_mj=5_000_000,
                power_mw=250_000,
                instant_power_mw=261_500,
                gpu_util_percent=75,
                memory_used_bytes=12 * GIB,
                temperature_c=51,
                minor=3,
                processes=[FakeProcess(pid=4242, used_memory_bytes=3 * GIB)],
                samples=[FakeSample(pid=4242, timestamp_us=NOW_US - 500_000, sm_util=60)],
            ),
            FakeGpu(UUID_B, name="NVIDIA A100-SXM4-40GB", energy_mj=7_000, power_limit_mw=400_000, minor=0),
        ]
    )


def opened(lib: FakeNvmlLibrary, clock: FakeClock | None = None, wall: FakeClock | None = None) -> NvmlBackend:
    backend = NvmlBackend(nvml=pynvml, clock=clock or FakeClock(), wall=wall or FakeClock(NOW_S))
    backend.open()
    return backend


# -- normal reads -------------------------------------------------------------


def test_lists_gpus_by_uuid_in_index_order():
    assert opened(two_gpus()).list_gpus() == (UUID_A, UUID_B)


def test_reading_converts_nvml_units_to_si():
    reading = opened(two_gpus(), FakeClock(123.5)).read_gpu(UUID_A)

    assert reading.uuid == UUID_A
    assert reading.index == 0
    assert reading.name == "NVIDIA H100 80GB HBM3"
    assert reading.timestamp_s == 123.5
    assert reading.driver_version == "550.54.15"
    assert reading.mig_mode is False
    assert reading.energy_mj == 5_000_000
    assert reading.power_w == pytest.approx(261.5)  # mW -> W, instant field
    assert reading.power_limit_w == pytest.approx(700.0)
    assert reading.utilization == pytest.approx(0.75)  # percent -> fraction
    assert reading.memory_used_bytes == 12 * GIB
    assert reading.memory_total_bytes == 80 * GIB
    assert reading.temperature_c == 51.0
    assert reading.processes == (GpuProcess(pid=4242, used_memory_bytes=3 * GIB),)
    assert reading.samples == (ProcessSample(pid=4242, timestamp_us=NOW_US - 500_000, sm_util=0.6),)
    assert reading.minor_number == 3
    assert reading.energy_scope == "gpu" and reading.module_power_w is None
    assert reading.errors == ()


def test_each_gpu_reads_its_own_values():
    backend = opened(two_gpus())
    backend.list_gpus()
    b = backend.read_gpu(UUID_B)

    assert (b.index, b.name, b.energy_mj, b.power_limit_w) == (1, "NVIDIA A100-SXM4-40GB", 7_000, 400.0)
    assert b.processes == () and b.samples == ()


def test_energy_counter_advances_between_reads():
    nvml = two_gpus()
    backend = opened(nvml)
    first = backend.read_gpu(UUID_A).energy_mj
    nvml.gpu(UUID_A).advance(2_500)
    assert backend.read_gpu(UUID_A).energy_mj - first == 2_500


def test_handles_are_looked_up_by_uuid_once_and_not_by_index():
    nvml = two_gpus()
    backend = opened(nvml)
    backend.read_gpu(UUID_B)
    backend.read_gpu(UUID_B)
    assert len(nvml.calls_to("nvmlDeviceGetHandleByUUID", UUID_B)) == 1
    assert nvml.calls_to("nvmlDeviceGetHandleByIndex_v2") == []


def test_reordered_enumeration_keeps_uuid_identity():
    nvml = two_gpus()
    backend = opened(nvml)
    nvml.gpus.reverse()  # e.g. after a reboot, PCI order differs
    assert backend.list_gpus() == (UUID_B, UUID_A)
    assert backend.read_gpu(UUID_A).index == 1
    assert backend.read_gpu(UUID_A).energy_mj == 5_000_000


# -- unsupported and failing fields -------------------------------------------


def test_not_supported_fields_are_none_not_errors():
    nvml = two_gpus()
    gpu = nvml.gpu(UUID_A)
    for call in (
        "nvmlDeviceGetTotalEnergyConsumption",
        "nvmlDeviceGetFieldValues",
        "nvmlDeviceGetPowerUsage",
        "nvmlDeviceGetEnforcedPowerLimit",
        "nvmlDeviceGetUtilizationRates",
        "nvmlDeviceGetMemoryInfo",
        "nvmlDeviceGetTemperatureV",
        "nvmlDeviceGetMigMode",
        "nvmlDeviceGetComputeRunningProcesses_v3",
        "nvmlDeviceGetProcessUtilization",
    ):
        gpu.errors[call] = NVML_ERROR_NOT_SUPPORTED

    reading = opened(nvml).read_gpu(UUID_A)

    assert reading.energy_mj is None
    assert reading.power_w is None
    assert reading.power_limit_w is None
    assert reading.utilization is None
    assert reading.memory_used_bytes is None and reading.memory_total_bytes is None
    assert reading.temperature_c is None
    assert reading.mig_mode is None
    assert reading.processes == () and reading.samples == ()
    assert reading.errors == ()


def test_unsupported_energy_counter_is_none_and_the_gpu_is_not_lost():
    nvml = two_gpus()
    nvml.gpu(UUID_A).errors["nvmlDeviceGetTotalEnergyConsumption"] = NVML_ERROR_NOT_SUPPORTED
    reading = opened(nvml).read_gpu(UUID_A)
    assert reading.energy_mj is None
    assert reading.power_w == pytest.approx(261.5)


def test_other_field_errors_are_recorded_and_the_reading_is_kept():
    nvml = two_gpus()
    nvml.gpu(UUID_A).errors["nvmlDeviceGetTemperatureV"] = NVML_ERROR_TIMEOUT
    nvml.gpu(UUID_A).errors["nvmlDeviceGetComputeRunningProcesses_v3"] = NVML_ERROR_NO_PERMISSION

    reading = opened(nvml).read_gpu(UUID_A)

    assert reading.temperature_c is None
    assert reading.processes == ()
    assert reading.energy_mj == 5_000_000
    assert set(reading.errors) == {
        ("nvmlDeviceGetTemperatureV", "Timeout"),
        ("nvmlDeviceGetComputeRunningProcesses", "NoPermission"),
    }


# -- power ----------------------------------------------------------------------


def test_instant_power_field_is_preferred_over_power_usage():
    nvml = two_gpus()
    reading = opened(nvml).read_gpu(UUID_A)
    assert reading.power_w == pytest.approx(261.5)
    # the instant field, and once the module-scope probe (an H100 is no superchip)
    assert len(nvml.calls_to("nvmlDeviceGetFieldValues", UUID_A)) == 2
    assert nvml.calls_to("nvmlDeviceGetPowerUsage", UUID_A) == []


def test_unsupported_instant_field_falls_back_to_power_usage_and_is_not_asked_again():
    nvml = two_gpus()
    nvml.gpu(UUID_A).field_returns[pynvml.NVML_FI_DEV_POWER_INSTANT] = NVML_ERROR_NOT_SUPPORTED
    backend = opened(nvml)

    assert backend.read_gpu(UUID_A).power_w == pytest.approx(250.0)
    second = backend.read_gpu(UUID_A)

    assert second.power_w == pytest.approx(250.0)
    assert second.errors == ()
    assert len(nvml.calls_to("nvmlDeviceGetFieldValues", UUID_A)) == 2  # the first read and its scope probe


def test_failed_instant_field_value_falls_back_and_records_its_own_return_code():
    nvml = two_gpus()
    nvml.gpu(UUID_A).field_returns[pynvml.NVML_FI_DEV_POWER_INSTANT] = NVML_ERROR_TIMEOUT
    backend = opened(nvml)

    reading = backend.read_gpu(UUID_A)

    assert reading.power_w == pytest.approx(250.0)
    assert reading.errors == (("nvmlDeviceGetFieldValues", "Timeout"),)
    # A transient failure does not disable the field.
    nvml.gpu(UUID_A).field_returns.clear()
    assert backend.read_gpu(UUID_A).power_w == pytest.approx(261.5)


# -- per-process samples ----------------------------------------------------------


def test_no_process_samples_is_empty_not_an_error():
    nvml = two_gpus()
    nvml.gpu(UUID_A).samples.clear()  # the library answers NotFound
    reading = opened(nvml).read_gpu(UUID_A)
    assert reading.samples == ()
    assert reading.errors == ()


def test_one_sample_per_process_is_that_process_utilization_undivided():
    """nvml.h: one sample per busy process per query, CPU-stamped. Three
    processes at 60/20/10 % are 0.6/0.2/0.1, not divided by how many
    distinct timestamps arrived."""
    nvml = library(
        [
            FakeGpu(
                UUID_A,
                processes=[FakeProcess(1), FakeProcess(2), FakeProcess(3)],
                samples=[
                    FakeSample(1, NOW_US - 900_000, 60),
                    FakeSample(2, NOW_US - 600_000, 20),
                    FakeSample(3, NOW_US - 300_000, 10),
                ],
            )
        ]
    )
    reading = opened(nvml).read_gpu(UUID_A)
    assert [(s.pid, s.sm_util) for s in reading.samples] == [(1, 0.6), (2, 0.2), (3, 0.1)]


def test_samples_continue_from_the_newest_timestamp_seen():
    nvml = library(
        [
            FakeGpu(
                UUID_A,
                processes=[FakeProcess(4242), FakeProcess(4343)],
                samples=[FakeSample(4242, NOW_US - 2_000, 60), FakeSample(4343, NOW_US - 1_500, 30)],
            )
        ]
    )
    gpu = nvml.gpu(UUID_A)
    wall = FakeClock(NOW_S)
    backend = opened(nvml, wall=wall)

    first = backend.read_gpu(UUID_A)
    wall.now += 1.0
    gpu.samples.append(FakeSample(4242, NOW_US + 500_000, 90))
    second = backend.read_gpu(UUID_A)
    wall.now += 1.0
    third = backend.read_gpu(UUID_A)  # nothing newer: NotFound

    assert [s.timestamp_us for s in first.samples] == [NOW_US - 2_000, NOW_US - 1_500]
    assert second.samples == (ProcessSample(4242, NOW_US + 500_000, 0.9),)
    assert third.samples == ()
    assert nvml.last_seen_args[UUID_A] == [0, NOW_US - 1_500, NOW_US + 500_000]


def test_last_seen_timestamp_is_kept_per_gpu():
    nvml = two_gpus()
    nvml.gpu(UUID_B).processes = [FakeProcess(7)]
    nvml.gpu(UUID_B).samples = [FakeSample(7, NOW_US - 50, 10)]
    backend = opened(nvml)
    backend.read_gpu(UUID_A)
    backend.read_gpu(UUID_B)
    backend.read_gpu(UUID_B)
    assert nvml.last_seen_args[UUID_B] == [0, NOW_US - 50]


def test_garbage_utilization_and_pids_not_listed_are_dropped_not_clamped():
    """nvtop#110 (%SM 37100), DCGM#83 (2147483632): drop, as nvtop does; a PID
    that is not in the process list (an exited process, a slot) counts for nobody."""
    nvml = library(
        [
            FakeGpu(
                UUID_A,
                processes=[FakeProcess(1), FakeProcess(2)],
                samples=[
                    FakeSample(1, NOW_US - 10, 37100),
                    FakeSample(2, NOW_US - 20, 2147483632),
                    FakeSample(99, NOW_US - 30, 50),
                    FakeSample(0, NOW_US - 40, 0),
                    FakeSample(2, NOW_US - 50, 100),
                ],
            )
        ]
    )
    assert opened(nvml).read_gpu(UUID_A).samples == (ProcessSample(2, NOW_US - 50, 1.0),)


def test_a_sample_stamped_in_the_future_never_becomes_last_seen():
    """A bogus timestamp far ahead (nvtop#110) used to become last-seen, after
    which the GPU returned no samples until restart."""
    nvml = library(
        [
            FakeGpu(
                UUID_A,
                processes=[FakeProcess(1)],
                samples=[FakeSample(1, NOW_US + 3_600_000_000, 40), FakeSample(1, NOW_US - 100, 30)],
            )
        ]
    )
    wall = FakeClock(NOW_S)
    backend = opened(nvml, wall=wall)
    assert backend.read_gpu(UUID_A).samples == (ProcessSample(1, NOW_US - 100, 0.3),)

    wall.now += 1.0
    nvml.gpu(UUID_A).samples.append(FakeSample(1, NOW_US + 900_000, 70))
    assert backend.read_gpu(UUID_A).samples == (ProcessSample(1, NOW_US + 900_000, 0.7),)
    assert max(nvml.last_seen_args[UUID_A]) <= NOW_US + 1_000_000


def test_wall_clock_stepping_back_keeps_samples_coming():
    """NTP steps the CPU clock back an hour: new samples are stamped below the
    last-seen time; the query is re-based on the monotonic time elapsed."""
    nvml = library([FakeGpu(UUID_A, processes=[FakeProcess(1)], samples=[FakeSample(1, NOW_US - 100, 30)])])
    clock, wall = FakeClock(100.0), FakeClock(NOW_S)
    backend = opened(nvml, clock=clock, wall=wall)
    backend.read_gpu(UUID_A)

    clock.now += 1.0
    wall.now -= 3600.0 - 1.0
    stepped = int(wall.now * 1_000_000)
    nvml.gpu(UUID_A).samples = [FakeSample(1, stepped - 200_000, 55)]
    assert backend.read_gpu(UUID_A).samples == (ProcessSample(1, stepped - 200_000, 0.55),)
    assert nvml.last_seen_args[UUID_A][-1] == stepped - 1_000_000


def test_wall_clock_stepping_forward_loses_nothing_and_double_counts_nothing():
    nvml = library([FakeGpu(UUID_A, processes=[FakeProcess(1)], samples=[FakeSample(1, NOW_US - 100, 30)])])
    wall = FakeClock(NOW_S)
    backend = opened(nvml, wall=wall)
    backend.read_gpu(UUID_A)
    wall.now += 3600.0
    nvml.gpu(UUID_A).samples.append(FakeSample(1, int(wall.now * 1_000_000) - 10, 80))
    assert [s.sm_util for s in backend.read_gpu(UUID_A).samples] == [0.8]


def test_stale_samples_returned_by_the_driver_are_dropped():
    nvml = library(
        [
            FakeGpu(
                UUID_A,
                processes=[FakeProcess(1)],
                ignores_last_seen=True,
                samples=[FakeSample(1, NOW_US - 10, 5), FakeSample(0, NOW_US - 5, 0)],
            )
        ]
    )
    backend = opened(nvml)
    assert backend.read_gpu(UUID_A).samples == (ProcessSample(1, NOW_US - 10, 0.05),)  # pid 0 is an empty slot
    assert backend.read_gpu(UUID_A).samples == ()


def test_success_with_no_samples_quirk_is_empty():
    # The binding raises NVMLError(NVML_SUCCESS) when the size query succeeds.
    nvml = library([FakeGpu(UUID_A, no_samples_code=0)])
    reading = opened(nvml).read_gpu(UUID_A)
    assert reading.samples == () and reading.errors == ()


# -- lost GPUs --------------------------------------------------------------------------


def test_lost_gpu_fails_alone_and_comes_back_with_a_new_handle():
    nvml = two_gpus()
    backend = opened(nvml)
    backend.list_gpus()
    nvml.gpu(UUID_A).lost = True

    with pytest.raises(GpuReadError) as caught:
        backend.read_gpu(UUID_A)
    assert (caught.value.uuid, caught.value.call, caught.value.error) == (UUID_A, "nvmlDeviceGetName", "GpuIsLost")
    assert backend.read_gpu(UUID_B).energy_mj == 7_000

    nvml.gpu(UUID_A).lost = False
    assert backend.read_gpu(UUID_A).energy_mj == 5_000_000
    assert len(nvml.calls_to("nvmlDeviceGetHandleByUUID", UUID_A)) == 1  # re-acquired after the loss


@pytest.mark.parametrize(
    "code, name",
    [
        (NVML_ERROR_GPU_IS_LOST, "GpuIsLost"),
        (NVML_ERROR_UNKNOWN, "Unknown"),
        (NVML_ERROR_UNINITIALIZED, "Uninitialized"),
    ],
)
def test_lost_class_error_on_the_energy_counter_means_lost(code, name):
    nvml = two_gpus()
    nvml.gpu(UUID_A).errors["nvmlDeviceGetTotalEnergyConsumption"] = code
    with pytest.raises(GpuReadError) as caught:
        opened(nvml).read_gpu(UUID_A)
    assert (caught.value.call, caught.value.error) == ("nvmlDeviceGetTotalEnergyConsumption", name)


def test_unknown_error_on_a_secondary_field_is_only_recorded():
    nvml = two_gpus()
    nvml.gpu(UUID_A).errors["nvmlDeviceGetTemperatureV"] = NVML_ERROR_UNKNOWN
    reading = opened(nvml).read_gpu(UUID_A)
    assert reading.errors == (("nvmlDeviceGetTemperatureV", "Unknown"),)


def test_gpu_lost_midway_through_a_read_is_lost():
    nvml = two_gpus()
    nvml.gpu(UUID_A).errors["nvmlDeviceGetComputeRunningProcesses_v3"] = NVML_ERROR_GPU_IS_LOST
    with pytest.raises(GpuReadError) as caught:
        opened(nvml).read_gpu(UUID_A)
    assert caught.value.call == "nvmlDeviceGetComputeRunningProcesses"


def test_unknown_uuid_is_a_read_error_for_that_gpu():
    with pytest.raises(GpuReadError) as caught:
        opened(two_gpus()).read_gpu("GPU-missing")
    assert (caught.value.call, caught.value.error) == ("nvmlDeviceGetHandleByUUID", "NotFound")


class Gate(threading.Event):
    """A hang that says when a call has reached it."""

    def __init__(self) -> None:
        super().__init__()
        self.reached = threading.Event()

    def wait(self, timeout: float | None = None) -> bool:
        self.reached.set()
        return super().wait(timeout)


def test_hung_gpu_does_not_block_reads_of_other_gpus():
    nvml = two_gpus()
    backend = opened(nvml)
    backend.list_gpus()
    release = Gate()
    nvml.gpu(UUID_A).hang = release
    hung = threading.Thread(target=backend.read_gpu, args=(UUID_A,), daemon=True)
    hung.start()
    try:
        # Read B only once A is stuck inside NVML; otherwise the test proves nothing.
        assert release.reached.wait(timeout=5)
        assert backend.read_gpu(UUID_B).energy_mj == 7_000
        assert hung.is_alive()
    finally:
        release.set()
        hung.join(timeout=5)
    assert not hung.is_alive()


# -- open / close -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "code, expected",
    [
        (NVML_ERROR_LIBRARY_NOT_FOUND, "NVIDIA driver not loaded (libnvidia-ml.so.1 not found); run with --simulate"),
        (NVML_ERROR_DRIVER_NOT_LOADED, "NVIDIA driver not loaded (nvmlInit: DriverNotLoaded"),
        (NVML_ERROR_NO_PERMISSION, "no permission to use NVML"),
        (NVML_ERROR_LIB_RM_VERSION_MISMATCH, "versions differ"),
        (NVML_ERROR_UNKNOWN, "NVML initialisation failed (nvmlInit: Unknown Error)"),
    ],
)
def test_open_failure_is_backend_unavailable_with_a_one_line_reason(code, expected):
    library([], init_error=code)
    backend = NvmlBackend(nvml=pynvml)
    with pytest.raises(BackendUnavailable) as caught:
        backend.open()
    message = str(caught.value)
    assert expected in message
    assert "\n" not in message


def test_missing_pynvml_module_is_backend_unavailable(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` fail
    with pytest.raises(BackendUnavailable, match="pynvml not found.*--simulate"):
        NvmlBackend().open()


def test_close_shuts_nvml_down_and_open_reacquires_handles():
    nvml = two_gpus()
    backend = opened(nvml)
    backend.read_gpu(UUID_A)
    backend.close()
    assert nvml.initialized == 0

    backend.open()
    assert backend.read_gpu(UUID_A).energy_mj == 5_000_000
    assert len(nvml.calls_to("nvmlDeviceGetHandleByUUID", UUID_A)) == 2


def test_reading_before_open_is_a_programming_error():
    with pytest.raises(RuntimeError, match="before open"):
        two_gpus()
        NvmlBackend(nvml=pynvml).read_gpu(UUID_A)


def test_driver_version_failure_leaves_it_unknown():
    lib = library([FakeGpu(UUID_A)])
    lib.errors["nvmlSystemGetDriverVersion"] = NVML_ERROR_UNKNOWN
    assert opened(lib).read_gpu(UUID_A).driver_version is None


# -- MIG -------------------------------------------------------------------------------

MIG_1 = "MIG-11111111-2222-3333-4444-555555555555"
MIG_2 = "MIG-66666666-7777-8888-9999-000000000000"


def mig_board(**kwargs) -> FakeNvmlLibrary:
    return library(
        [
            FakeGpu(
                UUID_A,
                mig_enabled=True,
                migs=[
                    FakeMig(
                        MIG_1,
                        gpu_instance_id=1,
                        sm_count=42,
                        slice_count=3,
                        processes=[FakeProcess(10, used_memory_bytes=None)],
                        gpm_sm_util=80.0,
                    ),
                    FakeMig(
                        MIG_2,
                        gpu_instance_id=5,
                        sm_count=16,
                        slice_count=1,
                        processes=[FakeProcess(11)],
                        gpm_sm_util=20.0,
                    ),
                ],
                processes=[FakeProcess(10), FakeProcess(11)],
                samples=[FakeSample(10, NOW_US - 5, 50)],
                **kwargs,
            )
        ]
    )


def test_mig_processes_are_listed_per_instance_without_privileges():
    """The parent handle answers NoPermission to an unprivileged caller under
    MIG (k8s-device-plugin#399); each MIG device handle lists its own."""
    nvml = mig_board()
    reading = opened(nvml).read_gpu(UUID_A)

    assert reading.mig_mode is True
    assert reading.processes == (
        GpuProcess(pid=10, used_memory_bytes=None, gpu_instance_id=1, compute_instance_id=0),
        GpuProcess(pid=11, used_memory_bytes=GIB, gpu_instance_id=5, compute_instance_id=0),
    )
    assert [(i.uuid, i.gpu_instance_id, i.sm_count, i.slice_count) for i in reading.mig_instances] == [
        (MIG_1, 1, 42, 3),
        (MIG_2, 5, 16, 1),
    ]
    assert reading.mig_devices == (MIG_1, MIG_2)
    assert reading.samples == ()  # NotSupported under MIG
    assert reading.errors == ()
    assert nvml.calls_to("nvmlDeviceGetComputeRunningProcesses_v3", UUID_A) == []  # the parent is not asked


def test_gpm_sm_utilization_per_instance_spans_two_reads():
    nvml = mig_board(gpm_supported=True)
    backend = opened(nvml)
    first = backend.read_gpu(UUID_A)
    nvml.now_s += 1.0
    second = backend.read_gpu(UUID_A)

    assert [i.sm_util for i in first.mig_instances] == [None, None]  # one sample: no interval yet
    assert [i.sm_util for i in second.mig_instances] == [pytest.approx(0.8), pytest.approx(0.2)]
    assert len(nvml.gpm_samples) == 2  # the previous samples were freed
    backend.close()
    assert nvml.gpm_samples == {}


def test_gpm_samples_under_100ms_apart_give_no_figure():
    nvml = mig_board(gpm_supported=True)
    backend = opened(nvml)
    backend.read_gpu(UUID_A)
    nvml.now_s += 0.05
    assert [i.sm_util for i in backend.read_gpu(UUID_A).mig_instances] == [None, None]


def test_without_gpm_instances_have_no_sm_figure_and_gpm_is_asked_once():
    nvml = mig_board(gpm_supported=False)
    backend = opened(nvml)
    backend.read_gpu(UUID_A)
    assert [i.sm_util for i in backend.read_gpu(UUID_A).mig_instances] == [None, None]
    assert nvml.calls_to("nvmlGpmMigSampleGet") == []


def test_mig_board_lists_its_mig_devices_for_the_kubelet_join():
    from gpucarbon.identity.devices import GpuInventory, normalise_device_id

    reading = opened(mig_board()).read_gpu(UUID_A)
    inventory = GpuInventory({UUID_A: 0}, {m: UUID_A for m in reading.mig_devices})
    assert normalise_device_id(MIG_2, inventory) == UUID_A


def test_mig_disabled_board_lists_no_mig_devices():
    assert opened(library([FakeGpu(uuid=UUID_A)])).read_gpu(UUID_A).mig_devices == ()


# -- MPS ---------------------------------------------------------------------------------


def test_mps_clients_are_marked():
    nvml = library(
        [
            FakeGpu(
                UUID_A,
                processes=[FakeProcess(500), FakeProcess(501), FakeProcess(502)],
                mps_clients=[FakeProcess(501), FakeProcess(502)],
            )
        ]
    )
    reading = opened(nvml).read_gpu(UUID_A)
    assert [(p.pid, p.mps_client) for p in reading.processes] == [(500, False), (501, True), (502, True)]


def test_a_driver_without_the_mps_listing_still_reads():
    nvml = library(
        [FakeGpu(UUID_A, processes=[FakeProcess(500)])], missing=("nvmlDeviceGetMPSComputeRunningProcesses_v3",)
    )
    reading = opened(nvml).read_gpu(UUID_A)
    assert [p.pid for p in reading.processes] == [500] and reading.errors == ()


# -- odd hardware ------------------------------------------------------------------------


def test_grace_superchip_counter_is_module_scope():
    nvml = library([FakeGpu(UUID_A, name="NVIDIA GH200 480GB", module_power_mw=612_000)])
    reading = opened(nvml).read_gpu(UUID_A)
    assert reading.energy_scope == "module"
    assert reading.module_power_w == pytest.approx(612.0)
    assert reading.power_w == pytest.approx(310.0)  # the instant field stays GPU-only


def test_superchip_by_name_when_the_module_field_is_missing():
    nvml = library([FakeGpu(UUID_A, name="NVIDIA GB200")])
    reading = opened(nvml).read_gpu(UUID_A)
    assert reading.energy_scope == "module" and reading.module_power_w is None and reading.errors == ()


def test_temperature_uses_the_versioned_call_and_falls_back_on_old_drivers():
    nvml = two_gpus()
    assert opened(nvml).read_gpu(UUID_A).temperature_c == 51.0
    assert nvml.calls_to("nvmlDeviceGetTemperature") == []

    old = library([FakeGpu(UUID_A, temperature_c=44)], missing=("nvmlDeviceGetTemperatureV",))
    backend = opened(old)
    assert backend.read_gpu(UUID_A).temperature_c == 44.0
    assert backend.read_gpu(UUID_A).errors == ()
    assert len(old.calls_to("nvmlDeviceGetTemperature", UUID_A)) == 2


# -- driver faults ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "code, name",
    [(NVML_ERROR_DRIVER_NOT_LOADED, "DriverNotLoaded"), (NVML_ERROR_LIB_RM_VERSION_MISMATCH, "LibRmVersionMismatch")],
)
def test_library_errors_on_any_call_fail_the_read(code, name):
    """Recorded on the reading, these never reached the poller's reopen."""
    nvml = two_gpus()
    nvml.gpu(UUID_A).errors["nvmlDeviceGetMemoryInfo"] = code
    with pytest.raises(GpuReadError) as caught:
        opened(nvml).read_gpu(UUID_A)
    assert (caught.value.call, caught.value.error) == ("nvmlDeviceGetMemoryInfo", name)


def test_driver_unloaded_mid_run_then_reopened():
    nvml = two_gpus()
    backend = opened(nvml)
    backend.read_gpu(UUID_A)
    nvml.driver_loaded = False
    with pytest.raises(GpuReadError) as caught:
        backend.read_gpu(UUID_A)
    assert caught.value.error == "DriverNotLoaded"
    backend.close()
    with pytest.raises(BackendUnavailable, match="DriverNotLoaded"):
        backend.open()
    nvml.driver_loaded = True
    backend.open()
    assert backend.list_gpus() == (UUID_A, UUID_B)
    assert backend.read_gpu(UUID_A).energy_mj == 5_000_000


def test_listing_gpus_with_the_driver_gone_is_backend_unavailable():
    nvml = two_gpus()
    backend = opened(nvml)
    nvml.errors["nvmlDeviceGetHandleByIndex_v2"] = NVML_ERROR_DRIVER_NOT_LOADED
    with pytest.raises(BackendUnavailable, match="DriverNotLoaded"):
        backend.list_gpus()


def test_unknown_error_at_init_says_the_container_needs_recreating():
    library([], init_error=NVML_ERROR_UNKNOWN)
    with pytest.raises(BackendUnavailable, match="must be recreated"):
        NvmlBackend(nvml=pynvml).open()


def test_hung_nvml_init_blocks_only_the_caller():
    """go-nvml#152: nvmlInit can hang; the poller bounds it (test_poller)."""
    nvml = library([FakeGpu(UUID_A)])
    nvml.init_hang = threading.Event()
    backend = NvmlBackend(nvml=pynvml)
    opener = threading.Thread(target=backend.open, daemon=True)
    opener.start()
    opener.join(timeout=0.2)
    assert opener.is_alive()
    nvml.init_hang.set()
    opener.join(timeout=5)
    assert backend.list_gpus() == (UUID_A,)


# -- the fake is driven through the real bindings -----------------------------------------


def test_the_real_bindings_call_the_fake_library():
    nvml = two_gpus()
    opened(nvml).read_gpu(UUID_A)
    assert pynvml.nvmlLib is not None and pynvml.nvmlLib.__class__.__module__ == "fakes.libnvml"
    assert ("nvmlDeviceGetTotalEnergyConsumption", UUID_A) in nvml.calls


def test_a_symbol_the_library_lacks_is_function_not_found_in_the_bindings():
    library([FakeGpu(UUID_A)], missing=("nvmlDeviceGetMinorNumber",)).initialized = 1
    handle = pynvml.nvmlDeviceGetHandleByIndex(0)
    with pytest.raises(pynvml.NVMLError_FunctionNotFound):
        pynvml.nvmlDeviceGetMinorNumber(handle)
