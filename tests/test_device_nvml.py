"""NvmlBackend driven by the fake pynvml: units, unsupported fields, lost GPUs,
per-process samples, startup failures."""

from __future__ import annotations

import sys
import threading

import pytest
from fakes.fake_pynvml import (
    NO_MIG_INSTANCE,
    NVML_DEVICE_MIG_ENABLE,
    NVML_ERROR_DRIVER_NOT_LOADED,
    NVML_ERROR_GPU_IS_LOST,
    NVML_ERROR_LIB_RM_VERSION_MISMATCH,
    NVML_ERROR_LIBRARY_NOT_FOUND,
    NVML_ERROR_NO_PERMISSION,
    NVML_ERROR_NOT_SUPPORTED,
    NVML_ERROR_TIMEOUT,
    NVML_ERROR_UNINITIALIZED,
    NVML_ERROR_UNKNOWN,
    NVML_FI_DEV_POWER_INSTANT,
    FakeGpu,
    FakeNvml,
    FakeProcess,
    FakeSample,
)

from gpucarbon.device.model import BackendUnavailable, GpuProcess, GpuReadError, ProcessSample
from gpucarbon.device.nvml import NvmlBackend

UUID_A = "GPU-aaaaaaaa-0000-0000-0000-000000000000"
UUID_B = "GPU-bbbbbbbb-0000-0000-0000-000000000000"
GIB = 1 << 30


class FakeClock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def two_gpus() -> FakeNvml:
    return FakeNvml(
        [
            FakeGpu(
                UUID_A,
                energy_mj=5_000_000,
                power_mw=250_000,
                instant_power_mw=261_500,
                gpu_util_percent=75,
                memory_used_bytes=12 * GIB,
                temperature_c=51,
                processes=[FakeProcess(pid=4242, used_memory_bytes=3 * GIB)],
                samples=[FakeSample(pid=4242, timestamp_us=1_000, sm_util=60)],
            ),
            FakeGpu(UUID_B, name="NVIDIA A100-SXM4-40GB", energy_mj=7_000, power_limit_mw=400_000),
        ]
    )


def opened(nvml: FakeNvml, clock: FakeClock | None = None) -> NvmlBackend:
    backend = NvmlBackend(nvml=nvml, clock=clock or FakeClock())
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
    assert reading.samples == (ProcessSample(pid=4242, timestamp_us=1_000, sm_util=0.6),)
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
    assert nvml.calls_to("nvmlDeviceGetHandleByIndex") == []


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
        "nvmlDeviceGetTemperature",
        "nvmlDeviceGetMigMode",
        "nvmlDeviceGetComputeRunningProcesses",
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
    nvml.gpu(UUID_A).errors["nvmlDeviceGetTemperature"] = NVML_ERROR_TIMEOUT
    nvml.gpu(UUID_A).errors["nvmlDeviceGetComputeRunningProcesses"] = NVML_ERROR_NO_PERMISSION

    reading = opened(nvml).read_gpu(UUID_A)

    assert reading.temperature_c is None
    assert reading.processes == ()
    assert reading.energy_mj == 5_000_000
    assert set(reading.errors) == {
        ("nvmlDeviceGetTemperature", "Timeout"),
        ("nvmlDeviceGetComputeRunningProcesses", "NoPermission"),
    }


# -- power ----------------------------------------------------------------------


def test_instant_power_field_is_preferred_over_power_usage():
    nvml = two_gpus()
    reading = opened(nvml).read_gpu(UUID_A)
    assert reading.power_w == pytest.approx(261.5)
    assert nvml.calls_to("nvmlDeviceGetFieldValues", UUID_A) == [([NVML_FI_DEV_POWER_INSTANT],)]
    assert nvml.calls_to("nvmlDeviceGetPowerUsage", UUID_A) == []


def test_unsupported_instant_field_falls_back_to_power_usage_and_is_not_asked_again():
    nvml = two_gpus()
    nvml.gpu(UUID_A).field_returns[NVML_FI_DEV_POWER_INSTANT] = NVML_ERROR_NOT_SUPPORTED
    backend = opened(nvml)

    assert backend.read_gpu(UUID_A).power_w == pytest.approx(250.0)
    second = backend.read_gpu(UUID_A)

    assert second.power_w == pytest.approx(250.0)
    assert second.errors == ()
    assert len(nvml.calls_to("nvmlDeviceGetFieldValues", UUID_A)) == 1


def test_failed_instant_field_value_falls_back_and_records_its_own_return_code():
    nvml = two_gpus()
    nvml.gpu(UUID_A).field_returns[NVML_FI_DEV_POWER_INSTANT] = NVML_ERROR_TIMEOUT
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
    nvml.gpu(UUID_A).samples.clear()  # the fake raises NVMLError_NotFound
    reading = opened(nvml).read_gpu(UUID_A)
    assert reading.samples == ()
    assert reading.errors == ()


def test_samples_continue_from_the_newest_timestamp_seen():
    nvml = two_gpus()
    gpu = nvml.gpu(UUID_A)
    gpu.samples = [FakeSample(4242, 1_000, 60), FakeSample(4343, 1_500, 30)]
    backend = opened(nvml)

    first = backend.read_gpu(UUID_A)
    gpu.samples.append(FakeSample(4242, 2_000, 90))
    second = backend.read_gpu(UUID_A)
    third = backend.read_gpu(UUID_A)  # nothing newer: NotFound

    assert [s.timestamp_us for s in first.samples] == [1_000, 1_500]
    assert second.samples == (ProcessSample(4242, 2_000, 0.9),)
    assert third.samples == ()
    assert [args[0] for args in nvml.calls_to("nvmlDeviceGetProcessUtilization", UUID_A)] == [0, 1_500, 2_000]


def test_last_seen_timestamp_is_kept_per_gpu():
    nvml = two_gpus()
    nvml.gpu(UUID_B).samples = [FakeSample(7, 50, 10)]
    backend = opened(nvml)
    backend.read_gpu(UUID_A)
    backend.read_gpu(UUID_B)
    backend.read_gpu(UUID_B)
    assert [a[0] for a in nvml.calls_to("nvmlDeviceGetProcessUtilization", UUID_B)] == [0, 50]


def test_stale_samples_returned_by_the_driver_are_dropped():
    class ReplayingNvml(FakeNvml):
        # Some drivers hand back the whole buffer whatever the timestamp says.
        def nvmlDeviceGetProcessUtilization(self, handle, timeStamp):
            return super().nvmlDeviceGetProcessUtilization(handle, 0)

    nvml = ReplayingNvml([FakeGpu(UUID_A, samples=[FakeSample(1, 10, 5), FakeSample(0, 20, 0)])])
    backend = opened(nvml)
    assert backend.read_gpu(UUID_A).samples == (ProcessSample(1, 10, 0.05),)  # pid 0 is an empty slot
    assert backend.read_gpu(UUID_A).samples == ()


def test_success_with_no_samples_quirk_is_empty():
    class EmptySuccessNvml(FakeNvml):
        # pynvml raises NVMLError(NVML_SUCCESS) when the size query finds nothing.
        def nvmlDeviceGetProcessUtilization(self, handle, timeStamp):
            raise self.NVMLError(0)

    reading = opened(EmptySuccessNvml([FakeGpu(UUID_A)])).read_gpu(UUID_A)
    assert reading.samples == () and reading.errors == ()


# -- MIG ----------------------------------------------------------------------------


def test_mig_process_instance_ids_are_mapped_and_sampling_is_skipped():
    nvml = FakeNvml(
        [
            FakeGpu(
                UUID_A,
                mig_current=NVML_DEVICE_MIG_ENABLE,
                processes=[
                    FakeProcess(pid=10, used_memory_bytes=None, gpu_instance_id=1, compute_instance_id=0),
                    FakeProcess(pid=11, gpu_instance_id=2, compute_instance_id=0),
                    FakeProcess(pid=12, gpu_instance_id=NO_MIG_INSTANCE, compute_instance_id=NO_MIG_INSTANCE),
                ],
                samples=[FakeSample(10, 100, 50)],  # NVML refuses these under MIG
            )
        ]
    )
    reading = opened(nvml).read_gpu(UUID_A)

    assert reading.mig_mode is True
    assert reading.processes == (
        GpuProcess(pid=10, used_memory_bytes=None, gpu_instance_id=1, compute_instance_id=0),
        GpuProcess(pid=11, used_memory_bytes=GIB, gpu_instance_id=2, compute_instance_id=0),
        GpuProcess(pid=12, used_memory_bytes=GIB, gpu_instance_id=None, compute_instance_id=None),
    )
    assert reading.samples == ()
    assert reading.errors == ()


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
    nvml.gpu(UUID_A).errors["nvmlDeviceGetTemperature"] = NVML_ERROR_UNKNOWN
    reading = opened(nvml).read_gpu(UUID_A)
    assert reading.errors == (("nvmlDeviceGetTemperature", "Unknown"),)


def test_gpu_lost_midway_through_a_read_is_lost():
    nvml = two_gpus()
    nvml.gpu(UUID_A).errors["nvmlDeviceGetComputeRunningProcesses"] = NVML_ERROR_GPU_IS_LOST
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
        (NVML_ERROR_UNKNOWN, "NVML initialisation failed (nvmlInit: Unknown)"),
    ],
)
def test_open_failure_is_backend_unavailable_with_a_one_line_reason(code, expected):
    backend = NvmlBackend(nvml=FakeNvml([], init_error=code))
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
        NvmlBackend(nvml=two_gpus()).read_gpu(UUID_A)


def test_driver_version_failure_leaves_it_unknown():
    class NoVersionNvml(FakeNvml):
        def nvmlSystemGetDriverVersion(self):
            raise self.NVMLError(NVML_ERROR_UNKNOWN)

    assert opened(NoVersionNvml([FakeGpu(UUID_A)])).read_gpu(UUID_A).driver_version is None


# -- the fake stays true to the real bindings -------------------------------------------


def test_fake_matches_the_installed_pynvml_names_constants_and_signatures():
    import inspect

    import pynvml
    from fakes import fake_pynvml

    fake = FakeNvml([])
    functions = [n for n in dir(FakeNvml) if n.startswith("nvml")]
    constants = [n for n in dir(fake_pynvml) if n.startswith("NVML_")]
    errors = [n for n in dir(fake_pynvml) if n.startswith("NVMLError")]
    assert len(functions) >= 18 and len(constants) >= 30 and "NVMLError_GpuIsLost" in errors

    mismatched = []
    for name in functions:
        real = inspect.signature(getattr(pynvml, name))
        ours = inspect.signature(getattr(fake, name))
        if list(real.parameters) != list(ours.parameters):
            mismatched.append((name, str(real), str(ours)))
    for name in constants:
        if getattr(pynvml, name) != getattr(fake_pynvml, name):
            mismatched.append((name, getattr(pynvml, name), getattr(fake_pynvml, name)))
    for name in errors:
        if not hasattr(pynvml, name):
            mismatched.append((name, "missing in pynvml", ""))
        elif name.startswith("NVMLError_") and getattr(pynvml, name)().value != getattr(fake, name)().value:
            mismatched.append((name, getattr(pynvml, name)().value, getattr(fake, name)().value))
    assert mismatched == []


def test_fake_errors_map_codes_to_subclasses_like_pynvml():
    fake = FakeNvml([])
    lost = fake.NVMLError(NVML_ERROR_GPU_IS_LOST)
    assert type(lost) is fake.NVMLError_GpuIsLost
    assert isinstance(lost, fake.NVMLError) and lost.value == NVML_ERROR_GPU_IS_LOST
    assert fake.NVMLError_NotFound().value == 6


def test_mig_board_lists_its_mig_devices_for_the_kubelet_join():
    from gpucarbon.identity.devices import GpuInventory, normalise_device_id

    mig_a, mig_b = "MIG-11111111-2222-3333-4444-555555555555", "MIG-66666666-7777-8888-9999-000000000000"
    gpu = FakeGpu(uuid=UUID_A, mig_current=NVML_DEVICE_MIG_ENABLE, mig_devices=[mig_a, mig_b])
    backend = NvmlBackend(nvml=FakeNvml([gpu]))
    backend.open()
    reading = backend.read_gpu(UUID_A)
    assert reading.mig_mode is True and reading.mig_devices == (mig_a, mig_b)
    assert reading.errors == ()
    inventory = GpuInventory({UUID_A: 0}, {m: UUID_A for m in reading.mig_devices})
    assert normalise_device_id(mig_b, inventory) == UUID_A


def test_mig_disabled_board_lists_no_mig_devices():
    backend = NvmlBackend(nvml=FakeNvml([FakeGpu(uuid=UUID_A)]))
    backend.open()
    assert backend.read_gpu(UUID_A).mig_devices == ()
