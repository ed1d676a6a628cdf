"""Slurm job metadata through a fake `scontrol` executable."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest

from gpucarbon.clock import ManualClock
from gpucarbon.identity.slurm import SlurmSource, parse_job_json, parse_job_text
from gpucarbon.identity.teams import TeamRules

# Golden: `scontrol show job --json 4242` (Slurm 23.11, data_parser v0.0.40), trimmed.
GOLDEN_JSON = {
    "jobs": [{
        "account": "physics", "job_id": 4242, "job_state": ["RUNNING"], "name": "train",
        "partition": "gpu", "user_id": 1000, "user_name": "alice", "group_id": 1000,
        "gres_detail": ["gpu:h100:2(IDX:0-1)"], "tres_alloc_str": "cpu=8,mem=64G,node=1,gres/gpu=2",
    }],
    "meta": {"plugin": {"type": "openapi/slurmctld", "data_parser": "data_parser/v0.0.40"}},
    "errors": [], "warnings": [],
}
# Golden: `scontrol show job -o 4243` (Slurm 20.11, no --json), trimmed.
GOLDEN_TEXT = ("JobId=4243 JobName=sweep UserId=bob(1001) GroupId=bob(1001) MCS_label=N/A "
               "Priority=4294901 Nice=0 Account=vision QOS=normal JobState=RUNNING Reason=None "
               "Command=/home/bob/run.sh --tag Account=fake WorkDir=/home/bob\n")

# The fake reads its behaviour from a JSON file next to it and logs every call.
FAKE_SCONTROL = """#!{python}
import json, sys, time, pathlib
here = pathlib.Path(__file__).parent
spec = json.loads((here / "spec.json").read_text())
with open(here / "calls.log", "a") as log:
    log.write(" ".join(sys.argv[1:]) + "\\n")
time.sleep(spec.get("sleep", 0))
json_mode = "--json" in sys.argv
job_id = sys.argv[-1]
if json_mode and spec.get("no_json"):
    print("scontrol: unrecognized option '--json'", file=sys.stderr); sys.exit(1)
if job_id not in spec["jobs"]:
    print(f"slurm_load_jobs error: Invalid job id specified", file=sys.stderr); sys.exit(1)
if spec.get("fail"):
    print("slurm_load_jobs error: Unable to contact slurm controller", file=sys.stderr); sys.exit(1)
print(spec["jobs"][job_id]["json" if json_mode else "text"])
"""


class FakeScontrol:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.path = directory / "scontrol"
        self.path.write_text(FAKE_SCONTROL.format(python=sys.executable))
        self.path.chmod(self.path.stat().st_mode | stat.S_IXUSR)
        self.spec: dict = {"jobs": {
            "4242": {"json": json.dumps(GOLDEN_JSON), "text": GOLDEN_TEXT.replace("4243", "4242").replace("vision", "physics")},
            "4243": {"json": json.dumps({"jobs": []}), "text": GOLDEN_TEXT},
        }}
        self.save()

    def save(self) -> None:
        (self.dir / "spec.json").write_text(json.dumps(self.spec))

    def calls(self) -> list[str]:
        log = self.dir / "calls.log"
        return log.read_text().splitlines() if log.exists() else []


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
    source = SlurmSource(teams=TeamRules(), clock=ManualClock(), scontrol="scontrol-not-installed-here",
                         which=lambda name: None)
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
    for _ in range(200):
        if source.job("4242").resolved:
            break
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


def test_fake_is_executable(scontrol):
    assert os.access(scontrol.path, os.X_OK)
