"""NVML backend: the only module that touches `pynvml` (PyPI `nvidia-ml-py`).

It turns NVML's C-shaped answers (mW, percent, sentinel ids, ctypes structs,
exception classes per return code) into the SI dataclasses of
`gpucarbon.device.model`, so nothing above this file sees a vendor type.

Every method blocks (ctypes calls into libnvidia-ml, which releases the GIL);
the poller runs `read_gpu` in worker threads with a timeout per GPU. No lock is
held across an NVML call, so one hung GPU cannot stall reads of the others.

GPUs are keyed by UUID: index order is not stable across reboots. Handles are
cached and dropped when a GPU is lost, so a GPU that comes back is re-acquired.
The module is only ever read from: nothing here changes a GPU setting.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from gpucarbon.device.model import (
    BackendUnavailable,
    GpuProcess,
    GpuReadError,
    GpuReading,
    MigInstance,
    ProcessSample,
)

log = logging.getLogger(__name__)

SIMULATE_HINT = "run with --simulate to try the exporter without a GPU"

# NVML_FI_DEV_POWER_INSTANT: instantaneous board power in mW. Older bindings lack
# the constant; the id is part of the NVML ABI, so fall back to the number.
POWER_INSTANT_FIELD_ID = 186
# gpuInstanceId / computeInstanceId when the process is not in a MIG instance.
NO_MIG_INSTANCE = 0xFFFFFFFF
# nvmlDeviceGetMigMode -> [current, pending]; 1 is NVML_DEVICE_MIG_ENABLE.
MIG_ENABLED = 1
# c_nvmlFieldValue_t.valueType -> the member of the c_nvmlValue_t union to read.
_VALUE_MEMBER_BY_TYPE = {
    0: "dVal",  # NVML_VALUE_TYPE_DOUBLE
    1: "uiVal",  # NVML_VALUE_TYPE_UNSIGNED_INT
    2: "ulVal",  # NVML_VALUE_TYPE_UNSIGNED_LONG
    3: "ullVal",  # NVML_VALUE_TYPE_UNSIGNED_LONG_LONG
    4: "sllVal",  # NVML_VALUE_TYPE_SIGNED_LONG_LONG
    5: "siVal",  # NVML_VALUE_TYPE_SIGNED_INT
    6: "usVal",  # NVML_VALUE_TYPE_UNSIGNED_SHORT
}
_NVML_SUCCESS = 0
_NVML_ERROR_INVALID_ARGUMENT = 2
_NVML_ERROR_NOT_SUPPORTED = 3

# Errors that mean the device is gone; on any call for GpuIsLost, and on the core
# calls (name, energy) also Unknown/Uninitialized, which drivers return for a
# GPU that fell off the bus or a driver that was unloaded under us.
_LOST_ANYWHERE = frozenset({"GpuIsLost"})
_LOST_ON_CORE_CALL = frozenset({"GpuIsLost", "Unknown", "Uninitialized"})
# Errors that say the library, not one GPU, is gone: the driver was unloaded or
# upgraded under us. Whatever call hits one, the read fails with it, so the
# poller closes NVML and opens it again (docs/reliability.md).
LIBRARY_GONE = frozenset({"DriverNotLoaded", "LibRmVersionMismatch", "Uninitialized", "LibraryNotFound"})
# NVML_POWER_SCOPE_MODULE: the field read for the whole Grace superchip module.
POWER_SCOPE_MODULE = 1
# Names of Grace superchips, whose energy counter covers the whole module (CPU,
# GPU and memory; zeus#172) even where the module-scope power field is absent.
_SUPERCHIP_NAME = re.compile(r"\bG[BH]\d{3}\b")
# A sample's timestamp may lead our clock by this much (clock read skew) before
# it counts as garbage; one beyond it never becomes the last-seen time.
SAMPLE_CLOCK_SLACK_US = 1_000_000
# NVML_GPM_METRIC_SM_UTIL and the struct version nvml.h defines for it.
GPM_METRIC_SM_UTIL = 2
GPM_METRICS_GET_VERSION = 1


def nvml_error_name(exc: BaseException) -> str:
    """'NVMLError_GpuIsLost' -> 'GpuIsLost'; an unmapped return code -> 'Code<n>'."""
    name = type(exc).__name__
    if name.startswith("NVMLError_"):
        return name.removeprefix("NVMLError_")
    return f"Code{getattr(exc, 'value', '?')}"


class _GpuLost(Exception):
    def __init__(self, call: str, error: str) -> None:
        super().__init__(f"{call}: {error}")
        self.call = call
        self.error = error


@dataclass(slots=True)
class _Device:
    """What is cached per GPU between reads (mutable, private)."""

    handle: Any
    # Cleared once the instant-power field answers NotSupported, so older GPUs
    # do not pay a failing call on every read.
    instant_power_supported: bool = True
    minor_number: int | None = None
    module_scope: bool | None = None  # None: not probed yet
    gpm_supported: bool | None = None  # None: not asked yet
    # Previous GPM sample per GPU instance id; the metric spans two samples.
    gpm_samples: dict[int, Any] = field(default_factory=dict)


class NvmlBackend:
    """`GpuBackend` over NVML. `nvml` is the pynvml module (a fake in tests)."""

    def __init__(
        self,
        nvml: ModuleType | Any | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._nvml: Any = nvml  # the pynvml module, or a stand-in with its names
        self._clock = clock
        self._wall = wall  # NVML stamps per-process samples with the CPU wall clock
        self._lock = threading.Lock()  # guards the dicts, never an NVML call
        self._devices: dict[str, _Device] = {}
        # Per GPU: the lastSeenTimeStamp for the next per-process query (CPU
        # clock, us) and (monotonic s, wall us) of the previous query, which
        # re-bases it when the wall clock steps. Outlives a lost handle.
        self._last_sample_us: dict[str, int] = {}
        self._last_query: dict[str, tuple[float, int]] = {}
        self._temperature_v = True  # nvmlDeviceGetTemperatureV until the library lacks it
        self._driver_version: str | None = None
        self._is_open = False

    # -- lifecycle ---------------------------------------------------------

    def open(self) -> None:
        if self._is_open:
            return
        nvml = self._nvml if self._nvml is not None else _import_pynvml()
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as exc:
            raise BackendUnavailable(_init_failure_reason(exc)) from exc
        self._nvml = nvml
        self._is_open = True
        try:
            self._driver_version = _as_str(nvml.nvmlSystemGetDriverVersion())
        except nvml.NVMLError as exc:
            log.warning("NVML driver version unavailable: %s", nvml_error_name(exc))
            self._driver_version = None

    def close(self) -> None:
        if not self._is_open:
            return
        nvml = self._nvml
        with self._lock:
            devices = list(self._devices.values())
            self._devices.clear()
        for device in devices:
            self._free_gpm(device)
        self._is_open = False
        try:
            nvml.nvmlShutdown()
        except nvml.NVMLError as exc:
            # Shutting down is best effort: the library may already be gone.
            log.warning("nvmlShutdown failed: %s", nvml_error_name(exc))

    # -- discovery ---------------------------------------------------------

    def list_gpus(self) -> tuple[str, ...]:
        nvml = self._open_nvml()
        try:
            count = nvml.nvmlDeviceGetCount()
        except nvml.NVMLError as exc:
            raise BackendUnavailable(f"NVML cannot count GPUs (nvmlDeviceGetCount: {nvml_error_name(exc)})") from exc
        uuids: list[str] = []
        for index in range(count):
            try:
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                uuid = _as_str(nvml.nvmlDeviceGetUUID(handle))
            except nvml.NVMLError as exc:
                if nvml_error_name(exc) in LIBRARY_GONE:
                    raise BackendUnavailable(
                        f"NVML lost while listing GPUs (nvmlDeviceGetHandleByIndex: {nvml_error_name(exc)})"
                    ) from exc
                # One bad GPU must not hide the others; the poller re-lists later.
                log.warning("GPU at index %d skipped: %s", index, nvml_error_name(exc))
                continue
            with self._lock:
                self._devices.setdefault(uuid, _Device(handle))
            uuids.append(uuid)
        return tuple(uuids)

    # -- reading -----------------------------------------------------------

    def read_gpu(self, uuid: str) -> GpuReading:
        device = self._device(uuid)
        try:
            return self._read(uuid, device)
        except _GpuLost as lost:
            self._forget(uuid)
            raise GpuReadError(uuid, lost.call, lost.error) from None

    def _read(self, uuid: str, device: _Device) -> GpuReading:
        nvml = self._nvml
        handle = device.handle
        errors: list[tuple[str, str]] = []
        call = _FieldCaller(nvml, errors)
        # Core calls first: if the GPU is gone, they say so before we collect
        # a reading full of errors.
        name = call.core("nvmlDeviceGetName", handle)
        energy_mj = call.core("nvmlDeviceGetTotalEnergyConsumption", handle)
        timestamp_s = self._clock()  # next to the energy read the poller diffs
        name = _as_str(name) if name is not None else ""
        index = call("nvmlDeviceGetIndex", handle)
        if device.minor_number is None:
            minor = call("nvmlDeviceGetMinorNumber", handle)
            device.minor_number = int(minor) if minor is not None else None
        utilization = call("nvmlDeviceGetUtilizationRates", handle)
        memory = call("nvmlDeviceGetMemoryInfo", handle)
        limit_mw = call("nvmlDeviceGetEnforcedPowerLimit", handle)
        mig = call("nvmlDeviceGetMigMode", handle)
        mig_mode = mig[0] == MIG_ENABLED if mig is not None else None
        instances = self._mig_instances(device, call) if mig_mode else ()
        processes = tuple(p for i in instances for p in i.processes) if mig_mode else self._processes(handle, call)
        module_scope = self._module_scope(device, name, call)
        return GpuReading(
            uuid=uuid,
            index=int(index) if index is not None else -1,
            name=name,
            timestamp_s=timestamp_s,
            driver_version=self._driver_version,
            mig_mode=mig_mode,
            energy_mj=int(energy_mj) if energy_mj is not None else None,
            power_w=self._power_w(device, call),
            power_limit_w=_mw_to_w(limit_mw),
            utilization=_percent(utilization.gpu) if utilization is not None else None,
            memory_used_bytes=int(memory.used) if memory is not None else None,
            memory_total_bytes=int(memory.total) if memory is not None else None,
            temperature_c=self._temperature(handle, call),
            processes=processes,
            # Under MIG NVML has no per-process utilization (NotSupported).
            samples=() if mig_mode else self._samples(uuid, handle, call, processes),
            mig_devices=tuple(i.uuid for i in instances),
            mig_instances=instances,
            minor_number=device.minor_number,
            energy_scope="module" if module_scope else "gpu",
            module_power_w=self._module_power_w(device, call) if module_scope else None,
            errors=tuple(errors),
        )

    def _temperature(self, handle: Any, call: _FieldCaller) -> float | None:
        """Core temperature in degrees C: nvmlDeviceGetTemperatureV where the
        library has it (nvmlDeviceGetTemperature is deprecated in NVML 13),
        else the old call."""
        nvml = self._nvml
        sensor = getattr(nvml, "NVML_TEMPERATURE_GPU", 0)
        if self._temperature_v and hasattr(nvml, "nvmlDeviceGetTemperatureV"):
            value = call.raw("nvmlDeviceGetTemperatureV", handle, sensor)
            if value is not _FUNCTION_MISSING:
                return float(value) if value not in (None, _UNSUPPORTED) else None
            self._temperature_v = False  # an older driver: ask the old way from now on
        value = call("nvmlDeviceGetTemperature", handle, sensor)
        return float(value) if value is not None else None

    def _module_scope(self, device: _Device, name: str, call: _FieldCaller) -> bool:
        """Whether the energy counter covers a whole Grace superchip module:
        probed once, by the module-scope power field or the product name."""
        if device.module_scope is None:
            probe = self._module_power_mw(device, call, probing=True)
            device.module_scope = probe is not None or bool(_SUPERCHIP_NAME.search(name))
        return device.module_scope

    def _module_power_w(self, device: _Device, call: _FieldCaller) -> float | None:
        power_mw = self._module_power_mw(device, call, probing=False)
        return power_mw / 1000.0 if power_mw is not None else None

    def _module_power_mw(self, device: _Device, call: _FieldCaller, *, probing: bool) -> float | None:
        field_id = getattr(self._nvml, "NVML_FI_DEV_POWER_INSTANT", POWER_INSTANT_FIELD_ID)
        values = call.raw("nvmlDeviceGetFieldValues", device.handle, [(field_id, POWER_SCOPE_MODULE)])
        if values in (None, _UNSUPPORTED, _FUNCTION_MISSING):
            return None
        return _field_number(self._nvml, values[0], call, record=not probing)

    def _mig_instances(self, device: _Device, call: _FieldCaller) -> tuple[MigInstance, ...]:
        """The MIG devices on a board, each with its own process list.

        The parent handle refuses process lists to an unprivileged caller under
        MIG (NoPermission: k8s-device-plugin#399, gpu-operator#322), while each
        MIG device handle answers for its instance, so the daemon needs no
        CAP_SYS_ADMIN. Empty slots answer NotFound."""
        nvml: Any = self._nvml
        slots = call("nvmlDeviceGetMaxMigDeviceCount", device.handle) or 0
        found: list[tuple[Any, str, int, Any]] = []
        for slot in range(int(slots)):
            try:
                mig_handle = nvml.nvmlDeviceGetMigDeviceHandleByIndex(device.handle, slot)
                mig_uuid = _as_str(nvml.nvmlDeviceGetUUID(mig_handle))
                gi_id = int(nvml.nvmlDeviceGetGpuInstanceId(mig_handle))
            except nvml.NVMLError as exc:
                error = nvml_error_name(exc)
                if error in LIBRARY_GONE or error in _LOST_ANYWHERE:
                    raise _GpuLost("nvmlDeviceGetMigDeviceHandleByIndex", error) from None
                if error != "NotFound":
                    call.record("nvmlDeviceGetMigDeviceHandleByIndex", error)
                continue
            attributes = call("nvmlDeviceGetAttributes_v2", mig_handle)
            found.append((mig_handle, mig_uuid, gi_id, attributes))
        sm_util = self._gpm_sm_util(device, [gi for _, _, gi, _ in found], call)
        return tuple(
            MigInstance(
                uuid=mig_uuid,
                gpu_instance_id=gi_id,
                sm_count=int(attributes.multiprocessorCount) if attributes is not None else None,
                slice_count=int(attributes.gpuInstanceSliceCount) if attributes is not None else None,
                sm_util=sm_util.get(gi_id),
                processes=tuple(
                    GpuProcess(p.pid, p.used_memory_bytes, gi_id, p.compute_instance_id, p.mps_client)
                    for p in self._processes(mig_handle, call)
                ),
            )
            for mig_handle, mig_uuid, gi_id, attributes in found
        )

    def _gpm_sm_util(self, device: _Device, instance_ids: list[int], call: _FieldCaller) -> dict[int, float]:
        """GPM SM utilization (0..1) per GPU instance since the previous read
        (Hopper and newer). A metric spans two samples at least 100 ms apart:
        the previous read's sample and this one's; the first read has none."""
        if device.gpm_supported is None:
            support = call.raw("nvmlGpmQueryDeviceSupport", device.handle)
            device.gpm_supported = (
                bool(getattr(support, "isSupportedDevice", 0))
                if support not in (None, _UNSUPPORTED, _FUNCTION_MISSING)
                else False
            )
        if not device.gpm_supported:
            return {}
        result: dict[int, float] = {}
        for gi_id in instance_ids:
            sample = call("nvmlGpmSampleAlloc")
            if sample is None:
                continue
            if call("nvmlGpmMigSampleGet", device.handle, gi_id, sample) is None:
                call("nvmlGpmSampleFree", sample)
                continue
            previous = device.gpm_samples.pop(gi_id, None)
            device.gpm_samples[gi_id] = sample
            if previous is None:
                continue
            value = self._gpm_metric(previous, sample, call)
            call("nvmlGpmSampleFree", previous)
            if value is not None:
                result[gi_id] = value
        return result

    def _gpm_metric(self, first: Any, second: Any, call: _FieldCaller) -> float | None:
        nvml: Any = self._nvml
        request = nvml.c_nvmlGpmMetricsGet_t()
        request.version = getattr(nvml, "NVML_GPM_METRICS_GET_VERSION", GPM_METRICS_GET_VERSION)
        request.numMetrics = 1
        request.sample1, request.sample2 = first, second
        request.metrics[0].metricId = getattr(nvml, "NVML_GPM_METRIC_SM_UTIL", GPM_METRIC_SM_UTIL)
        if call("nvmlGpmMetricsGet", request) is None:
            return None
        metric = request.metrics[0]
        if metric.nvmlReturn != _NVML_SUCCESS:  # e.g. samples under 100 ms apart
            return None
        value = float(metric.value)
        return value / 100.0 if 0.0 <= value <= 100.0 else None

    def _free_gpm(self, device: _Device) -> None:
        nvml: Any = self._nvml
        for sample in device.gpm_samples.values():
            try:
                nvml.nvmlGpmSampleFree(sample)
            except nvml.NVMLError as exc:  # best effort: the library may be gone
                log.debug("nvmlGpmSampleFree: %s", nvml_error_name(exc))
        device.gpm_samples.clear()

    def _power_w(self, device: _Device, call: _FieldCaller) -> float | None:
        """Board power in W: the instantaneous field when the GPU has it (on
        Ampere and newer nvmlDeviceGetPowerUsage is a 1 s average), else that."""
        if device.instant_power_supported:
            power_mw = self._instant_power_mw(device, call)
            if power_mw is not None:
                return power_mw / 1000.0
        return _mw_to_w(call("nvmlDeviceGetPowerUsage", device.handle))

    def _instant_power_mw(self, device: _Device, call: _FieldCaller) -> float | None:
        nvml = self._nvml
        field_id = getattr(nvml, "NVML_FI_DEV_POWER_INSTANT", POWER_INSTANT_FIELD_ID)
        values = call.raw("nvmlDeviceGetFieldValues", device.handle, [field_id])
        if values is _UNSUPPORTED:
            device.instant_power_supported = False
            return None
        if values is None:
            return None
        number = _field_number(nvml, values[0], call, record=True)
        if number is None and values[0].nvmlReturn in (_NVML_ERROR_NOT_SUPPORTED, _NVML_ERROR_INVALID_ARGUMENT):
            device.instant_power_supported = False
        return number

    def _processes(self, handle: Any, call: _FieldCaller) -> tuple[GpuProcess, ...]:
        """Compute processes, with the clients of a CUDA MPS server marked
        (nvmlDeviceGetMPSComputeRunningProcesses lists them)."""
        nvml = self._nvml
        mismatch = getattr(nvml, "NVMLLibraryMismatchError", ())
        try:
            listing = call("nvmlDeviceGetComputeRunningProcesses", handle)
        except mismatch:
            # Bindings newer than the driver: the unversioned name maps to a
            # _v3 symbol the library lacks; _v2 has the same fields.
            listing = call("nvmlDeviceGetComputeRunningProcesses_v2", handle)
        processes = {int(p.pid): _process(p) for p in listing or ()}
        mps: Any = None
        if hasattr(nvml, "nvmlDeviceGetMPSComputeRunningProcesses"):
            try:
                mps = call.raw("nvmlDeviceGetMPSComputeRunningProcesses", handle)
            except mismatch:
                mps = None  # a driver without the MPS listing: no client is marked
        if isinstance(mps, list):
            for info in mps:
                client = _process(info)
                processes[client.pid] = GpuProcess(
                    client.pid,
                    client.used_memory_bytes,
                    client.gpu_instance_id,
                    client.compute_instance_id,
                    mps_client=True,
                )
        return tuple(processes.values())

    def _samples(
        self, uuid: str, handle: Any, call: _FieldCaller, processes: tuple[GpuProcess, ...]
    ) -> tuple[ProcessSample, ...]:
        """Per-process SM utilization since the previous read.

        NVML returns one sample per process that was busy, stamped with the CPU
        clock in microseconds, for samples newer than the timestamp passed
        (nvml.h; go-nvml#51). Garbage is real (smUtil 37100 with a bogus
        timestamp: nvtop#110; 2147483632: DCGM#83), so a sample counts only for
        a listed PID, at most 100 %, not stamped in the future. The timestamp
        passed next time is the newest accepted one, never later than now, and
        is re-based on the monotonic clock when the wall clock stepped back."""
        now_us = int(self._wall() * 1_000_000)
        since_us = self._since_us(uuid, now_us)
        raw = call.samples("nvmlDeviceGetProcessUtilization", handle, since_us)
        listed = {p.pid for p in processes}
        newest: dict[int, ProcessSample] = {}
        for s in raw:
            pid, stamp, util = int(s.pid), int(s.timeStamp), int(s.smUtil)
            if pid not in listed or util > 100 or not since_us < stamp <= now_us + SAMPLE_CLOCK_SLACK_US:
                continue
            if pid not in newest or stamp > newest[pid].timestamp_us:
                newest[pid] = ProcessSample(pid=pid, timestamp_us=stamp, sm_util=_percent(util))
        accepted = max((s.timestamp_us for s in newest.values()), default=since_us)
        with self._lock:
            self._last_sample_us[uuid] = min(max(accepted, since_us), now_us)
            self._last_query[uuid] = (self._clock(), now_us)
        return tuple(sorted(newest.values(), key=lambda s: s.pid))

    def _since_us(self, uuid: str, now_us: int) -> int:
        """lastSeenTimeStamp for this query: the newest sample accepted last
        time; 0 (the whole buffer) on the first. After the wall clock stepped
        back (it is behind that time), the previous query's moment as seen on
        the stepped clock, from the monotonic time elapsed since."""
        with self._lock:
            last = self._last_sample_us.get(uuid)
            previous = self._last_query.get(uuid)
        if last is None or previous is None:
            return 0
        if last <= now_us:
            return last
        elapsed_us = int(max(0.0, self._clock() - previous[0]) * 1_000_000)
        return max(0, now_us - elapsed_us)

    # -- handles -----------------------------------------------------------

    def _open_nvml(self) -> Any:
        if not self._is_open:
            raise RuntimeError("NvmlBackend used before open()")
        return self._nvml

    def _device(self, uuid: str) -> _Device:
        nvml = self._open_nvml()
        with self._lock:
            device = self._devices.get(uuid)
        if device is not None:
            return device
        # Acquired outside the lock: the first lookup can take seconds without
        # persistence mode, and must not hold up reads of other GPUs.
        try:
            handle = nvml.nvmlDeviceGetHandleByUUID(uuid)
        except nvml.NVMLError as exc:
            raise GpuReadError(uuid, "nvmlDeviceGetHandleByUUID", nvml_error_name(exc)) from None
        with self._lock:
            return self._devices.setdefault(uuid, _Device(handle))

    def _forget(self, uuid: str) -> None:
        with self._lock:
            device = self._devices.pop(uuid, None)
        if device is not None:
            self._free_gpm(device)


_UNSUPPORTED = object()
_FUNCTION_MISSING = object()  # the library lacks the symbol (an older driver)


class _FieldCaller:
    """Calls one NVML function for one field of a reading and sorts its failure:
    NotSupported -> None; a lost GPU -> _GpuLost; anything else -> None plus an
    entry in `errors` (the reading stays usable)."""

    def __init__(self, nvml: Any, errors: list[tuple[str, str]]) -> None:
        self._nvml = nvml
        self._errors = errors

    def __call__(self, fn_name: str, *args: Any) -> Any:
        result = self.raw(fn_name, *args)
        return None if result is _UNSUPPORTED else result

    def core(self, fn_name: str, *args: Any) -> Any:
        """A call whose Unknown/Uninitialized also means the GPU is lost."""
        return self._call(fn_name, args, _LOST_ON_CORE_CALL | LIBRARY_GONE, None)

    def raw(self, fn_name: str, *args: Any) -> Any:
        """Like calling, but NotSupported returns _UNSUPPORTED and a symbol the
        library lacks _FUNCTION_MISSING, not None."""
        return self._call(fn_name, args, _LOST_ANYWHERE | LIBRARY_GONE, _UNSUPPORTED)

    def samples(self, fn_name: str, *args: Any) -> list[Any]:
        """nvmlDeviceGetProcessUtilization: NotFound is "no samples in the
        period" and NotSupported is MIG or an old GPU; both are just empty."""
        try:
            return list(getattr(self._nvml, fn_name)(*args))
        except self._nvml.NVMLError as exc:
            error = nvml_error_name(exc)
            # The binding raises NVMLError(NVML_SUCCESS) when the size query
            # succeeds with nothing to size: also "no samples".
            if error in ("NotFound", "NotSupported") or getattr(exc, "value", None) == _NVML_SUCCESS:
                return []
            if error in _LOST_ANYWHERE or error in LIBRARY_GONE:
                raise _GpuLost(fn_name, error) from None
            self.record(fn_name, error)
            return []

    def record(self, fn_name: str, error: str) -> None:
        self._errors.append((fn_name, error))

    def _call(self, fn_name: str, args: tuple[Any, ...], lost: frozenset[str], unsupported: Any) -> Any:
        try:
            return getattr(self._nvml, fn_name)(*args)
        except self._nvml.NVMLError as exc:
            error = nvml_error_name(exc)
            if error == "NotSupported":
                return unsupported
            if error == "FunctionNotFound" and unsupported is _UNSUPPORTED:
                return _FUNCTION_MISSING
            if error in lost or error in LIBRARY_GONE:
                raise _GpuLost(fn_name, error) from None
            self.record(fn_name, error)
            return None


def _process(info: Any) -> GpuProcess:
    used = getattr(info, "usedGpuMemory", None)
    return GpuProcess(
        pid=int(info.pid),
        used_memory_bytes=int(used) if used is not None else None,
        gpu_instance_id=_mig_id(getattr(info, "gpuInstanceId", NO_MIG_INSTANCE)),
        compute_instance_id=_mig_id(getattr(info, "computeInstanceId", NO_MIG_INSTANCE)),
    )


def _mig_id(value: int | None) -> int | None:
    return None if value is None or value == NO_MIG_INSTANCE else int(value)


def _percent(value: float) -> float:
    """NVML percent (0..100) -> fraction 0..1. Device-level utilization is
    clamped; per-process samples over 100 are dropped before they get here."""
    return min(max(float(value), 0.0), 100.0) / 100.0


def _field_number(nvml: Any, value: Any, call: _FieldCaller, *, record: bool) -> float | None:
    """One nvmlFieldValue_t as a number. Each field value carries its own return
    code; the call succeeding says nothing about the field."""
    if value.nvmlReturn != _NVML_SUCCESS:
        if record and value.nvmlReturn not in (_NVML_ERROR_NOT_SUPPORTED, _NVML_ERROR_INVALID_ARGUMENT):
            call.record("nvmlDeviceGetFieldValues", nvml_error_name(nvml.NVMLError(value.nvmlReturn)))
        return None
    member = _VALUE_MEMBER_BY_TYPE.get(value.valueType)
    if member is None:
        if record:
            call.record("nvmlDeviceGetFieldValues", f"ValueType{value.valueType}")
        return None
    return float(getattr(value.value, member))


def _mw_to_w(milliwatts: float | None) -> float | None:
    return milliwatts / 1000.0 if milliwatts is not None else None


def _as_str(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _import_pynvml() -> ModuleType:
    try:
        import pynvml
    except ImportError as exc:
        raise BackendUnavailable(f"Python module pynvml not found (install nvidia-ml-py); {SIMULATE_HINT}") from exc
    return pynvml


def _init_failure_reason(exc: BaseException) -> str:
    error = nvml_error_name(exc)
    if error == "LibraryNotFound":
        return f"NVIDIA driver not loaded (libnvidia-ml.so.1 not found); {SIMULATE_HINT}"
    if error == "DriverNotLoaded":
        return (
            "NVIDIA driver not loaded (nvmlInit: DriverNotLoaded, is the nvidia kernel module loaded?); "
            f"{SIMULATE_HINT}"
        )
    if error == "NoPermission":
        return "no permission to use NVML (nvmlInit: NoPermission); the daemon needs read access to /dev/nvidia*"
    if error == "LibRmVersionMismatch":
        return (
            "NVML library and NVIDIA kernel module versions differ (nvmlInit: LibRmVersionMismatch); "
            "reboot or reload the driver after an upgrade"
        )
    if error == "Unknown":
        # nvidia-container-toolkit#48: after `systemctl daemon-reload` systemd
        # resets the container's device cgroup and NVML answers Unknown Error
        # until the container is recreated.
        return (
            "NVML initialisation failed (nvmlInit: Unknown Error); if this persists, the container has "
            "lost access to /dev/nvidia* (e.g. after systemctl daemon-reload, nvidia-container-toolkit#48) "
            "and must be recreated (delete the pod)"
        )
    return f"NVML initialisation failed (nvmlInit: {error})"
