"""From successive readings of one GPU to the energy of each interval (mJ)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from gpucarbon.device.model import GpuReading


@dataclass(frozen=True, slots=True)
class Interval:
    """Energy one GPU used between two readings."""

    dt_s: float
    energy_mj: int
    method: str  # COUNTER or POWER_INTEGRATION
    reset: bool = False  # the counter dropped: a driver reload
    gap: bool = False  # readings were missed before this one: holders unknown


# How an interval's energy was measured (the energy_source label of gpucarbon_gpu_info).
COUNTER = "counter"
POWER_INTEGRATION = "power_integration"


class EnergyMeter:
    """Turns one GPU's readings into intervals.

    The NVML counter counts mJ since the driver loaded; a drop means a reload,
    and then the new value itself is the energy since the reload (we cannot know
    what was used between our last read and the reload, so that is lost and the
    reset is counted). GPUs without a counter fall back to trapezoidal power
    integration; the fractional mJ is carried so nothing is lost to rounding.
    """

    def __init__(self) -> None:
        self._last: GpuReading | None = None
        self._carry_mj = 0.0
        self._missed = False
        self._restored_counter: int | None = None

    @property
    def counter_mj(self) -> int | None:
        """The energy counter of the last reading (None before one, or without a counter)."""
        return self._last.energy_mj if self._last else None

    def mark_missed(self) -> None:
        """A read failed: the next interval spans a gap."""
        self._missed = True

    def seed(self, counter_mj: int | None, missed: bool) -> None:
        """Restore a baseline counter (after a restart) so the next read yields
        the energy used while the daemon was down, flagged as a gap."""
        self._restored_counter = counter_mj
        self._missed = self._missed or missed

    def advance(self, reading: GpuReading) -> Interval | None:
        """The interval since the previous reading; None for the first one."""
        previous, self._last = self._last, reading
        if previous is None:
            return self._from_restored(reading)
        gap, self._missed = self._missed, False
        dt = max(0.0, reading.timestamp_s - previous.timestamp_s)
        if reading.energy_mj is not None and previous.energy_mj is not None:
            delta = reading.energy_mj - previous.energy_mj
            if delta < 0:
                return Interval(dt, reading.energy_mj, COUNTER, reset=True, gap=gap)
            return Interval(dt, delta, COUNTER, gap=gap)
        return Interval(dt, self._integrate(previous, reading, dt), POWER_INTEGRATION, gap=gap)

    def _from_restored(self, reading: GpuReading) -> Interval | None:
        restored, self._restored_counter = self._restored_counter, None
        if restored is None or reading.energy_mj is None:
            return None
        self._missed = False
        if reading.energy_mj < restored:
            return Interval(0.0, reading.energy_mj, COUNTER, reset=True, gap=True)
        return Interval(0.0, reading.energy_mj - restored, COUNTER, gap=True)

    def _integrate(self, previous: GpuReading, reading: GpuReading, dt: float) -> int:
        powers = [p for p in (previous.power_w, reading.power_w) if p is not None]
        if not powers:
            return 0
        self._carry_mj += sum(powers) / len(powers) * dt * 1000.0
        whole = int(self._carry_mj)
        self._carry_mj -= whole
        return whole


class EnergyMeters:
    """One EnergyMeter per GPU, and the energy counters a checkpoint keeps."""

    def __init__(self) -> None:
        self._meters: dict[str, EnergyMeter] = {}

    def meter(self, uuid: str) -> EnergyMeter:
        meter = self._meters.get(uuid)
        if meter is None:
            meter = self._meters[uuid] = EnergyMeter()
        return meter

    def seed(self, counters: Mapping[str, int]) -> None:
        """Baselines from a checkpoint: the next read books the energy used
        while the daemon was down as a gap (unattributed)."""
        for uuid, counter in counters.items():
            self.meter(uuid).seed(counter, missed=True)

    def counters(self) -> dict[str, int]:
        """The last energy counter read from each GPU that has one, mJ."""
        return {uuid: m.counter_mj for uuid, m in self._meters.items() if m.counter_mj is not None}
