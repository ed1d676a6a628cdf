"""Workload owner resolution, table-driven, with a fake controller lookup."""

from __future__ import annotations

import asyncio

import pytest

from gpucarbon.clock import ManualClock
from gpucarbon.identity.owners import (
    LookupFailed,
    OwnerRef,
    OwnerResolver,
    PodOwnership,
    direct_workload,
    workload_from_labels,
)


def pod(owners=(), labels=None, name="p-0", namespace="ml") -> PodOwnership:
    return PodOwnership(namespace, name, tuple(owners), labels)


def ctl(kind: str, name: str) -> OwnerRef:
    return OwnerRef(kind, name, controller=True)


@pytest.mark.parametrize(
    ("case", "subject", "workload"),
    [
        ("bare pod", pod(), "Pod/p-0"),
        ("non-controller owner is ignored", pod([OwnerRef("ConfigMap", "cm")]), "Pod/p-0"),
        ("static pod owned by its node is a bare pod", pod([ctl("Node", "node-a")]), "Pod/p-0"),
        ("daemonset", pod([ctl("DaemonSet", "dcgm")]), "DaemonSet/dcgm"),
        ("statefulset", pod([ctl("StatefulSet", "db")]), "StatefulSet/db"),
        ("pytorchjob from ownerReference", pod([ctl("PyTorchJob", "llm")]), "PyTorchJob/llm"),
        ("raycluster from ownerReference", pod([ctl("RayCluster", "rc")]), "RayCluster/rc"),
        ("jobset from ownerReference", pod([ctl("JobSet", "js")]), "JobSet/js"),
        ("leaderworkerset from ownerReference", pod([ctl("LeaderWorkerSet", "lws")]), "LeaderWorkerSet/lws"),
        (
            "LWS statefulset by label",
            pod([ctl("StatefulSet", "lws-0")], {"leaderworkerset.sigs.k8s.io/name": "vllm"}),
            "LeaderWorkerSet/vllm",
        ),
        ("label: job-name", pod(labels={"job-name": "j"}), "Job/j"),
        (
            "label: kubeflow pytorch",
            pod(
                labels={
                    "training.kubeflow.org/job-name": "k",
                    "training.kubeflow.org/operator-name": "pytorchjob-controller",
                }
            ),
            "PyTorchJob/k",
        ),
        ("label: kubeflow unknown operator", pod(labels={"training.kubeflow.org/job-name": "k"}), "KubeflowJob/k"),
        ("label: ray", pod(labels={"ray.io/cluster": "rc"}), "RayCluster/rc"),
        (
            "label: jobset beats job-name",
            pod(labels={"job-name": "js-w-0", "jobset.sigs.k8s.io/jobset-name": "js"}),
            "JobSet/js",
        ),
        ("controller beats labels", pod([ctl("RayCluster", "real")], {"ray.io/cluster": "label"}), "RayCluster/real"),
    ],
)
def test_direct_workload_without_api_reads(case, subject, workload):
    assert direct_workload(subject) == workload, case


@pytest.mark.parametrize("kind", ["ReplicaSet", "Job"])
def test_replicasets_and_jobs_need_a_read(kind):
    assert direct_workload(pod([ctl(kind, "x")])) is None


def test_no_labels_is_not_a_workload():
    assert workload_from_labels(None) is None and workload_from_labels({"app": "x"}) is None


def test_malicious_names_are_sanitised():
    hostile = pod([ctl("PyTorchJob", 'x"\n' + "y" * 10_000)])
    workload = direct_workload(hostile)
    assert "\n" not in workload and len(workload) <= 320 and workload.startswith('PyTorchJob/x"')


class FakeLookup:
    def __init__(self, parents: dict[tuple[str, str, str], OwnerRef | None]) -> None:
        self.parents = parents
        self.calls: list[tuple[str, str, str]] = []
        self.fail_with: str | None = None
        self.delay_s = 0.0

    async def __call__(self, kind: str, namespace: str, name: str) -> OwnerRef | None:
        self.calls.append((kind, namespace, name))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.fail_with:
            raise LookupFailed(self.fail_with)
        return self.parents.get((kind, namespace, name))


PARENTS = {
    ("ReplicaSet", "ml", "web-7d9f"): ctl("Deployment", "web"),
    ("ReplicaSet", "ml", "orphan-rs"): None,
    ("ReplicaSet", "ml", "roll-55"): ctl("Rollout", "roll"),
    ("Job", "ml", "nightly-28000"): ctl("CronJob", "nightly"),
    ("Job", "ml", "js-workers-0"): ctl("JobSet", "js"),
    ("Job", "ml", "one-off"): None,
}


@pytest.mark.parametrize(
    ("owner", "workload"),
    [
        (ctl("ReplicaSet", "web-7d9f"), "Deployment/web"),
        (ctl("ReplicaSet", "orphan-rs"), "ReplicaSet/orphan-rs"),
        (ctl("ReplicaSet", "roll-55"), "Rollout/roll"),
        (ctl("Job", "nightly-28000"), "CronJob/nightly"),
        (ctl("Job", "js-workers-0"), "JobSet/js"),
        (ctl("Job", "one-off"), "Job/one-off"),
    ],
)
async def test_resolve_follows_the_controllers_controller(owner, workload):
    resolver = OwnerResolver(FakeLookup(PARENTS), clock=ManualClock())
    assert await resolver.resolve(pod([owner])) == workload


async def test_lookups_are_cached_and_merged():
    lookup = FakeLookup(PARENTS)
    lookup.delay_s = 0.05
    resolver = OwnerResolver(lookup, clock=ManualClock())
    pods = [pod([ctl("ReplicaSet", "web-7d9f")], name=f"web-7d9f-{i}") for i in range(5)]
    results = await asyncio.gather(*(resolver.resolve(p) for p in pods))
    assert results == ["Deployment/web"] * 5
    await resolver.resolve(pods[0])
    assert lookup.calls == [("ReplicaSet", "ml", "web-7d9f")]  # one GET for five pods, then the cache
    assert not resolver.needs_lookup(pods[0])
    assert resolver.provisional(pods[0]) == "Deployment/web"


async def test_failed_lookup_falls_back_and_retries_after_a_while():
    lookup = FakeLookup(PARENTS)
    lookup.fail_with = "forbidden"
    failures: list[str] = []
    clock = ManualClock()
    resolver = OwnerResolver(lookup, clock=clock, retry_after_s=60, on_failure=lambda f: failures.append(f.reason))
    subject = pod([ctl("ReplicaSet", "web-7d9f")], {"pod-template-hash": "7d9f"})
    assert await resolver.resolve(subject) == "Deployment/web"  # the pod-template-hash rule
    assert failures == ["forbidden"]
    assert not resolver.needs_lookup(subject)
    await resolver.resolve(subject)
    assert len(lookup.calls) == 1  # not retried before retry_after_s

    clock.advance(61)
    lookup.fail_with = None
    assert resolver.needs_lookup(subject)
    assert await resolver.resolve(subject) == "Deployment/web"
    assert len(lookup.calls) == 2


@pytest.mark.parametrize(
    ("subject", "guess"),
    [
        (pod([ctl("ReplicaSet", "web-7d9f")], {"pod-template-hash": "7d9f"}), "Deployment/web"),
        (pod([ctl("ReplicaSet", "web-7d9f")], {"pod-template-hash": "other"}), "ReplicaSet/web-7d9f"),
        (pod([ctl("Job", "js-w-0")], {"jobset.sigs.k8s.io/jobset-name": "js", "job-name": "js-w-0"}), "JobSet/js"),
        (pod([ctl("Job", "j")]), "Job/j"),
    ],
)
def test_provisional_never_reads(subject, guess):
    lookup = FakeLookup(PARENTS)
    resolver = OwnerResolver(lookup, clock=ManualClock())
    assert resolver.provisional(subject) == guess
    assert lookup.calls == []


async def test_cache_is_bounded():
    lookup = FakeLookup(PARENTS)
    resolver = OwnerResolver(lookup, clock=ManualClock(), cache_size=2)
    for name in ("web-7d9f", "orphan-rs", "roll-55"):
        await resolver.resolve(pod([ctl("ReplicaSet", name)]))
    assert resolver.needs_lookup(pod([ctl("ReplicaSet", "web-7d9f")]))  # evicted first
    assert not resolver.needs_lookup(pod([ctl("ReplicaSet", "roll-55")]))


def test_cache_size_must_be_positive():
    with pytest.raises(ValueError, match="cache_size: 0"):
        OwnerResolver(FakeLookup({}), clock=ManualClock(), cache_size=0)


# ---- more than one hop -----------------------------------------------------------

CHAIN = {
    ("RayCluster", "ml", "rj-raycluster-9c546"): ctl("RayJob", "rj"),
    ("StatefulSet", "ml", "nb"): ctl("Notebook", "nb"),
    ("Job", "ml", "sub"): ctl("RayCluster", "rc"),
    ("RayCluster", "ml", "rc"): ctl("RayJob", "deep"),
}
RAY_FOLLOW = frozenset({"ReplicaSet", "Job", "RayCluster", "StatefulSet"})


@pytest.mark.parametrize(
    ("owner", "workload", "reads"),
    [
        (ctl("RayCluster", "rj-raycluster-9c546"), "RayJob/rj", 1),
        (ctl("StatefulSet", "nb"), "Notebook/nb", 1),  # a Kubeflow notebook's StatefulSet
        (ctl("Job", "sub"), "RayJob/deep", 2),
    ],
)
async def test_followed_kinds_are_read_up_the_chain(owner, workload, reads):
    lookup = FakeLookup(CHAIN)
    resolver = OwnerResolver(lookup, clock=ManualClock(), followed=RAY_FOLLOW)
    subject = pod([owner])
    assert resolver.needs_lookup(subject)
    assert await resolver.resolve(subject) == workload
    assert len(lookup.calls) == reads
    assert resolver.provisional(subject) == workload and not resolver.needs_lookup(subject)


async def test_max_depth_bounds_the_reads():
    lookup = FakeLookup(CHAIN)
    resolver = OwnerResolver(lookup, clock=ManualClock(), followed=RAY_FOLLOW, max_depth=1)
    assert await resolver.resolve(pod([ctl("Job", "sub")])) == "RayCluster/rc"
    assert lookup.calls == [("Job", "ml", "sub")]


async def test_a_failed_second_hop_keeps_the_first_answer():
    lookup = FakeLookup(CHAIN)
    resolver = OwnerResolver(lookup, clock=ManualClock(), followed=RAY_FOLLOW)
    subject = pod([ctl("Job", "sub")])
    real = lookup.__call__

    async def second_fails(kind, namespace, name):
        if kind == "RayCluster":
            raise LookupFailed("forbidden")
        return await real(kind, namespace, name)

    resolver._lookup = second_fails
    assert await resolver.resolve(subject) == "RayCluster/rc"


def test_unfollowed_kinds_are_not_read_and_lws_label_wins():
    assert direct_workload(pod([ctl("RayCluster", "rc")])) == "RayCluster/rc"  # default: not followed
    assert direct_workload(pod([ctl("RayCluster", "rc")]), RAY_FOLLOW) is None
    lws = pod([ctl("StatefulSet", "lws-0")], {"leaderworkerset.sigs.k8s.io/name": "vllm"})
    assert direct_workload(lws, RAY_FOLLOW) == "LeaderWorkerSet/vllm"


def test_kuberay_origin_labels_name_the_root_resource():
    labels = {
        "ray.io/cluster": "rj-raycluster-9c546",
        "ray.io/originated-from-crd": "RayJob",
        "ray.io/originated-from-cr-name": "rj",
    }
    assert workload_from_labels(labels) == "RayJob/rj"
    assert workload_from_labels({**labels, "ray.io/originated-from-crd": "Other"}) == "RayCluster/rj-raycluster-9c546"


def test_config_defaults_match_the_resolver_defaults():
    from gpucarbon.config import KubernetesConfig
    from gpucarbon.identity.owners import DEFAULT_MAX_DEPTH, FOLLOWED_KINDS

    assert set(KubernetesConfig().owners_follow) == FOLLOWED_KINDS
    assert KubernetesConfig().owners_max_depth == DEFAULT_MAX_DEPTH
