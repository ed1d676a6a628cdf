"""Clock jumps: an operator (or a bad NTP step) sets the wall clock backwards or
forwards. Durations, energy intervals, retention and checkpoint scheduling run
on the monotonic clock, so nothing is lost, doubled or negative; only the
timestamps meant for humans follow the wall clock."""

from __future__ import annotations

import json

import pytest
from pipeline import assert_conserved, make_poller
from test_durability import counter_backend, daemon, procfs_with_boot_id

from gpucarbon.clock import ManualClock
from gpucarbon.simulation import SimulatedNode
from gpucarbon.simulation.scenario import parse_scenario

# One 100 W idle GPU held by a pod that runs nothing: it pays exactly the idle
# draw, so every joule is predictable from monotonic time alone. A second GPU is
# unallocated: its energy is all unattributed.
SCENARIO = """
gpus: [{model: G, count: 2, idle_watts: 100, max_watts: 400}]
workloads: [{namespace: ns, pod: nb, container: c, workload: Pod/nb, team: t, gpus: [0], allocated_only: true}]
"""
STEP_S = 10.0
DAY_S = 86_400.0


async def poll_steps(poller, clock, steps: int) -> None:
    for _ in range(steps):
        clock.advance(STEP_S)
        await poller.poll()


@pytest.mark.parametrize("jump_s", [-DAY_S, -1.0, +DAY_S], ids=["wall-back-a-day", "wall-back-1s", "wall-ahead-a-day"])
async def test_wall_clock_jump_loses_no_energy_and_gives_no_negative_interval(jump_s: float) -> None:
    clock = ManualClock()
    sim = SimulatedNode.build(parse_scenario(SCENARIO), clock)
    poller = make_poller(sim, clock, idle_watts=100.0)
    held_gpu, free_gpu = sim.gpus.list_gpus()
    await poller.poll()
    await poll_steps(poller, clock, 3)
    clock.set_wall(clock.wall() + jump_s)
    await poll_steps(poller, clock, 3)

    elapsed_s = 6 * STEP_S  # monotonic time between the first and the last poll
    (entry,) = poller.ledger.workloads.values()
    assert entry.held_s == elapsed_s, "held time follows the monotonic clock"
    assert entry.energy_mj == 100 * elapsed_s * 1000, "every idle joule booked once"
    assert poller.ledger.gpus[free_gpu].unattributed_mj == 100 * elapsed_s * 1000
    assert poller.ledger.gpus[held_gpu].resets == 0
    assert all(w.power_w == pytest.approx(100.0) for w in poller.snapshot.workloads), "no 0 W or negative interval"
    assert_conserved(poller)


async def test_last_poll_timestamp_follows_the_wall_clock_it_is_for() -> None:
    """gpucarbon_last_poll_timestamp_seconds is for humans: it shows the wall
    clock as set, backwards included; nothing computes durations from it."""
    clock = ManualClock()
    poller = make_poller(SimulatedNode.build(parse_scenario(SCENARIO), clock), clock, idle_watts=100.0)
    await poll_steps(poller, clock, 2)
    before = poller.snapshot.poll.last_poll_wall
    clock.set_wall(before - DAY_S)
    await poll_steps(poller, clock, 1)
    assert poller.snapshot.poll.last_poll_wall == pytest.approx(before - DAY_S + STEP_S)
    assert poller.snapshot.poll.count == 3


async def test_finished_series_expire_after_monotonic_retention_not_wall_time() -> None:
    clock = ManualClock()
    sim = SimulatedNode.build(
        parse_scenario("""
gpus: [{model: G, idle_watts: 100}]
workloads: [{workload: Job/short, team: t, gpus: [0], start: 0, end: 25, sm_util: 0.5}]
"""),
        clock,
    )
    poller = make_poller(sim, clock, retention=60.0)
    await poller.poll()
    await poll_steps(poller, clock, 3)  # t=30: finished, last held the GPU at t=20
    assert len(poller.ledger.workloads) == 1
    clock.set_wall(clock.wall() + DAY_S)  # a day "passes" on the wall only
    await poll_steps(poller, clock, 4)  # t=70: 50 s after its last interval
    assert len(poller.ledger.workloads) == 1, "a wall jump does not expire a series early"
    await poll_steps(poller, clock, 2)  # t=90: 70 s > 60 s retention
    assert poller.ledger.workloads == {}, "expired after the monotonic retention"
    assert_conserved(poller)


def saved_at(tmp_path) -> float:
    return json.loads((tmp_path / "state" / "state.json").read_text())["saved_at"]


async def test_checkpoint_schedule_runs_on_the_monotonic_clock(tmp_path) -> None:
    clock = ManualClock()
    backend = counter_backend(clock)
    d = daemon(tmp_path, backend, clock, procfs_with_boot_id(tmp_path))  # state.interval: 30 s
    await d.poller.poll()
    await d.checkpointer.maybe_save()
    first = saved_at(tmp_path)

    clock.set_wall(clock.wall() + DAY_S)
    await d.checkpointer.maybe_save()
    assert saved_at(tmp_path) == first, "a wall jump ahead does not trigger a save"

    clock.set_wall(first - DAY_S)
    clock.advance(31.0)
    await d.checkpointer.maybe_save()
    assert saved_at(tmp_path) == first - DAY_S + 31.0, "a wall jump back does not stall saving"
    assert d.checkpointer.save_failures == 0
