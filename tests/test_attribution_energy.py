"""Energy per interval from successive readings: counter deltas, resets, gaps."""

from gpucarbon.attribution.energy import COUNTER, POWER_INTEGRATION, EnergyMeter
from gpucarbon.device.model import GpuReading


def reading(t, energy=None, power=None):
    return GpuReading(uuid="GPU-a", index=0, name="X", timestamp_s=t, energy_mj=energy, power_w=power)


def test_first_reading_sets_the_baseline_only():
    meter = EnergyMeter()
    assert meter.advance(reading(0, 1000)) is None
    interval = meter.advance(reading(2, 4000))
    assert (interval.dt_s, interval.energy_mj, interval.method) == (2, 3000, COUNTER)


def test_counter_drop_is_a_reset_never_negative():
    meter = EnergyMeter()
    meter.advance(reading(0, 10_000))
    interval = meter.advance(reading(1, 300))
    assert interval.reset and interval.energy_mj == 300


def test_missed_read_flags_the_next_interval_as_a_gap():
    meter = EnergyMeter()
    meter.advance(reading(0, 0))
    meter.mark_missed()
    interval = meter.advance(reading(5, 5000))
    assert interval.gap and interval.energy_mj == 5000
    assert not meter.advance(reading(6, 6000)).gap


def test_power_integration_carries_fractions_so_nothing_is_lost():
    meter = EnergyMeter()
    meter.advance(reading(0, power=0.0015))  # 1.5 mW
    total = 0
    for t in range(1, 1001):
        interval = meter.advance(reading(t, power=0.0015))
        assert interval.method == POWER_INTEGRATION
        total += interval.energy_mj
    assert total == 1500  # 1.5 mW * 1000 s = 1.5 J


def test_restored_baseline_books_downtime_energy_as_gap():
    meter = EnergyMeter()
    meter.seed(5_000, missed=True)
    interval = meter.advance(reading(0, 12_000))
    assert interval.gap and interval.energy_mj == 7_000


def test_restored_baseline_after_driver_reload_counts_a_reset():
    meter = EnergyMeter()
    meter.seed(50_000, missed=True)
    interval = meter.advance(reading(0, 2_000))
    assert interval.reset and interval.gap and interval.energy_mj == 2_000
