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
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from gpucarbon.device.model import (
    BackendUnavailable,
    GpuProcess,
    GpuReadError,
    GpuReading,
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


class NvmlBackend:
    """`GpuBackend` over NVML. `nvml` is the pynvml module (a fake in tests)."""

    def __init__(
        self,
        nvml: ModuleType | Any | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._nvml: Any = nvml  # the pynvml module, or a stand-in with its names
        self._clock = clock
        self._lock = threading.Lock()  # guards the two dicts, never an NVML call
        self._devices: dict[str, _Device] = {}
        # Newest per-process sample timestamp seen per GPU (device clock, us). It
        # outlives a lost handle: the device clock keeps running.
        self._last_sample_us: dict[str, int] = {}
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
            self._devices.clear()
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
        index = call("nvmlDeviceGetIndex", handle)
        utilization = call("nvmlDeviceGetUtilizationRates", handle)
        memory = call("nvmlDeviceGetMemoryInfo", handle)
        limit_mw = call("nvmlDeviceGetEnforcedPowerLimit", handle)
        temperature = call("nvmlDeviceGetTemperature", handle, _temperature_sensor(nvml))
        mig = call("nvmlDeviceGetMigMode", handle)
        mig_mode = mig[0] == MIG_ENABLED if mig is not None else None
        return GpuReading(
            uuid=uuid,
            index=int(index) if index is not None else -1,
            name=_as_str(name) if name is not None else "",
            timestamp_s=timestamp_s,
            driver_version=self._driver_version,
            mig_mode=mig_mode,
            energy_mj=int(energy_mj) if energy_mj is not None else None,
            power_w=self._power_w(device, call),
            power_limit_w=_mw_to_w(limit_mw),
            utilization=_percent(utilization.gpu) if utilization is not None else None,
            memory_used_bytes=int(memory.used) if memory is not None else None,
            memory_total_bytes=int(memory.total) if memory is not None else None,
            temperature_c=float(temperature) if temperature is not None else None,
            processes=self._processes(handle, call),
            samples=self._samples(uuid, handle, call),
            mig_devices=self._mig_devices(handle, call) if mig_mode else (),
            errors=tuple(errors),
        )

    def _mig_devices(self, handle: Any, call: _FieldCaller) -> tuple[str, ...]:
        """UUIDs of the MIG devices on a board, so the kubelet's `MIG-<uuid>`
        device IDs can be mapped to it. Empty slots answer NotFound."""
        slots = call("nvmlDeviceGetMaxMigDeviceCount", handle) or 0
        uuids = []
        for slot in range(int(slots)):
            try:
                mig_handle = self._nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot)
                uuids.append(_as_str(self._nvml.nvmlDeviceGetUUID(mig_handle)))
            except self._nvml.NVMLError as exc:
                if nvml_error_name(exc) != "NotFound":
                    call.record("nvmlDeviceGetMigDeviceHandleByIndex", nvml_error_name(exc))
        return tuple(uuids)

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
        value = values[0]
        # Each field value carries its own return code; the call succeeding says
        # nothing about the field.
        if value.nvmlReturn != _NVML_SUCCESS:
            if value.nvmlReturn in (_NVML_ERROR_NOT_SUPPORTED, _NVML_ERROR_INVALID_ARGUMENT):
                device.instant_power_supported = False
            else:
                call.record("nvmlDeviceGetFieldValues", nvml_error_name(nvml.NVMLError(value.nvmlReturn)))
            return None
        member = _VALUE_MEMBER_BY_TYPE.get(value.valueType)
        if member is None:
            call.record("nvmlDeviceGetFieldValues", f"ValueType{value.valueType}")
            return None
        return float(getattr(value.value, member))

    def _processes(self, handle: Any, call: _FieldCaller) -> tuple[GpuProcess, ...]:
        nvml = self._nvml
        mismatch = getattr(nvml, "NVMLLibraryMismatchError", ())
        try:
            listing = call("nvmlDeviceGetComputeRunningProcesses", handle)
        except mismatch:
            # Bindings newer than the driver: the unversioned name maps to a
            # _v3 symbol the library lacks; _v2 has the same fields.
            listing = call("nvmlDeviceGetComputeRunningProcesses_v2", handle)
        return tuple(_process(p) for p in listing or ())

    def _samples(self, uuid: str, handle: Any, call: _FieldCaller) -> tuple[ProcessSample, ...]:
        """Per-process SM samples newer than the last ones seen on this GPU.

        NVML keeps a ring of samples per GPU; passing the newest timestamp seen
        returns only newer ones (passing 0 returns the whole buffer)."""
        last_seen_us = self._last_sample_us.get(uuid, 0)
        raw = call.samples("nvmlDeviceGetProcessUtilization", handle, last_seen_us)
        samples = tuple(
            ProcessSample(pid=int(s.pid), timestamp_us=int(s.timeStamp), sm_util=_percent(s.smUtil))
            # pid 0 marks an unused slot; older samples can come back on some
            # drivers despite the timestamp argument.
            for s in raw
            if s.pid != 0 and s.timeStamp > last_seen_us
        )
        if samples:
            newest = max(s.timestamp_us for s in samples)
            with self._lock:
                if newest > self._last_sample_us.get(uuid, 0):
                    self._last_sample_us[uuid] = newest
        return samples

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
            self._devices.pop(uuid, None)


_UNSUPPORTED = object()


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
        return self._call(fn_name, args, _LOST_ON_CORE_CALL, None)

    def raw(self, fn_name: str, *args: Any) -> Any:
        """Like calling, but NotSupported returns _UNSUPPORTED, not None."""
        return self._call(fn_name, args, _LOST_ANYWHERE, _UNSUPPORTED)

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
            if error in _LOST_ANYWHERE:
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
            if error in lost:
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
    """NVML percent (0..100) -> fraction 0..1, clamped: drivers occasionally
    report a little over 100 for a full sample period."""
    return min(max(float(value), 0.0), 100.0) / 100.0


def _mw_to_w(milliwatts: float | None) -> float | None:
    return milliwatts / 1000.0 if milliwatts is not None else None


def _as_str(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _temperature_sensor(nvml: Any) -> int:
    return getattr(nvml, "NVML_TEMPERATURE_GPU", 0)


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
    return f"NVML initialisation failed (nvmlInit: {error})"
