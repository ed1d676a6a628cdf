"""The one fake GpuBackend (the Protocol device/reader.py reads through), for
tests that need GPUs the simulation does not play: counters driven by hand,
a read that hangs, a library missing or unloaded under the daemon.

Real NVML behaviour is tested through the real pynvml bindings over
fakes/libnvml.py (a fake libnvidia-ml at the C ABI); this fake sits one level
higher, at the seam."""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field

from gpucarbon.device.model import BackendUnavailable, GpuProcess, GpuReadError, GpuReading, ProcessSample

DRIVER_NOT_LOADED = "NVIDIA driver not loaded"
HANG_LIMIT_S = 10.0  # a hung read gives up after this, so a failing test cannot hang forever


@dataclass
class FakeGpu:
    uuid: str
    index: int = 0
    name: str = "G"
    counter_mj: int = 0  # the driver's energy counter
    mj_per_read: int = 0  # added to the counter before each read returns
    processes: tuple[GpuProcess, ...] = ()
    samples: tuple[ProcessSample, ...] = ()
    fail: tuple[str, str] | None = None  # (call, error): every read raises GpuReadError
    hang: threading.Event | None = None  # set: a read blocks until it is set

    def stuck(self) -> threading.Event:
        """Make reads hang until the returned event is set."""
        self.hang = threading.Event()
        return self.hang


@dataclass
class FakeGpuBackend:
    clock: object  # anything with monotonic()
    gpus: list[FakeGpu] = field(default_factory=list)
    available: bool = True
    opens: int = 0
    closes: int = 0
    calls: Counter[str] = field(default_factory=Counter)

    @classmethod
    def of(cls, clock: object, *gpus: FakeGpu, available: bool = True) -> FakeGpuBackend:
        return cls(clock, list(gpus), available)

    def gpu(self, uuid: str) -> FakeGpu:
        return next(g for g in self.gpus if g.uuid == uuid)

    def unload(self) -> None:
        """The driver goes away under the daemon: opening fails, reads say Uninitialized."""
        self.available = False
        for g in self.gpus:
            g.fail = ("nvmlDeviceGetName", "Uninitialized")

    def reload(self) -> None:
        """The driver is back; a reload restarts every energy counter."""
        self.available = True
        for g in self.gpus:
            g.fail, g.counter_mj = None, 0

    # --- GpuBackend ---------------------------------------------------------

    def open(self) -> None:
        if not self.available:
            raise BackendUnavailable(DRIVER_NOT_LOADED)
        self.opens += 1

    def close(self) -> None:
        self.closes += 1

    def list_gpus(self) -> tuple[str, ...]:
        return tuple(g.uuid for g in self.gpus)

    def read_gpu(self, uuid: str) -> GpuReading:
        self.calls[uuid] += 1
        gpu = self.gpu(uuid)
        if gpu.hang is not None:
            gpu.hang.wait(HANG_LIMIT_S)
        if gpu.fail is not None:
            raise GpuReadError(uuid, *gpu.fail)
        gpu.counter_mj += gpu.mj_per_read
        return GpuReading(
            uuid=uuid,
            index=gpu.index,
            name=gpu.name,
            timestamp_s=self.clock.monotonic(),
            energy_mj=gpu.counter_mj,
            processes=gpu.processes,
            samples=gpu.samples,
        )
