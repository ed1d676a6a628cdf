"""Team rules (first match wins) and label-value sanitising, table-driven."""

from __future__ import annotations

import pytest

from gpucarbon.identity.allocations import KubeletAllocations
from gpucarbon.identity.devices import GpuInventory
from gpucarbon.identity.model import CgroupIdentity, PodMeta
from gpucarbon.identity.podresources import ContainerKey, GpuAllocations
from gpucarbon.identity.resolver import Resolver
from gpucarbon.teams import TEAM_MAX_LEN, WORKLOAD_MAX_LEN, TeamRules, sanitise_label_value

RULES = TeamRules(
    default="unassigned",
    pod_label="team",
    namespace_label="owner-team",
    namespaces={"research": "science", "blank": "\n\t"},
    workload_patterns=((r"PyTorchJob/llm-.*", "llm"), (r"Deployment/.*-api", "serving"), (r"train", "never-partial")),
)


@pytest.mark.parametrize(
    ("case", "namespace", "pod_labels", "ns_labels", "workload", "team", "rule"),
    [
        (
            "pod label wins over everything",
            "research",
            {"team": "ml"},
            {"owner-team": "x"},
            "PyTorchJob/llm-7b",
            "ml",
            "pod_label",
        ),
        (
            "namespace label next",
            "research",
            {},
            {"owner-team": "infra"},
            "PyTorchJob/llm-7b",
            "infra",
            "namespace_label",
        ),
        ("static namespace map next", "research", {"app": "x"}, {}, "PyTorchJob/llm-7b", "science", "namespace_map"),
        ("workload regex next", "default", None, None, "PyTorchJob/llm-7b", "llm", "workload_pattern"),
        ("second regex", "default", None, None, "Deployment/search-api", "serving", "workload_pattern"),
        ("regex is anchored", "default", None, None, "Job/trainer", "unassigned", "default"),
        ("nothing matches", "default", None, None, "Pod/x", "unassigned", "default"),
        ("empty pod label falls through", "research", {"team": ""}, None, "", "science", "namespace_map"),
        ("control-only label falls through", "default", {"team": "\x00\x1b"}, None, "", "unassigned", "default"),
        ("whitespace-only map value falls through", "blank", None, None, "", "unassigned", "default"),
    ],
)
def test_first_matching_rule_names_the_team(case, namespace, pod_labels, ns_labels, workload, team, rule):
    decision = RULES.decide(namespace=namespace, pod_labels=pod_labels, namespace_labels=ns_labels, workload=workload)
    assert (decision.team, decision.rule) == (team, rule), case


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("ml", "ml"),
        ('team"with"quotes', 'team"with"quotes'),  # the exposition format escapes quotes itself
        ("back\\slash", "back\\slash"),
        ("line\nbreak\r\n", "linebreak"),
        ("tab\there", "tabhere"),
        ("  padded  ", "padded"),
        ("zero\u200bwidth\u202eoverride", "zerowidthoverride"),
        ("lone\udc80surrogate", "lonesurrogate"),
        ("sep\u2028arator", "separator"),
        ("ünïcödé-チーム", "ünïcödé-チーム"),
        (None, ""),
        (42, "42"),
        ("", ""),
    ],
)
def test_sanitise_keeps_printable_text_only(raw, expected):
    assert sanitise_label_value(raw) == expected


def test_ten_kilobyte_values_are_bounded_and_stay_distinct():
    a = "a" * 10_000 + "1"
    b = "a" * 10_000 + "2"
    clean_a, clean_b = sanitise_label_value(a), sanitise_label_value(b)
    assert len(clean_a) == TEAM_MAX_LEN and len(clean_b) == TEAM_MAX_LEN
    assert clean_a != clean_b  # a hash suffix keeps them apart
    assert clean_a.startswith("a" * 100) and "~" in clean_a
    assert sanitise_label_value(a) == clean_a  # stable across calls


def test_malicious_pod_label_cannot_break_a_metric_line():
    hostile = '"} evil_metric 1\n# TYPE x counter\n' + "\x00" * 5000
    team = RULES.decide(namespace="default", pod_labels={"team": hostile}).team
    assert "\n" not in team and "\x00" not in team and len(team) <= TEAM_MAX_LEN
    assert team.startswith('"} evil_metric 1')
    assert team.encode("utf-8")  # always encodable for /metrics


def test_exactly_max_length_is_kept_whole():
    value = "x" * TEAM_MAX_LEN
    assert sanitise_label_value(value) == value


class _Process:
    user, comm = "root", "python"

    def __init__(self, pod_uid: str, container_id: str) -> None:
        self.cgroup = CgroupIdentity(pod_uid=pod_uid, container_id=container_id)


class _Pods:
    """The API server's index: by UID for processes, by name for allocations."""

    def __init__(self, *pods: PodMeta) -> None:
        self._pods = pods

    def pod(self, uid: str) -> PodMeta | None:
        return next((p for p in self._pods if p.uid == uid), None)

    def pods_by_name(self, namespace: str, name: str) -> PodMeta | None:
        return next((p for p in self._pods if (p.namespace, p.name) == (namespace, name)), None)


class _Kubelet:
    def __init__(self, *keys: ContainerKey) -> None:
        self._keys = keys

    def holders_by_gpu(self, normalise) -> GpuAllocations:
        return GpuAllocations({"GPU-0": self._keys})


def test_process_and_allocation_paths_label_a_pod_alike_and_keep_long_workloads_whole():
    # Kubernetes names run to 253 characters: two workloads alike in their first
    # 128 must stay two label values, and both paths must give the same labels.
    pods = [
        PodMeta(f"uid-{n}", "ml", f"p-{n}", f"PyTorchJob/{'x' * 200}-{n}", "ml\n", {f"cid-{n}": "main"}) for n in "ab"
    ]
    resolver = Resolver(lambda pid: _Process(f"uid-{'ab'[pid]}", f"cid-{'ab'[pid]}"), metadata=_Pods(*pods))
    kubelet = KubeletAllocations(
        _Kubelet(*(ContainerKey("ml", p.name, "main") for p in pods)), _Pods(*pods), inventory=lambda: GpuInventory({})
    )
    by_process = [resolver.consumer(pid) for pid in (0, 1)]
    by_allocation = list(kubelet.allocations()["GPU-0"])
    assert [c.key for c in by_process] == [c.key for c in by_allocation] == ["pod/uid-a/main", "pod/uid-b/main"]
    assert [c.labels() for c in by_process] == [c.labels() for c in by_allocation]
    assert [c.workload for c in by_process] == [p.workload for p in pods]  # 213 characters, under 320
    assert by_process[0].team == "ml"
    hostile = Resolver(
        lambda pid: _Process("uid-a", "cid-a"), metadata=_Pods(PodMeta("uid-a", "ml", "p", "Job/" + "y" * 1000, "t"))
    )
    assert len(hostile.consumer(1).workload) == WORKLOAD_MAX_LEN


def test_invalid_regex_is_rejected_naming_the_rule():
    with pytest.raises(ValueError, match=r"teams.workloads\[1\].match: '\(unclosed'"):
        TeamRules(workload_patterns=(("ok", "a"), ("(unclosed", "b")))


def test_default_must_be_printable():
    with pytest.raises(ValueError, match="teams.default"):
        TeamRules(default="\n")


@pytest.mark.parametrize(
    ("account", "user", "team"),
    [
        ("physics", "alice", "physics"),
        ("", "carol", "platform"),
        (None, "dave", "dave"),
        (None, None, "unassigned"),
        ("\n", "dave", "dave"),
    ],
)
def test_slurm_team_from_account_then_user(account, user, team):
    rules = TeamRules(users={"carol": "platform"})
    assert rules.team_for_account(account, user) == team


@pytest.mark.parametrize(("user", "team"), [("carol", "platform"), ("eve", "unassigned"), (None, "unassigned")])
def test_plain_host_team_from_user_map(user, team):
    assert TeamRules(users={"carol": "platform"}).team_for_user(user) == team


def test_rules_are_immutable_after_construction():
    source = {"research": "science"}
    rules = TeamRules(namespaces=source)
    source["research"] = "changed"
    assert rules.decide(namespace="research").team == "science"
    with pytest.raises(TypeError):
        rules.namespaces["x"] = "y"  # type: ignore[index]
