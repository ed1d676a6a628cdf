"""Every outside string becomes a safe label value, whichever source it comes
from (issue 11): the API server (pod names, labels, namespaces), the kubelet
(pod-resources container keys), Slurm (scontrol's account and user), the
config (team rules) and carbon APIs (test_carbon_providers.py) and checkpoints
(test_checkpoint_hostile.py). One sanitiser: gpucarbon/labels.py."""

from __future__ import annotations

import copy
import json

import pytest
from fakes.slurm import GOLDEN_JSON, FakeScontrol

from gpucarbon.clock import ManualClock
from gpucarbon.identity.model import PodMeta
from gpucarbon.identity.resolver import pod_consumer
from gpucarbon.identity.slurm import SlurmSource
from gpucarbon.labels import sanitise_label_value
from gpucarbon.teams import TeamRules

HOSTILE = ["evil\ud800team", "nlp\u200b", "nlp\x00", "a\nb", "x" * 30000, "\u202eevil"]


def assert_safe(value: str, max_len: int = 320) -> None:
    assert len(value) <= max_len and value.isprintable() and value == value.strip(), repr(value[:80])
    value.encode("utf-8")  # no lone surrogate


@pytest.mark.parametrize("hostile", HOSTILE, ids=range(len(HOSTILE)))
def test_api_server_strings_are_sanitised(hostile):
    meta = PodMeta(uid="u1", namespace=hostile, name=hostile, workload=f"Job/{hostile}", team=hostile)
    consumer = pod_consumer(meta, hostile)
    for value in consumer.labels():
        assert_safe(value)


@pytest.mark.parametrize("hostile", HOSTILE, ids=range(len(HOSTILE)))
def test_config_team_rules_and_pod_labels_are_sanitised(hostile):
    rules = TeamRules(namespaces={"ns": hostile})
    assert_safe(rules.decide(namespace="ns").team, 128)
    assert_safe(TeamRules().decide(namespace="x", pod_labels={"team": hostile}).team, 128)


async def test_slurm_account_and_user_are_sanitised(tmp_path):
    scontrol = FakeScontrol(tmp_path)
    answer = copy.deepcopy(GOLDEN_JSON)
    answer["jobs"][0]["account"] = "phys\ud800ics\u200b"
    answer["jobs"][0]["user_name"] = "al\x00ice" + "e" * 30000
    scontrol.spec["jobs"]["4242"]["json"] = json.dumps(answer)
    scontrol.save()
    source = SlurmSource(teams=TeamRules(), clock=ManualClock(), scontrol=str(scontrol.path))
    meta = await source.lookup("4242")
    assert meta is not None
    assert meta.team == "physics" and meta.account == "physics"
    for value in (meta.team, meta.account, meta.user, meta.workload):
        assert_safe(value)


def test_look_alike_teams_become_one_team():
    """Documented (docs/security.md): values that differ only in removed
    characters are one label value."""
    assert {sanitise_label_value(v) for v in ("nlp", "nlp\u200b", "nlp\x00")} == {"nlp"}
