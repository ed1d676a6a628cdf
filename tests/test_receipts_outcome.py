"""Outcome mapping and fingerprints, checked against published pod objects and
Slurm job states (sources cited in tests/fixtures/pods/*.json)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gpucarbon.receipts.fingerprint import image_digest, pod_fingerprint, slurm_fingerprint
from gpucarbon.receipts.outcome import pod_is_final, pod_outcome, slurm_exit_code, slurm_outcome

PODS = sorted((Path(__file__).parent / "fixtures" / "pods").glob("*.json"))


@pytest.mark.parametrize("path", PODS, ids=[p.stem for p in PODS])
def test_outcome_of_published_pod_objects(path):
    case = json.loads(path.read_text())
    assert case["source"]  # every fixture says where it comes from
    outcome, reason, exit_code = pod_outcome(case["pod"], deleted=case["deleted"])
    assert [outcome, reason, exit_code] == case["expected"]


def test_a_running_pod_is_not_final_until_terminal_or_deleted():
    running = json.loads((PODS[0].parent / "deleted_while_running.json").read_text())["pod"]
    assert not pod_is_final(running, deleted=False)
    assert pod_is_final(running, deleted=True)
    succeeded = json.loads((PODS[0].parent / "succeeded_job.json").read_text())["pod"]
    assert pod_is_final(succeeded, deleted=False)


def test_main_container_is_the_one_that_used_the_gpu():
    pod = {
        "spec": {"containers": [{"name": "sidecar"}, {"name": "trainer"}]},
        "status": {
            "phase": "Failed",
            "containerStatuses": [
                {"name": "sidecar", "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}},
                {"name": "trainer", "state": {"terminated": {"exitCode": 3, "reason": "Error"}}},
            ],
        },
    }
    assert pod_outcome(pod, containers=["trainer"]) == ("failed", "Error", 3)
    assert pod_outcome(pod) == ("failed", "Completed", 0)  # no hint: the first in the spec


def test_crashlooping_container_reports_its_last_termination():
    pod = {
        "status": {
            "phase": "Failed",
            "containerStatuses": [
                {
                    "name": "c",
                    "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                    "lastState": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}},
                }
            ],
        }
    }
    assert pod_outcome(pod) == ("failed", "OOMKilled", 137)


@pytest.mark.parametrize(
    "state,expected",
    [
        ("COMPLETED", ("succeeded", "COMPLETED")),
        ("FAILED", ("failed", "FAILED")),
        ("CANCELLED by 1000", ("cancelled", "CANCELLED")),
        ("TIMEOUT", ("timeout", "TIMEOUT")),
        ("PREEMPTED", ("preempted", "PREEMPTED")),
        ("OUT_OF_MEMORY", ("failed", "OUT_OF_MEMORY")),
        ("NODE_FAIL", ("failed", "NODE_FAIL")),
        ("RUNNING", ("unknown", "RUNNING")),
    ],
)
def test_slurm_job_states(state, expected):
    # The state names are those of squeue(1)/scontrol(1) "JOB STATE CODES".
    assert slurm_outcome(state) == expected


@pytest.mark.parametrize(
    "value,code",
    [
        ("2:0", 2),
        ("0:15", 0),
        (1, 1),
        (
            {"status": ["FAILED"], "return_code": {"set": True, "infinite": False, "number": 2}},
            2,
        ),  # data_parser v0.0.40
        ({"return_code": {"set": False, "number": 0}}, None),
        (True, None),
        (None, None),
    ],
)
def test_slurm_exit_codes(value, code):
    assert slurm_exit_code(value) == code


def test_fingerprint_uses_digest_command_args_and_never_env():
    pod = json.loads((PODS[0].parent / "failed_exit_42.json").read_text())["pod"]
    base = pod_fingerprint(pod)
    assert base is not None and len(base.sha256) == 64
    with_env = json.loads(json.dumps(pod))
    with_env["spec"]["containers"][0]["env"] = [{"name": "WANDB_API_KEY", "value": "secret"}]
    with_env["metadata"]["labels"] = {"run": "2"}
    assert pod_fingerprint(with_env) == base
    other_args = json.loads(json.dumps(pod))
    other_args["spec"]["containers"][0]["args"] = ["-c", "exit 0"]
    assert pod_fingerprint(other_args) != base
    other_digest = json.loads(json.dumps(pod))
    other_digest["status"]["containerStatuses"][0]["imageID"] = "docker.io/library/bash@sha256:" + "9" * 64
    assert pod_fingerprint(other_digest) != base


def test_image_digest_forms():
    assert image_digest("docker-pullable://reg/x@sha256:ab", "reg/x:1") == "sha256:ab"
    assert image_digest("sha256:cd", "reg/x:1") == "sha256:cd"
    assert image_digest("", "reg/x:1") == "reg/x:1"


def test_slurm_fingerprint_inputs():
    a = slurm_fingerprint("train", "/home/bob/run.sh --tag", "/home/bob")
    assert a == slurm_fingerprint("train", "/home/bob/run.sh --tag", "/home/bob")
    assert a != slurm_fingerprint("train", "/home/bob/run.sh --tag", "/scratch")
    assert slurm_fingerprint("", "", "/home/bob") is None
