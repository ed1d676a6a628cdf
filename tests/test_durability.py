"""Durable counters: restart continuity, downtime energy, bad checkpoints, disk full."""

import errno
import json

import pytest
from fakes.gpu import FakeGpu, FakeGpuBackend

from gpucarbon.app import RunOptions, build_daemon
from gpucarbon.config import Config, StateConfig
from gpucarbon.device.model import GpuProcess, ProcessSample

BOOT_ID = "11111111-2222-3333-4444-555555555555"


def counter_backend(clock):
    """One GPU whose energy counter lives outside the daemon, as the driver's does."""
    return FakeGpuBackend.of(
        clock,
        FakeGpu("GPU-dur", counter_mj=1_000_000, processes=(GpuProcess(4242),), samples=(ProcessSample(4242, 1, 0.5),)),
    )


def procfs_with_boot_id(tmp_path, boot_id=BOOT_ID):
    root = tmp_path / "proc"
    (root / "sys/kernel/random").mkdir(parents=True, exist_ok=True)
    (root / "sys/kernel/random/boot_id").write_text(boot_id + "\n")
    return str(root)


def daemon(tmp_path, backend, clock, procfs):
    config = Config(state=StateConfig(dir=str(tmp_path / "state"), interval=30.0))
    return build_daemon(config, RunOptions(procfs=procfs), backend=backend, base_clock=clock)


async def run_polls(d, backend, clock, n, mj_per_poll=10_000):
    for _ in range(n):
        await d.poller.poll()
        backend.gpus[0].counter_mj += mj_per_poll
        clock.advance(1.0)


def gpu(d):
    (view,) = d.poller.snapshot.gpus
    return view


async def test_restart_continues_counters_and_books_downtime_as_unattributed(tmp_path, clock):
    backend = counter_backend(clock)
    procfs = procfs_with_boot_id(tmp_path)
    first = daemon(tmp_path, backend, clock, procfs)
    await run_polls(first, backend, clock, 5)
    await first.poller.poll()
    await first.checkpointer.save()
    before = gpu(first)
    team_before = {t.team: t.energy_j for t in first.poller.snapshot.teams}
    assert before.energy_j == 50.0 and before.unattributed_j == 0.0

    backend.gpus[0].counter_mj += 77_000  # the GPU kept working while the daemon was down
    second = daemon(tmp_path, backend, clock, procfs)
    await second.poller.poll()
    after = gpu(second)
    assert after.energy_j == 50.0 + 77.0, "counter continues, downtime energy included"
    assert after.unattributed_j == 77.0, "nobody is known to have held the GPU meanwhile"
    assert after.resets == 0
    assert {t.team: t.energy_j for t in second.poller.snapshot.teams} == team_before
    workloads = sum(w.energy_j for w in second.poller.snapshot.workloads)
    assert workloads + after.unattributed_j + after.retired_j == after.energy_j


async def test_new_boot_drops_the_baseline_and_counts_a_reset(tmp_path, clock):
    backend = counter_backend(clock)
    first = daemon(tmp_path, backend, clock, procfs_with_boot_id(tmp_path))
    await run_polls(first, backend, clock, 3)
    await first.checkpointer.save()
    saved = gpu(first).energy_j
    backend.gpus[0].counter_mj = 5_000_000  # after a reboot the counter means something else
    second = daemon(tmp_path, backend, clock, procfs_with_boot_id(tmp_path, "another-boot"))
    await second.poller.poll()
    assert gpu(second).resets == 1
    assert gpu(second).energy_j == saved, "no energy invented from an unrelated counter"


async def test_corrupt_checkpoint_is_set_aside_counted_and_daemon_starts_fresh(tmp_path, clock):
    state = tmp_path / "state"
    state.mkdir()
    (state / "state.json").write_text('{"format": "gpucarbon-state", "version": 1, "payl')
    d = daemon(tmp_path, counter_backend(clock), clock, procfs_with_boot_id(tmp_path))
    assert d.checkpointer.restore_failures == 1
    assert list(state.glob("state.json.corrupt-*"))
    snap = await d.poller.poll()
    assert snap.state.restore_failures == 1


async def test_wrong_shaped_payload_is_rejected_without_partial_restore(tmp_path, clock):
    state = tmp_path / "state"
    state.mkdir()
    payload = {"ledger": {"gpus": {"GPU-dur": {"energy_mj": -5}}, "workloads": [], "teams": {}}}
    (state / "state.json").write_text(
        json.dumps({"format": "gpucarbon-state", "version": 1, "saved_at": 1.0, "payload": payload})
    )
    d = daemon(tmp_path, counter_backend(clock), clock, procfs_with_boot_id(tmp_path))
    assert d.checkpointer.restore_failures == 1
    assert d.ledger.gpus == {}


async def test_disk_full_while_saving_is_counted_and_polling_goes_on(tmp_path, clock):
    backend = counter_backend(clock)
    d = daemon(tmp_path, backend, clock, procfs_with_boot_id(tmp_path))

    def full(*_args):
        raise OSError(errno.ENOSPC, "No space left on device")

    d.checkpointer._store._write = full  # the store's injectable writer
    await run_polls(d, backend, clock, 2)
    await d.checkpointer.save()
    assert d.checkpointer.save_failures == 1
    snap = await d.poller.poll()
    assert snap.state.save_failures == 1
    assert gpu(d).energy_j == 20.0


async def test_embodied_override_amortises_over_held_time(tmp_path, clock):
    """carbon.embodied.kg_co2e_by_model gives a model without a bundled figure one."""
    from gpucarbon.config import parse_config

    config = parse_config("carbon: {embodied: {enabled: true, lifetime: 4, kg_co2e_by_model: {G: 150}}}")
    d = build_daemon(
        config, RunOptions(procfs=procfs_with_boot_id(tmp_path)), backend=counter_backend(clock), base_clock=clock
    )
    await d.poller.poll()
    clock.advance(3600.0)
    await d.poller.poll()
    (workload,) = d.poller.snapshot.workloads
    expected = 150_000.0 / (4 * 365.25 * 86400) * 3600.0  # g per GPU-hour held
    assert workload.embodied_grams == pytest.approx(expected, rel=1e-3)
    assert d.poller.snapshot.teams[0].embodied_grams == pytest.approx(expected, rel=1e-3)
