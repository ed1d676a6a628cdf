"""Slurm job metadata through a fake `scontrol` executable."""

from __future__ import annotations

import json

import pytest
from fakes.slurm import GOLDEN_JSON, GOLDEN_TEXT, FakeScontrol

from gpucarbon.clock import ManualClock
from gpucarbon.identity.slurm import SlurmSource, parse_job_json, parse_job_text
from gpucarbon.teams import TeamRules


@pytest.fixture
def scontrol(tmp_path):
    return FakeScontrol(tmp_path)


def make_source(scontrol: FakeScontrol, clock: ManualClock | None = None, **kwargs) -> SlurmSource:
    teams = kwargs.pop("teams", TeamRules(users={"carol": "platform"}))
    return SlurmSource(teams=teams, clock=clock or ManualClock(), scontrol=str(scontrol.path), **kwargs)


def test_golden_json_gives_account_and_user():
    info = parse_job_json(json.dumps(GOLDEN_JSON), "4242")
    assert (info.account, info.user) == ("physics", "alice")
    assert parse_job_json(json.dumps(GOLDEN_JSON), "9") is None


def test_golden_text_takes_the_first_account_field():
    info = parse_job_text(GOLDEN_TEXT, "4243")
    assert (info.account, info.user) == ("vision", "bob")  # not the "Account=fake" in Command
    assert parse_job_text(GOLDEN_TEXT, "424") is None


def test_json_that_is_not_scontrols_is_a_value_error():
    with pytest.raises(ValueError):
        parse_job_json('{"error": "nope"}', "1")


async def test_job_is_provisional_then_resolved_from_the_account(scontrol):
    source = make_source(scontrol)
    first = source.job("4242")
    assert (first.workload, first.team, first.resolved) == ("slurm/4242", "unassigned", False)
    meta = await source.lookup("4242")
    assert (meta.workload, meta.team, meta.account, meta.user) == ("slurm/4242", "physics", "physics", "alice")
    assert source.job("4242").team == "physics"
    assert source.health.up


async def test_team_is_none_until_the_account_is_known(scontrol):
    source = make_source(scontrol)
    assert source.team("4242") is None  # queued, not waited for
    await source.lookup("4242")
    assert source.team("4242") == "physics"
    await source.lookup("777")
    assert source.team("777") is None  # purged job: no account, the resolver uses the user


async def test_lookups_are_cached_per_job(scontrol):
    source = make_source(scontrol)
    await source.lookup("4242")
    source.job("4242")
    source.job("4242")
    assert scontrol.calls() == ["show job --json 4242"]


async def test_old_scontrol_without_json_falls_back_to_text_once(scontrol):
    scontrol.spec["no_json"] = True
    scontrol.save()
    source = make_source(scontrol)
    assert (await source.lookup("4243")).team == "vision"
    assert (await source.lookup("4242")).team == "physics"
    assert scontrol.calls() == ["show job --json 4243", "show job -o 4243", "show job -o 4242"]


async def test_purged_job_keeps_the_callers_user_team(scontrol):
    source = make_source(scontrol)
    meta = await source.lookup("777")  # "Invalid job id": finished and purged
    assert meta is not None and meta.account == ""
    assert source.job("777", user="carol").team == "platform"  # user -> team map
    assert source.job("777", user="dave").team == "dave"  # otherwise the user
    assert source.health.errors_total("command_failed") == 0


async def test_controller_down_is_counted_and_retried_later(scontrol):
    scontrol.spec["fail"] = True
    scontrol.save()
    clock = ManualClock()
    source = make_source(scontrol, clock, retry_after_s=60)
    assert await source.lookup("4242") is None
    assert source.health.errors_total("command_failed") == 1 and not source.health.up
    source.job("4242")
    assert source._queue.qsize() == 0  # not due yet: no lookup storm while slurmctld is down
    clock.advance(61)
    source.job("4242")
    assert source._queue.qsize() == 1


async def test_hung_scontrol_times_out(scontrol):
    scontrol.spec["sleep"] = 5
    scontrol.save()
    source = make_source(scontrol, timeout_s=0.3)
    assert await source.lookup("4242") is None
    assert source.health.errors_total("timeout") == 1


def test_no_scontrol_means_source_off_and_silent(caplog):
    source = SlurmSource(
        teams=TeamRules(), clock=ManualClock(), scontrol="scontrol-not-installed-here", which=lambda name: None
    )
    assert not source.enabled
    meta = source.job("4242", user="alice")
    assert (meta.workload, meta.team) == ("slurm/4242", "alice")
    assert source._queue.qsize() == 0
    assert source.health.snapshot().errors_total == {}


@pytest.mark.parametrize("job_id", ["", "12;rm -rf /", "-1", "1" * 13, "../4242"])
async def test_job_ids_that_are_not_numbers_never_reach_the_command(scontrol, job_id):
    source = make_source(scontrol)
    source.job(job_id)
    assert await source.lookup(job_id) is None
    assert scontrol.calls() == []


async def test_run_answers_queued_lookups(scontrol):
    import asyncio

    source = make_source(scontrol)
    source.job("4242")
    task = asyncio.create_task(source.run())
    deadline = asyncio.get_running_loop().time() + 20  # a subprocess start on a loaded machine
    while not source.job("4242").resolved and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert source.job("4242").team == "physics"
    assert scontrol.calls() == ["show job --json 4242"]  # polling job() queued no second lookup


def test_malicious_account_is_sanitised(scontrol):
    hostile = {"jobs": [{"job_id": 5, "account": 'evil"}\n' + "x" * 10_000, "user_name": "u\x00"}]}
    info = parse_job_json(json.dumps(hostile), "5")
    meta = make_source(scontrol)._meta(info, resolved=True)
    assert "\n" not in meta.team and len(meta.team) <= 128 and meta.team.startswith('evil"}')
    assert meta.user == "u"
