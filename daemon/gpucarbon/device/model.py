"""What the pipeline knows about a GPU: frozen dataclasses in SI units.

Every backend (NVML, the simulation) returns these types and nothing else, so the
stages above never see a vendor type. A field the GPU does not support is None.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from gpucarbon.errors import GpuCarbonError


@dataclass(frozen=True, slots=True)
class GpuProcess:
    """A compute process running on a GPU. `pid` is a host PID."""

    pid: int
    used_memory_bytes: int | None = None
    gpu_instance_id: int | None = None  # MIG GPU instance, None when MIG is off
    compute_instance_id: int | None = None
    mps_client: bool = False  # listed by NVML as a client of a CUDA MPS server


@dataclass(frozen=True, slots=True)
class ProcessSample:
    """A process's SM utilization since the previous read (one
    nvmlProcessUtilizationSample_t: NVML returns one per busy process per query).

    Only samples of processes in the reading's process list, with a
    utilization of at most 100 % and a timestamp not in the future, get here."""

    pid: int
    timestamp_us: int  # CPU (wall) clock when NVML took the sample, microseconds
    sm_util: float  # fraction of the period the SMs ran this process, 0..1


@dataclass(frozen=True, slots=True)
class MigInstance:
    """One MIG device (a GPU instance with its compute instance) on a board."""

    uuid: str
    gpu_instance_id: int
    sm_count: int | None = None  # streaming multiprocessors in the instance
    slice_count: int | None = None  # GPU-instance slices (1g = 1 ... 7g = 7)
    sm_util: float | None = None  # GPM SM utilization over the interval, 0..1; None without GPM
    processes: tuple[GpuProcess, ...] = ()


@dataclass(frozen=True, slots=True)
class GpuReading:
    """One read of one GPU. `timestamp_s` is in the backend's clock (seconds)."""

    uuid: str
    index: int
    name: str
    timestamp_s: float
    driver_version: str | None = None
    mig_mode: bool | None = None
    energy_mj: int | None = None  # counter since driver load, millijoules
    power_w: float | None = None
    power_limit_w: float | None = None
    utilization: float | None = None  # device busy fraction, 0..1
    memory_used_bytes: int | None = None
    memory_total_bytes: int | None = None
    temperature_c: float | None = None
    processes: tuple[GpuProcess, ...] = ()
    samples: tuple[ProcessSample, ...] = ()
    mig_devices: tuple[str, ...] = ()  # UUIDs of the MIG devices on this board
    mig_instances: tuple[MigInstance, ...] = ()  # with their processes, on a MIG board
    minor_number: int | None = None  # N of /dev/nvidiaN (Slurm's GPU index follows it)
    # What energy_mj and module_power_w cover: "gpu" (the board), or "module" on
    # Grace superchips (GH200/GB200), whose counter includes CPU and memory.
    energy_scope: str = "gpu"
    module_power_w: float | None = None  # instant module power, superchips only
    # (call, error) pairs for fields that failed for a reason other than "not
    # supported"; the reading is still usable, the poller counts them.
    errors: tuple[tuple[str, str], ...] = field(default=())


class BackendUnavailable(GpuCarbonError):
    """The backend as a whole cannot be used (no driver, library missing)."""


class GpuReadError(GpuCarbonError):
    """One GPU could not be read (lost, timed out); other GPUs are unaffected."""

    def __init__(self, uuid: str, call: str, error: str) -> None:
        super().__init__(f"{uuid}: {call}: {error}")
        self.uuid = uuid
        self.call = call
        self.error = error


class GpuBackend(Protocol):
    """The seam below which vendor libraries live.

    Methods block (NVML is a C library); the poller calls them in worker threads.
    """

    def open(self) -> None:
        """Initialise; raises BackendUnavailable with a one-line reason."""

    def list_gpus(self) -> tuple[str, ...]:
        """UUIDs of the GPUs present, in index order."""

    def read_gpu(self, uuid: str) -> GpuReading:
        """Read one GPU; raises GpuReadError for this GPU alone."""

    def close(self) -> None:
        """Release the library; open() may be called again later."""
