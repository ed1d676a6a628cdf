"""When the scheduler says a run ended: pod objects kept by the Kubernetes
source, scontrol output for Slurm jobs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gpucarbon.receipts.kubernetes import KubernetesRunStatus, top_owner
from gpucarbon.receipts.slurm import SlurmRunStatus, parse_job_end
from gpucarbon.receipts.tracker import STILL_RUNNING, RunRef

PODS = Path(__file__).parent / "fixtures" / "pods"


def fixture(name: str) -> dict:
    return json.loads((PODS / f"{name}.json").read_text())["pod"]


class Pods:
    def __init__(self, objects: dict[str, tuple[dict, bool]]) -> None:
        self.objects = objects

    def pod_object(self, uid):
        return self.objects.get(uid)

    def pod_object_by_name(self, namespace, name):
        return self.objects.get(f"{namespace}/{name}")


def test_pod_facts_from_the_kept_object():
    status = KubernetesRunStatus(
        Pods(
            {
                "uid-ok": (fixture("succeeded_job"), False),
                "uid-run": (fixture("deleted_while_running"), False),
                "uid-gone": (fixture("deleted_while_running"), True),
            }
        )
    )
    facts = status.facts(RunRef("pod", "uid-ok", "default", "pi-example", "Job/pi", ("pi",)))
    assert facts.outcome == "succeeded" and facts.exit_code == 0 and facts.fingerprint is not None
    assert facts.owner is not None and (facts.owner.kind, facts.owner.api_version) == ("Job", "batch/v1")
    assert status.facts(RunRef("pod", "uid-run")) is STILL_RUNNING
    assert status.facts(RunRef("pod", "uid-gone")).outcome == "deleted"
    assert status.facts(RunRef("pod", "uid-unknown")) is None
    assert status.facts(RunRef("slurm", "42")) is None


def test_top_owner_prefers_the_pods_own_reference():
    refs = [{"apiVersion": "batch/v1", "kind": "Job", "name": "train", "uid": "u-job", "controller": True}]
    assert top_owner(refs, "Job/train").uid == "u-job"
    assert top_owner(refs, "PyTorchJob/llama").api_version == "kubeflow.org/v1"
    assert top_owner(refs, "Pod/x") is None and top_owner(refs, "Widget/x") is None


# `scontrol show job --json` for a finished job, Slurm 23.11 (data_parser v0.0.40):
# job_state is a list, exit_code a process_exit_code_verbose object. Trimmed.
JSON_DONE = json.dumps(
    {
        "jobs": [
            {
                "account": "physics",
                "job_id": 4242,
                "job_state": ["FAILED"],
                "name": "train",
                "user_name": "alice",
                "command": "/home/alice/train.sh",
                "current_working_directory": "/home/alice/run",
                "exit_code": {
                    "status": ["NONZERO_EXIT"],
                    "return_code": {"set": True, "infinite": False, "number": 3},
                    "signal": {"id": {"set": False, "infinite": False, "number": 0}, "name": ""},
                },
            }
        ],
        "meta": {},
        "errors": [],
        "warnings": [],
    }
)
# `scontrol show job -o` (Slurm 20.11), the fields as scontrol prints them.
TEXT_DONE = (
    "JobId=4243 JobName=sweep UserId=bob(1001) GroupId=bob(1001) Priority=4294901 Nice=0 "
    "Account=vision QOS=normal JobState=TIMEOUT Reason=TimeLimit Dependency=(null) ExitCode=0:15 "
    "Command=/home/bob/run.sh WorkDir=/home/bob\n"
)


def test_parse_finished_jobs():
    done = parse_job_end(JSON_DONE, True, "4242")
    assert (done.outcome, done.reason, done.exit_code, done.user, done.account) == (
        "failed",
        "FAILED",
        3,
        "alice",
        "physics",
    )
    timeout = parse_job_end(TEXT_DONE, False, "4243")
    assert (timeout.outcome, timeout.exit_code, timeout.user) == ("timeout", 0, "bob")
    assert timeout.fingerprint is not None
    running = JSON_DONE.replace('["FAILED"]', '["RUNNING"]')
    assert parse_job_end(running, True, "4242") is None


@pytest.mark.asyncio
async def test_slurm_status_asks_scontrol_off_the_loop():
    answers = {"4242": (JSON_DONE.replace('["FAILED"]', '["RUNNING"]'), True)}
    asked: list[str] = []

    async def show_job(job_id):
        asked.append(job_id)
        return answers.get(job_id)

    clock = [0.0]
    status = SlurmRunStatus(show_job, lambda: clock[0], recheck_s=30.0)
    ref = RunRef("slurm", "4242")
    assert status.facts(ref) is None and asked == []  # queued, not asked on the caller's time
    await status.lookup("4242")
    assert status.facts(ref) is STILL_RUNNING
    answers["4242"] = (JSON_DONE, True)
    clock[0] = 31.0
    status.facts(ref)  # stale: queued again
    await status.lookup("4242")
    assert status.facts(ref).outcome == "failed"
    await status.lookup("999")  # purged: unknown, left to the tracker's grace
    assert status.facts(RunRef("slurm", "999")) is None


@pytest.mark.asyncio
async def test_slurm_job_end_through_a_real_scontrol_executable(tmp_path):
    """The daemon's own SlurmSource runs the (fake) scontrol executable; the
    receipt's facts come from what it printed."""
    from fakes.slurm import GOLDEN_JSON, GOLDEN_TEXT, FakeScontrol

    from gpucarbon.clock import ManualClock
    from gpucarbon.identity.slurm import SlurmSource
    from gpucarbon.teams import TeamRules

    scontrol = FakeScontrol(tmp_path)
    clock = ManualClock()
    source = SlurmSource(teams=TeamRules(), clock=clock, scontrol=str(scontrol.path))
    status = SlurmRunStatus(source.show_job, clock.monotonic, recheck_s=30.0)
    ref = RunRef("slurm", "4242")
    status.facts(ref)
    await status.lookup("4242")
    assert status.facts(ref) is STILL_RUNNING  # the golden job is RUNNING
    done = json.loads(json.dumps(GOLDEN_JSON))
    done["jobs"][0].update(
        job_state=["OUT_OF_MEMORY"],
        exit_code={"return_code": {"set": True, "number": 0}},
        command="/home/alice/train.sh",
        current_working_directory="/home/alice",
    )
    scontrol.spec["jobs"]["4242"]["json"] = json.dumps(done)
    scontrol.save()
    clock.advance(31.0)
    await status.lookup("4242")
    facts = status.facts(ref)
    assert (facts.outcome, facts.reason, facts.user, facts.account) == ("failed", "OUT_OF_MEMORY", "alice", "physics")
    # An old scontrol without --json: the one-line text form.
    scontrol.spec["no_json"] = True
    scontrol.spec["jobs"]["4243"]["text"] = GOLDEN_TEXT.replace("JobState=RUNNING", "JobState=CANCELLED ExitCode=0:15")
    scontrol.save()
    old = SlurmRunStatus(
        SlurmSource(teams=TeamRules(), clock=clock, scontrol=str(scontrol.path)).show_job, clock.monotonic
    )
    await old.lookup("4243")
    assert old.facts(RunRef("slurm", "4243")).outcome == "cancelled"
    await old.lookup("999")  # not known to scontrol: nobody can say
    assert old.facts(RunRef("slurm", "999")) is None
