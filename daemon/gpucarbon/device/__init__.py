"""Device stage: read GPUs through a backend (NVML or the simulation)."""

from gpucarbon.device.model import (
    BackendUnavailable,
    GpuBackend,
    GpuProcess,
    GpuReadError,
    GpuReading,
    MigInstance,
    ProcessSample,
)

__all__ = [
    "BackendUnavailable",
    "GpuBackend",
    "GpuProcess",
    "GpuReadError",
    "GpuReading",
    "MigInstance",
    "ProcessSample",
]
