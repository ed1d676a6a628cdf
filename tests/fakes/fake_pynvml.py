"""A scriptable stand-in for the `pynvml` module (PyPI nvidia-ml-py).

`FakeNvml` has the same function names, signatures, constants, error classes and
return shapes as pynvml 12/13 for the calls the NVML backend makes, so the real
adapter runs against it unchanged. Behind it is an in-memory model of GPUs whose
counters, processes and samples a test sets directly, plus failure injection:

- `gpu.errors["nvmlDeviceGetTemperature"] = NVML_ERROR_TIMEOUT` makes that call
  raise the matching NVMLError subclass for that GPU;
- `gpu.field_returns[186] = NVML_ERROR_NOT_SUPPORTED` sets one field value's own
  `nvmlReturn` in nvmlDeviceGetFieldValues;
- `gpu.lost = True` makes every call for that GPU raise NVMLError_GpuIsLost;
- `gpu.hang = threading.Event()` blocks every call for that GPU until set;
- `FakeNvml(init_error=NVML_ERROR_LIBRARY_NOT_FOUND)` fails nvmlInit.

Every call is appended to `calls` as (function name, uuid or None, args).
"""

from __future__ import annotations

import string
import threading
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

# -- constants (values as in pynvml) -------------------------------------------

NVML_SUCCESS = 0
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_ALREADY_INITIALIZED = 5
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_INSUFFICIENT_SIZE = 7
NVML_ERROR_INSUFFICIENT_POWER = 8
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_TIMEOUT = 10
NVML_ERROR_IRQ_ISSUE = 11
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_FUNCTION_NOT_FOUND = 13
NVML_ERROR_CORRUPTED_INFOROM = 14
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_RESET_REQUIRED = 16
NVML_ERROR_OPERATING_SYSTEM = 17
NVML_ERROR_LIB_RM_VERSION_MISMATCH = 18
NVML_ERROR_IN_USE = 19
NVML_ERROR_MEMORY = 20
NVML_ERROR_NO_DATA = 21
NVML_ERROR_UNKNOWN = 999

NVML_TEMPERATURE_GPU = 0
NVML_DEVICE_MIG_DISABLE = 0
NVML_DEVICE_MIG_ENABLE = 1

NVML_VALUE_TYPE_DOUBLE = 0
NVML_VALUE_TYPE_UNSIGNED_INT = 1
NVML_VALUE_TYPE_UNSIGNED_LONG = 2
NVML_VALUE_TYPE_UNSIGNED_LONG_LONG = 3
NVML_VALUE_TYPE_SIGNED_LONG_LONG = 4
NVML_VALUE_TYPE_SIGNED_INT = 5
NVML_VALUE_TYPE_UNSIGNED_SHORT = 6

NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION = 83
NVML_FI_DEV_POWER_AVERAGE = 185
NVML_FI_DEV_POWER_INSTANT = 186

NO_MIG_INSTANCE = 0xFFFFFFFF  # gpuInstanceId/computeInstanceId outside MIG

_CONSTANTS = {k: v for k, v in dict(globals()).items() if k.startswith("NVML_")}


# -- errors: one subclass per code, built the way pynvml builds them -------------


class NVMLError(Exception):
    """`NVMLError(code)` returns the subclass for `code`, as in pynvml."""

    _valClassMapping: dict[int, type] = {}

    def __new__(cls, value: int):
        if cls is NVMLError:
            cls = NVMLError._valClassMapping.get(value, cls)
        obj = Exception.__new__(cls)
        obj.value = value
        return obj

    def __init__(self, value: int) -> None:
        super().__init__(value)

    def __str__(self) -> str:
        return f"NVML error {self.value}"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NVMLError) and self.value == other.value

    __hash__ = Exception.__hash__


class NVMLLibraryMismatchError(Exception):
    pass


def _error_class_name(constant: str) -> str:
    # NVML_ERROR_GPU_IS_LOST -> NVMLError_GpuIsLost (pynvml's rule)
    words = constant.removeprefix("NVML_ERROR_")
    return "NVMLError_" + string.capwords(words, "_").replace("_", "")


def _make_error_classes() -> dict[str, type]:
    classes = {}
    for constant, code in _CONSTANTS.items():
        if not constant.startswith("NVML_ERROR_"):
            continue

        def new(cls, *args, _code=code):
            return NVMLError.__new__(cls, _code)

        def init(self, *args, _code=code):
            Exception.__init__(self, _code)

        cls = type(_error_class_name(constant), (NVMLError,), {"__new__": new, "__init__": init})
        NVMLError._valClassMapping[code] = cls
        classes[cls.__name__] = cls
    return classes


_ERROR_CLASSES = _make_error_classes()
globals().update(_ERROR_CLASSES)


# -- the scriptable GPU model ----------------------------------------------------


@dataclass
class FakeProcess:
    pid: int
    used_memory_bytes: int | None = 1 << 30
    gpu_instance_id: int = NO_MIG_INSTANCE
    compute_instance_id: int = NO_MIG_INSTANCE


@dataclass
class FakeSample:
    pid: int
    timestamp_us: int
    sm_util: int  # percent, as NVML reports it
    mem_util: int = 0


@dataclass
class FakeGpu:
    uuid: str
    name: str = "NVIDIA H100 80GB HBM3"
    energy_mj: int = 1_000_000
    power_mw: int = 300_000  # nvmlDeviceGetPowerUsage (a 1 s average on Hopper)
    instant_power_mw: int = 310_000  # field NVML_FI_DEV_POWER_INSTANT
    power_limit_mw: int = 700_000
    gpu_util_percent: int = 50
    memory_util_percent: int = 20
    memory_total_bytes: int = 80 * (1 << 30)
    memory_used_bytes: int = 10 * (1 << 30)
    temperature_c: int = 45
    mig_current: int = NVML_DEVICE_MIG_DISABLE
    mig_pending: int = NVML_DEVICE_MIG_DISABLE
    processes: list[FakeProcess] = field(default_factory=list)
    samples: list[FakeSample] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)  # call name -> NVML error code
    field_returns: dict[int, int] = field(default_factory=dict)  # field id -> nvmlReturn
    lost: bool = False
    hang: threading.Event | None = None
    mig_devices: list[str] = field(default_factory=list)  # MIG device UUIDs, in slot order
    max_mig_devices: int = 7

    def advance(self, energy_mj: int) -> None:
        self.energy_mj += energy_mj


@dataclass(frozen=True)
class _Handle:
    """Opaque like c_nvmlDevice_t; identifies the GPU by UUID."""

    uuid: str


@dataclass(frozen=True)
class _MigHandle:
    """A MIG device handle: only its UUID is asked for."""

    uuid: str


class FakeNvml:
    """Module-like object: pass it as `NvmlBackend(nvml=FakeNvml(...))`."""

    NVMLError = NVMLError
    NVMLLibraryMismatchError = NVMLLibraryMismatchError

    def __init__(
        self,
        gpus: list[FakeGpu],
        driver_version: str = "550.54.15",
        init_error: int | None = None,
    ) -> None:
        self.gpus = gpus  # in index order; reorder to model a different enumeration
        self.driver_version = driver_version
        self.init_error = init_error
        self.initialized = 0  # nvmlInit is reference counted
        self.calls: list[tuple[str, str | None, tuple[Any, ...]]] = []
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        # Constants and NVMLError_* classes, like module attributes.
        if name in _CONSTANTS:
            return _CONSTANTS[name]
        if name in _ERROR_CLASSES:
            return _ERROR_CLASSES[name]
        raise AttributeError(f"fake pynvml has no attribute {name!r}")

    def gpu(self, uuid: str) -> FakeGpu:
        return next(g for g in self.gpus if g.uuid == uuid)

    def calls_to(self, fn_name: str, uuid: str | None = None) -> list[tuple[Any, ...]]:
        return [args for name, u, args in self.calls if name == fn_name and (uuid is None or u == uuid)]

    # -- library ---------------------------------------------------------------

    def nvmlInit(self) -> None:
        self._log("nvmlInit", None, ())
        if self.init_error is not None:
            raise NVMLError(self.init_error)
        self.initialized += 1

    def nvmlShutdown(self) -> None:
        self._log("nvmlShutdown", None, ())
        self._require_init()
        self.initialized -= 1

    def nvmlSystemGetDriverVersion(self) -> str:
        self._log("nvmlSystemGetDriverVersion", None, ())
        self._require_init()
        return self.driver_version

    def nvmlDeviceGetCount(self) -> int:
        self._log("nvmlDeviceGetCount", None, ())
        self._require_init()
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> _Handle:
        self._require_init()
        if not 0 <= index < len(self.gpus):
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        gpu = self.gpus[index]
        self._enter(gpu, "nvmlDeviceGetHandleByIndex", (index,))
        return _Handle(gpu.uuid)

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> _Handle:
        self._require_init()
        gpu = next((g for g in self.gpus if g.uuid == uuid), None)
        if gpu is None:
            self._log("nvmlDeviceGetHandleByUUID", uuid, (uuid,))
            raise NVMLError(NVML_ERROR_NOT_FOUND)
        self._enter(gpu, "nvmlDeviceGetHandleByUUID", (uuid,))
        return _Handle(uuid)

    # -- per device --------------------------------------------------------------

    def nvmlDeviceGetUUID(self, handle: _Handle) -> str:
        if isinstance(handle, _MigHandle):
            return handle.uuid
        return self._enter(self._gpu(handle), "nvmlDeviceGetUUID").uuid

    def nvmlDeviceGetMaxMigDeviceCount(self, device: _Handle) -> int:
        return self._enter(self._gpu(device), "nvmlDeviceGetMaxMigDeviceCount").max_mig_devices

    def nvmlDeviceGetMigDeviceHandleByIndex(self, device: _Handle, index: int) -> _MigHandle:
        gpu = self._enter(self._gpu(device), "nvmlDeviceGetMigDeviceHandleByIndex", (index,))
        if index >= len(gpu.mig_devices):
            raise NVMLError(NVML_ERROR_NOT_FOUND)  # an empty slot
        return _MigHandle(gpu.mig_devices[index])

    def nvmlDeviceGetIndex(self, handle: _Handle) -> int:
        gpu = self._enter(self._gpu(handle), "nvmlDeviceGetIndex")
        return self.gpus.index(gpu)

    def nvmlDeviceGetName(self, handle: _Handle) -> str:
        return self._enter(self._gpu(handle), "nvmlDeviceGetName").name

    def nvmlDeviceGetMigMode(self, device: _Handle) -> list[int]:
        gpu = self._enter(self._gpu(device), "nvmlDeviceGetMigMode")
        return [gpu.mig_current, gpu.mig_pending]

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: _Handle) -> int:
        return self._enter(self._gpu(handle), "nvmlDeviceGetTotalEnergyConsumption").energy_mj

    def nvmlDeviceGetPowerUsage(self, handle: _Handle) -> int:
        return self._enter(self._gpu(handle), "nvmlDeviceGetPowerUsage").power_mw

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: _Handle) -> int:
        return self._enter(self._gpu(handle), "nvmlDeviceGetEnforcedPowerLimit").power_limit_mw

    def nvmlDeviceGetFieldValues(self, handle: _Handle, fieldIds: list[Any]) -> list[SimpleNamespace]:
        gpu = self._enter(self._gpu(handle), "nvmlDeviceGetFieldValues", (list(fieldIds),))
        return [self._field_value(gpu, field_id) for field_id in fieldIds]

    def nvmlDeviceGetUtilizationRates(self, handle: _Handle) -> SimpleNamespace:
        gpu = self._enter(self._gpu(handle), "nvmlDeviceGetUtilizationRates")
        return SimpleNamespace(gpu=gpu.gpu_util_percent, memory=gpu.memory_util_percent)

    def nvmlDeviceGetMemoryInfo(self, handle: _Handle, version: int | None = None) -> SimpleNamespace:
        gpu = self._enter(self._gpu(handle), "nvmlDeviceGetMemoryInfo")
        free = gpu.memory_total_bytes - gpu.memory_used_bytes
        return SimpleNamespace(total=gpu.memory_total_bytes, free=free, used=gpu.memory_used_bytes)

    def nvmlDeviceGetTemperature(self, handle: _Handle, sensor: int) -> int:
        gpu = self._enter(self._gpu(handle), "nvmlDeviceGetTemperature", (sensor,))
        if sensor != NVML_TEMPERATURE_GPU:
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        return gpu.temperature_c

    def nvmlDeviceGetComputeRunningProcesses(self, handle: _Handle) -> list[SimpleNamespace]:
        gpu = self._enter(self._gpu(handle), "nvmlDeviceGetComputeRunningProcesses")
        return [
            SimpleNamespace(
                pid=p.pid,
                usedGpuMemory=p.used_memory_bytes,  # pynvml turns "not available" into None
                gpuInstanceId=p.gpu_instance_id,
                computeInstanceId=p.compute_instance_id,
            )
            for p in gpu.processes
        ]

    nvmlDeviceGetComputeRunningProcesses_v2 = nvmlDeviceGetComputeRunningProcesses

    def nvmlDeviceGetProcessUtilization(self, handle: _Handle, timeStamp: int) -> list[SimpleNamespace]:
        gpu = self._enter(self._gpu(handle), "nvmlDeviceGetProcessUtilization", (timeStamp,))
        if gpu.mig_current == NVML_DEVICE_MIG_ENABLE:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        newer = [s for s in gpu.samples if s.timestamp_us > timeStamp]
        if not newer:
            raise NVMLError(NVML_ERROR_NOT_FOUND)
        return [
            SimpleNamespace(
                pid=s.pid, timeStamp=s.timestamp_us, smUtil=s.sm_util, memUtil=s.mem_util, encUtil=0, decUtil=0
            )
            for s in newer
        ]

    # -- machinery ---------------------------------------------------------------

    def _field_value(self, gpu: FakeGpu, field_id: Any) -> SimpleNamespace:
        field_id, scope_id = field_id if isinstance(field_id, tuple) else (field_id, 0)
        values = {
            NVML_FI_DEV_POWER_INSTANT: gpu.instant_power_mw,
            NVML_FI_DEV_POWER_AVERAGE: gpu.power_mw,
            NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION: gpu.energy_mj,
        }
        ret = gpu.field_returns.get(field_id, NVML_SUCCESS if field_id in values else NVML_ERROR_NOT_SUPPORTED)
        value_type = (
            NVML_VALUE_TYPE_UNSIGNED_LONG_LONG
            if field_id == NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION
            else NVML_VALUE_TYPE_UNSIGNED_INT
        )
        raw = values.get(field_id, 0) if ret == NVML_SUCCESS else 0
        member = "ullVal" if value_type == NVML_VALUE_TYPE_UNSIGNED_LONG_LONG else "uiVal"
        return SimpleNamespace(
            fieldId=field_id,
            scopeId=scope_id,
            timestamp=0,
            latencyUsec=0,
            valueType=value_type,
            nvmlReturn=ret,
            value=SimpleNamespace(**{member: raw}),
        )

    def _gpu(self, handle: _Handle) -> FakeGpu:
        self._require_init()
        if not isinstance(handle, _Handle):
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        gpu = next((g for g in self.gpus if g.uuid == handle.uuid), None)
        if gpu is None:  # removed from the model: behaves like a GPU off the bus
            raise NVMLError(NVML_ERROR_GPU_IS_LOST)
        return gpu

    def _enter(self, gpu: FakeGpu, fn_name: str, args: tuple[Any, ...] = ()) -> FakeGpu:
        self._log(fn_name, gpu.uuid, args)
        if gpu.hang is not None:
            gpu.hang.wait()
        if gpu.lost:
            raise NVMLError(NVML_ERROR_GPU_IS_LOST)
        if fn_name in gpu.errors:
            raise NVMLError(gpu.errors[fn_name])
        return gpu

    def _require_init(self) -> None:
        if self.initialized <= 0:
            raise NVMLError(NVML_ERROR_UNINITIALIZED)

    def _log(self, fn_name: str, uuid: str | None, args: tuple[Any, ...]) -> None:
        with self._lock:
            self.calls.append((fn_name, uuid, args))
