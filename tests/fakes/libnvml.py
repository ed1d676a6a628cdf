"""A fake `libnvidia-ml.so.1` at the C ABI, under the REAL `pynvml` bindings.

The daemon's NVML backend imports `pynvml` (PyPI nvidia-ml-py) and never sees
this module. `FakeNvmlLibrary.install()` puts a symbol table where pynvml keeps
the loaded library (`pynvml.nvmlLib`, whose attributes `_nvmlGetFunctionPointer`
looks up by C name); every symbol is a `ctypes.CFUNCTYPE` callback with the C
signature from `nvml.h`. So each call goes through the real binding: its
argument marshalling, its two-call size queries, its structs, its return-code to
`NVMLError_*` mapping, and back out through a C function pointer. A symbol the
library lacks (an older driver) raises AttributeError there, which pynvml turns
into `NVMLError_FunctionNotFound`, exactly as with a real old library.

What NVIDIA documents (nvml.h, NVML API reference), scripted:
- `nvmlDeviceGetProcessUtilization` returns ONE sample per process that was busy,
  stamped with a CPU timestamp in microseconds, newer than `lastSeenTimeStamp`;
  NotFound when there are none (go-nvml#51, nvtop#110). Tests may script garbage
  (smUtil 37100, timestamps far in the future: nvtop#110, DCGM#83).
- On a MIG-enabled board the parent handle refuses process lists to an
  unprivileged caller (NoPermission: k8s-device-plugin#399, gpu-operator#322);
  each MIG device handle lists its own processes. Per-process utilization is
  NotSupported under MIG; energy and power are board-level only.
- GPM (Hopper+): `nvmlGpmMigSampleGet` per GPU instance, `nvmlGpmMetricsGet` over
  two samples at least 100 ms apart (closer: the metric's own nvmlReturn fails).
- `driver_loaded = False` models the kernel module unloaded under a running
  process: every call answers DriverNotLoaded, nvmlInit too, until it is back.
- `init_hang` (a threading.Event) blocks nvmlInitWithFlags until set (go-nvml#152);
  `init_error` fails it with that code (999 = "Unknown Error",
  nvidia-container-toolkit#48).

Per GPU: `errors[c_name] = code` fails that call; `lost` answers GpuIsLost;
`hang` (an Event) blocks every call for the GPU. Calls are logged in `calls`.
An exception inside a callback is kept in `callback_errors` (the test fixture
fails on it) and answered with NVML_ERROR_UNKNOWN, never swallowed silently.
"""

from __future__ import annotations

import ctypes as C
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pynvml

NVML_SUCCESS = 0
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_INSUFFICIENT_SIZE = 7
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_TIMEOUT = 10
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_LIB_RM_VERSION_MISMATCH = 18
NVML_ERROR_UNKNOWN = 999

NO_MIG_INSTANCE = 0xFFFFFFFF  # gpuInstanceId/computeInstanceId outside MIG
GPM_MIN_INTERVAL_S = 0.1  # nvml.h: GPM samples must be at least 100 ms apart

_u = C.c_uint
_p = C.POINTER
_vp = C.c_void_p
_RET = C.c_int  # nvmlReturn_t is an enum
_dev = pynvml.c_nvmlDevice_t  # an opaque pointer; the fake hands out addresses


@dataclass
class FakeProcess:
    pid: int
    used_memory_bytes: int | None = 1 << 30  # None: NVML_VALUE_NOT_AVAILABLE


@dataclass
class FakeSample:
    pid: int
    timestamp_us: int  # CPU clock, microseconds (nvml.h)
    sm_util: int  # percent, as NVML reports it (garbage may be > 100)
    mem_util: int = 0


@dataclass
class FakeMig:
    """One MIG device (GPU instance + compute instance) on a board."""

    uuid: str
    gpu_instance_id: int
    compute_instance_id: int = 0
    sm_count: int = 16
    slice_count: int = 1
    processes: list[FakeProcess] = field(default_factory=list)
    gpm_sm_util: float = 0.0  # percent the instance's SMs were busy (GPM metric)


@dataclass
class FakeGpu:
    uuid: str
    name: str = "NVIDIA H100 80GB HBM3"
    minor: int = 0  # /dev/nvidia<minor>
    energy_mj: int = 1_000_000
    power_mw: int = 300_000  # nvmlDeviceGetPowerUsage (a 1 s average on Hopper)
    instant_power_mw: int = 310_000  # field NVML_FI_DEV_POWER_INSTANT, GPU scope
    module_power_mw: int | None = None  # same field, module scope (Grace superchips)
    power_limit_mw: int = 700_000
    gpu_util_percent: int = 50
    memory_util_percent: int = 20
    memory_total_bytes: int = 80 * (1 << 30)
    memory_used_bytes: int = 10 * (1 << 30)
    temperature_c: int = 45
    multiprocessor_count: int = 132
    mig_enabled: bool = False
    migs: list[FakeMig] = field(default_factory=list)
    max_mig_devices: int = 7
    parent_list_error_under_mig: int = NVML_ERROR_NO_PERMISSION
    gpm_supported: bool = False
    processes: list[FakeProcess] = field(default_factory=list)
    mps_clients: list[FakeProcess] = field(default_factory=list)  # nvmlDeviceGetMPSComputeRunningProcesses
    samples: list[FakeSample] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)  # C function name -> code
    field_returns: dict[int, int] = field(default_factory=dict)  # field id -> nvmlReturn
    lost: bool = False
    hang: threading.Event | None = None
    # Quirks reported for some drivers: the whole sample buffer whatever the
    # lastSeenTimeStamp; Success with a zero count instead of NotFound.
    ignores_last_seen: bool = False
    no_samples_code: int = NVML_ERROR_NOT_FOUND

    def advance(self, energy_mj: int) -> None:
        self.energy_mj += energy_mj


@dataclass
class _GpmSample:
    gpu: FakeGpu | None = None
    mig: FakeMig | None = None
    taken_s: float | None = None
    sm_util: float = 0.0


class FakeNvmlLibrary:
    """The fake library. Use as a context manager, or install()/uninstall()."""

    def __init__(
        self,
        gpus: list[FakeGpu],
        driver_version: str = "550.54.15",
        init_error: int | None = None,
        missing: tuple[str, ...] = (),
    ) -> None:
        self.gpus = gpus  # index order; reorder to model another enumeration
        self.driver_version = driver_version
        self.init_error = init_error
        self.init_hang: threading.Event | None = None
        self.driver_loaded = True
        self.missing = set(missing)  # C symbols this "driver" lacks
        self.errors: dict[str, int] = {}  # C function name -> code, for any caller
        self.now_s = 1000.0  # the library's clock for GPM samples; tests advance it
        self.initialized = 0
        self.calls: list[tuple[str, str | None]] = []
        self.last_seen_args: dict[str, list[int]] = {}  # uuid -> lastSeenTimeStamp per query
        self.callback_errors: list[BaseException] = []
        self.gpm_samples: dict[int, _GpmSample] = {}
        self._handles: dict[int, tuple[FakeGpu, FakeMig | None]] = {}
        self._handle_of: dict[str, int] = {}
        self._lock = threading.Lock()
        self._symbols = _SymbolTable(self)
        self._error_text = C.create_string_buffer(b"Unknown Error")

    # -- installing under pynvml ---------------------------------------------------

    def install(self) -> FakeNvmlLibrary:
        with pynvml.libLoadLock:
            pynvml.nvmlLib = self._symbols
            pynvml._nvmlGetFunctionPointer_cache.clear()
            pynvml._nvmlLib_refcount = 0
        return self

    def uninstall(self) -> None:
        with pynvml.libLoadLock:
            pynvml.nvmlLib = None
            pynvml._nvmlGetFunctionPointer_cache.clear()
            pynvml._nvmlLib_refcount = 0

    def __enter__(self) -> FakeNvmlLibrary:
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.uninstall()

    # -- test helpers --------------------------------------------------------------

    def gpu(self, uuid: str) -> FakeGpu:
        return next(g for g in self.gpus if g.uuid == uuid)

    def calls_to(self, c_name: str, uuid: str | None = None) -> list[str | None]:
        return [u for name, u in self.calls if name == c_name and (uuid is None or u == uuid)]

    # -- handles ---------------------------------------------------------------------

    def handle(self, gpu: FakeGpu, mig: FakeMig | None = None) -> int:
        uuid = mig.uuid if mig is not None else gpu.uuid
        with self._lock:
            address = self._handle_of.get(uuid)
            if address is None:
                address = 0x10000 * (len(self._handle_of) + 1)
                self._handle_of[uuid] = address
            self._handles[address] = (gpu, mig)
        return address

    def resolve(self, address: int | None) -> tuple[FakeGpu, FakeMig | None]:
        found = self._handles.get(address or 0)
        if found is None:
            raise _Fail(NVML_ERROR_INVALID_ARGUMENT)
        gpu, mig = found
        if gpu not in self.gpus:  # removed from the model: fell off the bus
            raise _Fail(NVML_ERROR_GPU_IS_LOST)
        return gpu, mig

    # -- the call wrapper ------------------------------------------------------------

    def call(self, name: str, impl: Callable[..., int | None], args: tuple[Any, ...]) -> int:
        """Every symbol runs through here: log, library state, per-GPU faults."""
        uuid = self._uuid_of(name, args[0]) if name.startswith("nvmlDevice") and args else None
        try:
            with self._lock:
                self.calls.append((name, uuid))
            if not self.driver_loaded and name != "nvmlErrorString":
                return NVML_ERROR_DRIVER_NOT_LOADED
            if self._needs_init(name) and self.initialized <= 0:
                return NVML_ERROR_UNINITIALIZED
            if name in self.errors:
                return self.errors[name]
            ret = impl(*args)
            return NVML_SUCCESS if ret is None else ret
        except _Fail as fail:
            return fail.code
        except BaseException as exc:  # a bug in the fake: make the test fail
            self.callback_errors.append(exc)
            return NVML_ERROR_UNKNOWN

    def _uuid_of(self, name: str, handle: Any) -> str | None:
        if isinstance(handle, bytes):  # nvmlDeviceGetHandleByUUID
            return handle.decode()
        if name == "nvmlDeviceGetHandleByIndex_v2":
            return self.gpus[handle].uuid if 0 <= handle < len(self.gpus) else None
        found = self._handles.get(handle) if isinstance(handle, int) else None
        if found is None:
            return None
        gpu, mig = found
        return mig.uuid if mig is not None else gpu.uuid

    @staticmethod
    def _needs_init(name: str) -> bool:
        return name not in ("nvmlInitWithFlags", "nvmlInit_v2", "nvmlErrorString")

    def device(self, address: int | None, c_name: str) -> tuple[FakeGpu, FakeMig | None]:
        """Resolve a handle and apply that GPU's scripted faults."""
        gpu, mig = self.resolve(address)
        self.enter(gpu, c_name)
        return gpu, mig

    def enter(self, gpu: FakeGpu, c_name: str) -> None:
        if gpu.hang is not None:
            gpu.hang.wait()
        if gpu.lost:
            raise _Fail(NVML_ERROR_GPU_IS_LOST)
        if c_name in gpu.errors:
            raise _Fail(gpu.errors[c_name])


class _Fail(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def _put_string(buffer: int, length: int, text: str) -> int | None:
    raw = text.encode() + b"\0"
    if len(raw) > length:
        return NVML_ERROR_INSUFFICIENT_SIZE
    C.memmove(buffer, raw, len(raw))
    return None


class _SymbolTable:
    """Stands where pynvml keeps the CDLL: attribute lookup by C symbol name
    returns a C function pointer (a CFUNCTYPE callback)."""

    def __init__(self, lib: FakeNvmlLibrary) -> None:
        self._lib = lib
        self._built: dict[str, Any] = {}  # callbacks must stay referenced

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name in self._lib.missing:
            raise AttributeError(name)
        built = self._built.get(name)
        if built is not None:
            return built
        spec = _SIGNATURES.get(name)
        if spec is None:
            raise AttributeError(name)
        argtypes, impl_name = spec
        impl = getattr(_Impl(self._lib), impl_name)
        lib = self._lib
        restype = _vp if name == "nvmlErrorString" else _RET

        def thunk(*args: Any, _name: str = name, _impl: Callable[..., Any] = impl) -> Any:
            if _name == "nvmlErrorString":
                return C.addressof(lib._error_text)
            return lib.call(_name, _impl, args)

        built = C.CFUNCTYPE(restype, *argtypes)(thunk)
        self._built[name] = built
        return built


class _Impl:
    """The C functions, one method each, arguments as ctypes delivers them."""

    def __init__(self, lib: FakeNvmlLibrary) -> None:
        self.lib = lib

    # -- library ----------------------------------------------------------------------

    def init(self, flags: int) -> int | None:
        lib = self.lib
        if lib.init_hang is not None:
            lib.init_hang.wait()
        if lib.init_error is not None:
            return lib.init_error
        lib.initialized += 1
        return None

    def shutdown(self) -> None:
        self.lib.initialized -= 1

    def error_string(self, code: int) -> None:  # handled in the thunk
        return None

    def driver_version(self, buffer: int, length: int) -> int | None:
        return _put_string(buffer, length, self.lib.driver_version)

    def count(self, out: Any) -> None:
        out[0] = len(self.lib.gpus)

    def handle_by_index(self, index: int, out: Any) -> int | None:
        if not 0 <= index < len(self.lib.gpus):
            return NVML_ERROR_INVALID_ARGUMENT
        gpu = self.lib.gpus[index]
        self.lib.enter(gpu, "nvmlDeviceGetHandleByIndex_v2")
        out[0] = C.cast(self.lib.handle(gpu), _dev)
        return None

    def handle_by_uuid(self, uuid: bytes, out: Any) -> int | None:
        wanted = uuid.decode()
        for gpu in self.lib.gpus:
            if gpu.uuid == wanted:
                self.lib.enter(gpu, "nvmlDeviceGetHandleByUUID")
                out[0] = C.cast(self.lib.handle(gpu), _dev)
                return None
            for mig in gpu.migs:
                if mig.uuid == wanted:
                    out[0] = C.cast(self.lib.handle(gpu, mig), _dev)
                    return None
        return NVML_ERROR_NOT_FOUND

    # -- identity ---------------------------------------------------------------------

    def uuid(self, handle: int, buffer: int, length: int) -> int | None:
        gpu, mig = self.lib.device(handle, "nvmlDeviceGetUUID")
        return _put_string(buffer, length, mig.uuid if mig else gpu.uuid)

    def name(self, handle: int, buffer: int, length: int) -> int | None:
        gpu, mig = self.lib.device(handle, "nvmlDeviceGetName")
        suffix = f" MIG {mig.slice_count}g" if mig else ""
        return _put_string(buffer, length, gpu.name + suffix)

    def index(self, handle: int, out: Any) -> int | None:
        gpu, mig = self.lib.device(handle, "nvmlDeviceGetIndex")
        out[0] = self.lib.gpus.index(gpu)
        return None

    def minor(self, handle: int, out: Any) -> int | None:
        gpu, mig = self.lib.device(handle, "nvmlDeviceGetMinorNumber")
        if mig is not None:
            return NVML_ERROR_NOT_SUPPORTED
        out[0] = gpu.minor
        return None

    # -- power and energy -------------------------------------------------------------

    def energy(self, handle: int, out: Any) -> int | None:
        gpu, mig = self.lib.device(handle, "nvmlDeviceGetTotalEnergyConsumption")
        if mig is not None:
            return NVML_ERROR_NOT_SUPPORTED
        out[0] = gpu.energy_mj
        return None

    def power(self, handle: int, out: Any) -> int | None:
        gpu, mig = self.lib.device(handle, "nvmlDeviceGetPowerUsage")
        if mig is not None:
            return NVML_ERROR_NOT_SUPPORTED
        out[0] = gpu.power_mw
        return None

    def power_limit(self, handle: int, out: Any) -> int | None:
        gpu, _ = self.lib.device(handle, "nvmlDeviceGetEnforcedPowerLimit")
        out[0] = gpu.power_limit_mw
        return None

    def field_values(self, handle: int, count: int, values: Any) -> int | None:
        gpu, mig = self.lib.device(handle, "nvmlDeviceGetFieldValues")
        values = C.cast(values, _p(pynvml.c_nvmlFieldValue_t))  # the caller passes byref(array)
        for i in range(count):
            value = values[i]
            number, ret = self._field(gpu, value.fieldId, value.scopeId)
            value.nvmlReturn = ret
            value.valueType = 3 if value.fieldId == pynvml.NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION else 1
            if ret == NVML_SUCCESS:
                if value.valueType == 3:
                    value.value.ullVal = number
                else:
                    value.value.uiVal = number
        return None

    def _field(self, gpu: FakeGpu, field_id: int, scope: int) -> tuple[int, int]:
        if field_id in gpu.field_returns:
            return 0, gpu.field_returns[field_id]
        if field_id == pynvml.NVML_FI_DEV_POWER_INSTANT:
            if scope == pynvml.NVML_POWER_SCOPE_MODULE:
                if gpu.module_power_mw is None:
                    return 0, NVML_ERROR_NOT_SUPPORTED
                return gpu.module_power_mw, NVML_SUCCESS
            return gpu.instant_power_mw, NVML_SUCCESS
        if field_id == pynvml.NVML_FI_DEV_POWER_AVERAGE:
            return gpu.power_mw, NVML_SUCCESS
        if field_id == pynvml.NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION:
            return gpu.energy_mj, NVML_SUCCESS
        return 0, NVML_ERROR_NOT_SUPPORTED

    # -- state ------------------------------------------------------------------------

    def utilization(self, handle: int, out: Any) -> int | None:
        gpu, mig = self.lib.device(handle, "nvmlDeviceGetUtilizationRates")
        if mig is not None:
            return NVML_ERROR_NOT_SUPPORTED
        out[0].gpu = gpu.gpu_util_percent
        out[0].memory = gpu.memory_util_percent
        return None

    def memory(self, handle: int, out: Any) -> int | None:
        gpu, _ = self.lib.device(handle, "nvmlDeviceGetMemoryInfo")
        out[0].total = gpu.memory_total_bytes
        out[0].used = gpu.memory_used_bytes
        out[0].free = gpu.memory_total_bytes - gpu.memory_used_bytes
        return None

    def temperature(self, handle: int, sensor: int, out: Any) -> int | None:
        gpu, _ = self.lib.device(handle, "nvmlDeviceGetTemperature")
        if sensor != pynvml.NVML_TEMPERATURE_GPU:
            return NVML_ERROR_INVALID_ARGUMENT
        out[0] = gpu.temperature_c
        return None

    def temperature_v(self, handle: int, out: Any) -> int | None:
        gpu, _ = self.lib.device(handle, "nvmlDeviceGetTemperatureV")
        if out[0].version != pynvml.nvmlTemperature_v1:
            return pynvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH
        if out[0].sensorType != pynvml.NVML_TEMPERATURE_GPU:
            return NVML_ERROR_INVALID_ARGUMENT
        out[0].temperature = gpu.temperature_c
        return None

    # -- MIG --------------------------------------------------------------------------

    def mig_mode(self, handle: int, current: Any, pending: Any) -> int | None:
        gpu, mig = self.lib.device(handle, "nvmlDeviceGetMigMode")
        if mig is not None:
            return NVML_ERROR_NOT_SUPPORTED
        current[0] = pending[0] = 1 if gpu.mig_enabled else 0
        return None

    def max_mig(self, handle: int, out: Any) -> int | None:
        gpu, _ = self.lib.device(handle, "nvmlDeviceGetMaxMigDeviceCount")
        out[0] = gpu.max_mig_devices
        return None

    def mig_handle(self, handle: int, slot: int, out: Any) -> int | None:
        gpu, mig = self.lib.device(handle, "nvmlDeviceGetMigDeviceHandleByIndex")
        if mig is not None or not gpu.mig_enabled:
            return NVML_ERROR_INVALID_ARGUMENT
        if slot >= len(gpu.migs):
            return NVML_ERROR_NOT_FOUND  # an empty slot
        out[0] = C.cast(self.lib.handle(gpu, gpu.migs[slot]), _dev)
        return None

    def gpu_instance_id(self, handle: int, out: Any) -> int | None:
        _, mig = self.lib.device(handle, "nvmlDeviceGetGpuInstanceId")
        if mig is None:
            return NVML_ERROR_INVALID_ARGUMENT
        out[0] = mig.gpu_instance_id
        return None

    def compute_instance_id(self, handle: int, out: Any) -> int | None:
        _, mig = self.lib.device(handle, "nvmlDeviceGetComputeInstanceId")
        if mig is None:
            return NVML_ERROR_INVALID_ARGUMENT
        out[0] = mig.compute_instance_id
        return None

    def attributes(self, handle: int, out: Any) -> int | None:
        gpu, mig = self.lib.device(handle, "nvmlDeviceGetAttributes_v2")
        out[0].multiprocessorCount = mig.sm_count if mig else gpu.multiprocessor_count
        out[0].gpuInstanceSliceCount = mig.slice_count if mig else 7
        out[0].computeInstanceSliceCount = mig.slice_count if mig else 7
        return None

    # -- processes --------------------------------------------------------------------

    def processes(self, handle: int, count: Any, infos: Any) -> int | None:
        gpu, mig = self.lib.device(handle, "nvmlDeviceGetComputeRunningProcesses_v3")
        if mig is None and gpu.mig_enabled:
            return gpu.parent_list_error_under_mig
        return self._list(mig.processes if mig else gpu.processes, mig, count, infos)

    def mps_processes(self, handle: int, count: Any, infos: Any) -> int | None:
        gpu, mig = self.lib.device(handle, "nvmlDeviceGetMPSComputeRunningProcesses_v3")
        if mig is None and gpu.mig_enabled:
            return gpu.parent_list_error_under_mig
        return self._list([] if mig else gpu.mps_clients, mig, count, infos)

    def _list(self, listed: list[FakeProcess], mig: FakeMig | None, count: Any, infos: Any) -> int | None:
        if not infos:
            count[0] = len(listed)
            return NVML_ERROR_INSUFFICIENT_SIZE if listed else None
        if count[0] < len(listed):
            count[0] = len(listed)
            return NVML_ERROR_INSUFFICIENT_SIZE
        for i, process in enumerate(listed):
            infos[i].pid = process.pid
            infos[i].usedGpuMemory = (
                process.used_memory_bytes
                if process.used_memory_bytes is not None
                else pynvml.NVML_VALUE_NOT_AVAILABLE_ulonglong.value
            )
            infos[i].gpuInstanceId = mig.gpu_instance_id if mig else NO_MIG_INSTANCE
            infos[i].computeInstanceId = mig.compute_instance_id if mig else NO_MIG_INSTANCE
        count[0] = len(listed)
        return None

    def process_utilization(self, handle: int, samples: Any, count: Any, last_seen_us: int) -> int | None:
        gpu, mig = self.lib.device(handle, "nvmlDeviceGetProcessUtilization")
        if not samples:  # the size query: once per binding call
            self.lib.last_seen_args.setdefault(gpu.uuid, []).append(last_seen_us)
        if mig is not None or gpu.mig_enabled:
            return NVML_ERROR_NOT_SUPPORTED
        since = 0 if gpu.ignores_last_seen else last_seen_us
        newer = [s for s in gpu.samples if s.timestamp_us > since]
        if not newer:
            count[0] = 0
            return gpu.no_samples_code
        if not samples or count[0] < len(newer):
            count[0] = len(newer)
            return NVML_ERROR_INSUFFICIENT_SIZE
        for i, sample in enumerate(newer):
            samples[i].pid = sample.pid
            samples[i].timeStamp = sample.timestamp_us
            samples[i].smUtil = sample.sm_util
            samples[i].memUtil = sample.mem_util
        count[0] = len(newer)
        return None

    # -- GPM --------------------------------------------------------------------------

    def gpm_support(self, handle: int, out: Any) -> int | None:
        gpu, _ = self.lib.device(handle, "nvmlGpmQueryDeviceSupport")
        if out[0].version != pynvml.NVML_GPM_SUPPORT_VERSION:
            return pynvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH
        out[0].isSupportedDevice = 1 if gpu.gpm_supported else 0
        return None

    def gpm_alloc(self, out: Any) -> None:
        address = 0x7000000 + 0x10 * (len(self.lib.gpm_samples) + 1)
        while address in self.lib.gpm_samples:
            address += 0x10
        self.lib.gpm_samples[address] = _GpmSample()
        out[0] = C.cast(address, pynvml.c_nvmlGpmSample_t)

    def gpm_free(self, sample: int) -> int | None:
        if self.lib.gpm_samples.pop(sample or 0, None) is None:
            return NVML_ERROR_INVALID_ARGUMENT
        return None

    def gpm_mig_sample(self, handle: int, gpu_instance_id: int, sample: int) -> int | None:
        gpu, mig = self.lib.device(handle, "nvmlGpmMigSampleGet")
        if not gpu.gpm_supported:
            return NVML_ERROR_NOT_SUPPORTED
        target = next((m for m in gpu.migs if m.gpu_instance_id == gpu_instance_id), None)
        slot = self.lib.gpm_samples.get(sample or 0)
        if target is None or slot is None:
            return NVML_ERROR_INVALID_ARGUMENT
        slot.gpu, slot.mig, slot.taken_s, slot.sm_util = gpu, target, self.lib.now_s, target.gpm_sm_util
        return None

    def gpm_metrics(self, request: Any) -> int | None:
        get = request[0]
        if get.version != pynvml.NVML_GPM_METRICS_GET_VERSION:
            return pynvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH
        first = self.lib.gpm_samples.get(C.cast(get.sample1, _vp).value or 0)
        second = self.lib.gpm_samples.get(C.cast(get.sample2, _vp).value or 0)
        if first is None or second is None or first.taken_s is None or second.taken_s is None:
            return NVML_ERROR_INVALID_ARGUMENT
        for i in range(get.numMetrics):
            metric = get.metrics[i]
            if metric.metricId != pynvml.NVML_GPM_METRIC_SM_UTIL:
                metric.nvmlReturn = NVML_ERROR_NOT_SUPPORTED
            elif second.taken_s - first.taken_s < GPM_MIN_INTERVAL_S:
                metric.nvmlReturn = NVML_ERROR_INVALID_ARGUMENT
            else:
                metric.nvmlReturn = NVML_SUCCESS
                metric.value = second.sm_util
        return None


def _sig(*argtypes: Any) -> tuple[Any, ...]:
    return argtypes


# C name -> (argument types from nvml.h, implementing method)
_SIGNATURES: dict[str, tuple[tuple[Any, ...], str]] = {
    "nvmlInitWithFlags": (_sig(_u), "init"),
    "nvmlShutdown": (_sig(), "shutdown"),
    "nvmlErrorString": (_sig(C.c_int), "error_string"),
    "nvmlSystemGetDriverVersion": (_sig(_vp, _u), "driver_version"),
    "nvmlDeviceGetCount_v2": (_sig(_p(_u)), "count"),
    "nvmlDeviceGetHandleByIndex_v2": (_sig(_u, _p(_dev)), "handle_by_index"),
    "nvmlDeviceGetHandleByUUID": (_sig(C.c_char_p, _p(_dev)), "handle_by_uuid"),
    "nvmlDeviceGetUUID": (_sig(_vp, _vp, _u), "uuid"),
    "nvmlDeviceGetName": (_sig(_vp, _vp, _u), "name"),
    "nvmlDeviceGetIndex": (_sig(_vp, _p(_u)), "index"),
    "nvmlDeviceGetMinorNumber": (_sig(_vp, _p(_u)), "minor"),
    "nvmlDeviceGetTotalEnergyConsumption": (_sig(_vp, _p(C.c_ulonglong)), "energy"),
    "nvmlDeviceGetPowerUsage": (_sig(_vp, _p(_u)), "power"),
    "nvmlDeviceGetEnforcedPowerLimit": (_sig(_vp, _p(_u)), "power_limit"),
    "nvmlDeviceGetFieldValues": (_sig(_vp, C.c_int32, _vp), "field_values"),
    "nvmlDeviceGetUtilizationRates": (_sig(_vp, _p(pynvml.c_nvmlUtilization_t)), "utilization"),
    "nvmlDeviceGetMemoryInfo": (_sig(_vp, _p(pynvml.c_nvmlMemory_t)), "memory"),
    "nvmlDeviceGetTemperature": (_sig(_vp, pynvml._nvmlTemperatureSensors_t, _p(_u)), "temperature"),
    "nvmlDeviceGetTemperatureV": (_sig(_vp, _p(pynvml.c_nvmlTemperature_v1_t)), "temperature_v"),
    "nvmlDeviceGetMigMode": (_sig(_vp, _p(_u), _p(_u)), "mig_mode"),
    "nvmlDeviceGetMaxMigDeviceCount": (_sig(_vp, _p(_u)), "max_mig"),
    "nvmlDeviceGetMigDeviceHandleByIndex": (_sig(_vp, _u, _p(_dev)), "mig_handle"),
    "nvmlDeviceGetGpuInstanceId": (_sig(_vp, _p(_u)), "gpu_instance_id"),
    "nvmlDeviceGetComputeInstanceId": (_sig(_vp, _p(_u)), "compute_instance_id"),
    "nvmlDeviceGetAttributes_v2": (_sig(_vp, _p(pynvml.c_nvmlDeviceAttributes)), "attributes"),
    "nvmlDeviceGetComputeRunningProcesses_v3": (_sig(_vp, _p(_u), _p(pynvml.c_nvmlProcessInfo_v3_t)), "processes"),
    "nvmlDeviceGetComputeRunningProcesses_v2": (_sig(_vp, _p(_u), _p(pynvml.c_nvmlProcessInfo_v2_t)), "processes"),
    "nvmlDeviceGetMPSComputeRunningProcesses_v3": (
        _sig(_vp, _p(_u), _p(pynvml.c_nvmlProcessInfo_v3_t)),
        "mps_processes",
    ),
    "nvmlDeviceGetProcessUtilization": (
        _sig(_vp, _p(pynvml.c_nvmlProcessUtilizationSample_t), _p(_u), C.c_ulonglong),
        "process_utilization",
    ),
    "nvmlGpmQueryDeviceSupport": (_sig(_vp, _p(pynvml.c_nvmlGpmSupport_t)), "gpm_support"),
    "nvmlGpmSampleAlloc": (_sig(_p(pynvml.c_nvmlGpmSample_t)), "gpm_alloc"),
    "nvmlGpmSampleFree": (_sig(_vp), "gpm_free"),
    "nvmlGpmMigSampleGet": (_sig(_vp, _u, _vp), "gpm_mig_sample"),
    "nvmlGpmMetricsGet": (_sig(_p(pynvml.c_nvmlGpmMetricsGet_t)), "gpm_metrics"),
}
