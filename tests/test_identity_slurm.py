"""Slurm job metadata through a fake `scontrol` executable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fakes.slurm import GOLDEN_JSON, GOLDEN_TEXT, FakeScontrol

from gpucarbon.clock import ManualClock
from gpucarbon.identity.slurm import (
    EMPTY_ANSWER,
    SlurmAllocations,
    SlurmSource,
    expand_hostlist,
    gpu_indices,
    local_job_ids,
    parse_job_json,
    parse_job_text,
)
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
    assert scontrol.calls() == ["-d show job --json 4242"]


async def test_old_scontrol_without_json_falls_back_to_text_once(scontrol):
    scontrol.spec["no_json"] = True
    scontrol.save()
    source = make_source(scontrol)
    assert (await source.lookup("4243")).team == "vision"
    assert (await source.lookup("4242")).team == "physics"
    assert scontrol.calls() == ["-d show job --json 4243", "-d -o show job 4243", "-d -o show job 4242"]


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
    assert scontrol.calls() == ["-d show job --json 4242"]  # polling job() queued no second lookup


def test_malicious_account_is_sanitised(scontrol):
    hostile = {"jobs": [{"job_id": 5, "account": 'evil"}\n' + "x" * 10_000, "user_name": "u\x00"}]}
    info = parse_job_json(json.dumps(hostile), "5")
    meta = make_source(scontrol)._meta(info, resolved=True)
    assert "\n" not in meta.team and len(meta.team) <= 128 and meta.team.startswith('evil"}')
    assert meta.user == "u"


# -- real scontrol outputs (tests/fixtures/slurm/README.md cites each) --------------

FIXTURES = Path(__file__).parent / "fixtures" / "slurm"


@pytest.mark.parametrize(
    "name, job_id, expected",
    [
        # Slurm 18.08 era: GRES_IDX=gpu(IDX:0,2-3,5)
        (
            "scontrol-d-job-153291.txt",
            "153291",
            ("oabend", "user3", "medium", "name3", "RUNNING", {"node-06": (0, 2, 3, 5)}),
        ),
        # Slurm 19.05: GRES=gpu(IDX:5)
        (
            "scontrol-d-job-2423559.txt",
            "2423559",
            ("account4", "user4", "short", "tsn", "RUNNING", {"cortex-08": (5,)}),
        ),
        # Slurm 24.x: another GRES first, then gpu:1(IDX:3)
        (
            "scontrol-d-job-25686416.txt",
            "25686416",
            ("account6", "user6", "interactive", "test", "RUNNING", {"node-005": (3,)}),
        ),
        # typed GPU: GRES=gpu:rtx2080:1(IDX:1),gg:g0(CNT:1)
        (
            "scontrol-d-job-25687666.txt",
            "25687666",
            ("system", "user6", "interactive", "test", "RUNNING", {"node-001": (1,)}),
        ),
        # three nodes, no GPU
        ("scontrol-d-job-1.txt", "1", ("account1", "user1", "long", "name1", "RUNNING", {})),
    ],
)
def test_real_scontrol_detail_text_gives_fields_and_gpu_indices_per_node(name, job_id, expected):
    text = (FIXTURES / name).read_text()
    info = parse_job_text(text, job_id)
    assert (info.account, info.user, info.partition, info.name, info.state, dict(info.gpus_by_node)) == expected
    one_line = " ".join(line.strip() for line in text.splitlines())  # the -o form of the same record
    assert parse_job_text(one_line, job_id) == info


def test_real_slurm_23_02_json_gives_fields_and_gres_detail():
    info = parse_job_json((FIXTURES / "squeue-json-23.02.6-job-1618871.json").read_text(), "1618871")
    assert (info.account, info.user, info.partition, info.name, info.state) == (
        "dmn@v100",
        "www26kf",
        "gpu_p2",
        "model_pretrain",
        "RUNNING",
    )
    assert dict(info.gpus_by_node) == {"data-center-ia830": tuple(range(8))}


def test_json_state_list_of_data_parser_0_0_40_and_gres_detail():
    info = parse_job_json(json.dumps(GOLDEN_JSON), "4242")
    assert (info.state, info.partition, info.name, dict(info.gpus_by_node)) == ("RUNNING", "gpu", "train", {})
    multi = dict(GOLDEN_JSON["jobs"][0], nodes="gpu[01-02]", gres_detail=["gpu:a100:4(IDX:0-3)", "gpu:a100:2(IDX:1,3)"])
    info = parse_job_json(json.dumps({"jobs": [multi]}), "4242")
    assert dict(info.gpus_by_node) == {"gpu01": (0, 1, 2, 3), "gpu02": (1, 3)}


@pytest.mark.parametrize(
    "hostlist, names",
    [
        ("node-[63-65]", ["node-63", "node-64", "node-65"]),
        ("gpu[01-02,07],cpu1", ["gpu01", "gpu02", "gpu07", "cpu1"]),
        ("r[1-2]n[1-2]", ["r1n1", "r1n2", "r2n1", "r2n2"]),
        ("data-center-ia830", ["data-center-ia830"]),
    ],
)
def test_host_lists_expand(hostlist, names):
    assert expand_hostlist(hostlist) == names


def test_gpu_indices_take_only_gpu_entries_and_reject_absurd_ranges():
    assert gpu_indices("gpu:a100:2(IDX:0,2),gpu:v100:1(IDX:4),mps:10") == (0, 2, 4)
    assert gpu_indices("gg:g0(CNT:1)") == () and gpu_indices("") == ()
    with pytest.raises(ValueError):
        gpu_indices("gpu:1(IDX:0-99999999)")


async def test_empty_jobs_answer_is_a_source_error_not_a_finished_job(scontrol):
    """Slurm 23.11-25.05: exit 0 with "jobs": [] when the controller has
    nothing loaded. The job's processes still run here: an error, retried."""
    clock = ManualClock()
    source = make_source(scontrol, clock, retry_after_s=60.0)
    assert await source.lookup("4243") is None  # the fake answers {"jobs": []}
    assert not source.health.up
    assert source.health.snapshot().errors_total == {EMPTY_ANSWER: 1}
    assert source.info("4243") is None  # nothing cached
    scontrol.spec["jobs"]["4243"]["json"] = json.dumps(
        {"jobs": [dict(GOLDEN_JSON["jobs"][0], job_id=4243, account="vision")]}
    )
    scontrol.save()
    clock.advance(61.0)
    assert (await source.lookup("4243")).account == "vision"


async def test_a_job_scontrol_does_not_know_is_asked_again_later(scontrol):
    clock = ManualClock()
    source = make_source(scontrol, clock, retry_after_s=60.0)
    await source.lookup("777")  # "Invalid job id": finished and purged, or not there yet
    assert source.info("777").found is False
    assert source._queue.empty()  # noqa: SLF001 - not due yet
    clock.advance(61.0)
    source.job("777")
    assert not source._queue.empty()  # noqa: SLF001 - the miss expired: asked again


# -- allocations: a job holding idle GPUs pays for them ------------------------------


def test_local_job_ids_come_from_slurm_cgroups(tmp_path):
    (tmp_path / "system.slice/slurmstepd.scope/job_4242/step_0").mkdir(parents=True)
    (tmp_path / "system.slice/slurmstepd.scope/job_17").mkdir(parents=True)
    (tmp_path / "devices/slurm/uid_1000/job_99/step_batch").mkdir(parents=True)
    (tmp_path / "system.slice/slurmstepd.scope/system").mkdir(parents=True)
    assert local_job_ids(tmp_path) == ("17", "99", "4242")


async def test_allocations_map_slurm_indices_to_gpus_by_minor_number(scontrol):
    text = (FIXTURES / "scontrol-d-job-153291.txt").read_text()
    scontrol.spec["jobs"]["153291"] = {"json": "not json", "text": text}
    scontrol.save()
    source = make_source(scontrol)
    # NVML's PCI order differs from /dev/nvidiaN: the minor number decides
    by_minor = {0: "GPU-m0", 1: "GPU-m1", 2: "GPU-m2", 3: "GPU-m3", 5: "GPU-m5"}
    allocations = SlurmAllocations(source, "node-06", lambda: by_minor, job_ids=lambda: ["153291"])
    assert allocations.allocations() == {}  # not looked up yet: nothing guessed
    await source.lookup("153291")
    held = allocations.allocations()
    assert sorted(held) == ["GPU-m0", "GPU-m2", "GPU-m3", "GPU-m5"]
    (consumer,) = held["GPU-m2"]
    assert (consumer.key, consumer.workload) == ("slurm/153291", "slurm/153291")


def test_the_daemon_on_nvml_with_scontrol_takes_slurm_allocations(scontrol):
    from gpucarbon.app import RunOptions, build_daemon
    from gpucarbon.clock import ManualClock as Clock
    from gpucarbon.config import parse_config

    config = parse_config(f"slurm: {{scontrol: {scontrol.path}, node: n1}}")

    class NoGpus:  # a GpuBackend that is not the simulation: the NVML path
        def open(self): ...
        def list_gpus(self):
            return ()

        def read_gpu(self, uuid):
            raise AssertionError(uuid)

        def close(self): ...

    daemon = build_daemon(config, RunOptions(), backend=NoGpus(), base_clock=Clock())
    held = daemon.poller._accountant._allocations  # noqa: SLF001
    assert isinstance(held, SlurmAllocations) and held._node == "n1"  # noqa: SLF001
