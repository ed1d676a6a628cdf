"""The workload that owns a pod, as `"<Kind>/<name>"`.

Resolution (documented in docs/kubernetes.md):

1. The pod's controller ownerReference (`controller: true`), followed upward:
   while the owner's kind is one of the *followed* kinds (default `ReplicaSet`
   and `Job`; `StatefulSet` and `RayCluster` when configured), GET it and move to
   its own controller, at most `max_depth` GETs; the first owner that is not
   followed, or has no controller, is the workload. So `ReplicaSet` ->
   `Deployment/x` (or an Argo `Rollout/x`), `Job` -> `CronJob/x` / `JobSet/x` /
   `RayJob/x`, and with `RayCluster` followed, a RayJob's or RayService's pods ->
   `RayCluster/<generated>` -> `RayJob/x` / `RayService/x`; with `StatefulSet`
   followed, a Kubeflow notebook's pod -> `Notebook/x`.
   - `StatefulSet` of a LeaderWorkerSet (pod label
     `leaderworkerset.sigs.k8s.io/name`): `LeaderWorkerSet/<label>`, no read.
   - `Node` (static/mirror pods): treated as a bare pod.
   - any kind not followed (`DaemonSet`, `PyTorchJob`, `JobSet`, `Workflow`,
     ...): the ownerReference's kind and name as-is, with no API read.
2. Without a controller, the well-known labels: `jobset.sigs.k8s.io/jobset-name`,
   `training.kubeflow.org/job-name` (kind from `training.kubeflow.org/operator-name`),
   `ray.io/cluster`, `leaderworkerset.sigs.k8s.io/name`, `job-name`.
3. Otherwise `Pod/<name>`.

GETs go through an injected `OwnerLookup` and are cached per (namespace, kind,
name), concurrent lookups of one object are merged, and failures are retried no
sooner than `retry_after_s`. While a GET is pending or failing, `provisional()`
gives the best answer known without I/O (labels, then the `pod-template-hash`
rule: a Deployment's ReplicaSet is named `<deployment>-<hash>`), so a pod is never
without a workload; the Consumer key is stable, so the label improving later
continues the same series.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from gpucarbon.clock import Clock
from gpucarbon.teams import WORKLOAD_MAX_LEN, sanitise_label_value

# Controller kinds whose own controller is read by default: the RBAC for them
# (apps/replicasets, batch/jobs) is in every install. StatefulSet and RayCluster
# are followed only when configured (kubernetes.owners.follow), since reading them
# widens what the exporter's ServiceAccount may get.
FOLLOWED_KINDS = frozenset({"ReplicaSet", "Job"})
OPTIONAL_FOLLOWED_KINDS = frozenset({"StatefulSet", "RayCluster"})
DEFAULT_MAX_DEPTH = 4  # GETs up one chain; RayJob pods need 1, a RayJob's submitter 1

LWS_LABEL = "leaderworkerset.sigs.k8s.io/name"
KUBEFLOW_JOB_LABEL = "training.kubeflow.org/job-name"
KUBEFLOW_OPERATOR_LABEL = "training.kubeflow.org/operator-name"
POD_TEMPLATE_HASH_LABEL = "pod-template-hash"

# KubeRay marks what it creates for a RayJob or RayService with the root resource
# (ray-operator/controllers/ray/utils/constant.go, RayOriginatedFromCR*LabelKey).
RAY_ORIGIN_KIND_LABEL = "ray.io/originated-from-crd"
RAY_ORIGIN_NAME_LABEL = "ray.io/originated-from-cr-name"
RAY_ORIGIN_KINDS = frozenset({"RayJob", "RayService", "RayCronJob"})

# Label fallbacks in order: JobSet pods also carry `job-name` (of their child Job),
# so the more specific labels come first.
LABEL_FALLBACKS: tuple[tuple[str, str], ...] = (
    ("jobset.sigs.k8s.io/jobset-name", "JobSet"),
    (KUBEFLOW_JOB_LABEL, ""),  # kind from the operator label
    ("ray.io/cluster", "RayCluster"),
    (LWS_LABEL, "LeaderWorkerSet"),
    ("job-name", "Job"),
)
KUBEFLOW_KINDS = {
    "pytorchjob-controller": "PyTorchJob",
    "tfjob-controller": "TFJob",
    "mpijob-controller": "MPIJob",
    "xgboostjob-controller": "XGBoostJob",
    "paddlejob-controller": "PaddleJob",
    "jaxjob-controller": "JAXJob",
}
KUBEFLOW_DEFAULT_KIND = "KubeflowJob"


@dataclass(frozen=True, slots=True)
class OwnerRef:
    kind: str
    name: str
    controller: bool = False
    api_version: str = ""  # e.g. ray.io/v1: where a followed custom resource is read


@dataclass(frozen=True, slots=True)
class PodOwnership:
    """What owner resolution needs to know about one pod."""

    namespace: str
    name: str
    owners: tuple[OwnerRef, ...] = ()
    labels: Mapping[str, str] | None = None


class LookupFailed(Exception):
    """An owner GET failed; `reason` is a short health reason."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class OwnerLookup(Protocol):
    """Reads the controller of one namespaced object: None when it has none (or
    no longer exists); raises LookupFailed when the answer is unknown."""

    def __call__(self, kind: str, namespace: str, name: str) -> Awaitable[OwnerRef | None]: ...


def workload_value(kind: str, name: str) -> str:
    return sanitise_label_value(f"{kind}/{name}", WORKLOAD_MAX_LEN)


def controller_of(owners: Iterable[OwnerRef]) -> OwnerRef | None:
    """The controlling ownerReference (at most one exists)."""
    for ref in owners:
        if ref.controller:
            return ref
    return None


def workload_from_labels(labels: Mapping[str, str] | None) -> str | None:
    """The workload named by well-known labels, or None."""
    if not labels:
        return None
    origin, origin_name = labels.get(RAY_ORIGIN_KIND_LABEL), labels.get(RAY_ORIGIN_NAME_LABEL)
    if origin in RAY_ORIGIN_KINDS and origin_name:
        return workload_value(origin, origin_name)
    for key, kind in LABEL_FALLBACKS:
        name = labels.get(key)
        if not name:
            continue
        if not kind:
            kind = KUBEFLOW_KINDS.get(labels.get(KUBEFLOW_OPERATOR_LABEL, ""), KUBEFLOW_DEFAULT_KIND)
        return workload_value(kind, name)
    return None


def direct_workload(pod: PodOwnership, followed: frozenset[str] = FOLLOWED_KINDS) -> str | None:
    """The workload when no GET is needed; None when the controller must be read."""
    ref = controller_of(pod.owners)
    if ref is None or ref.kind == "Node":
        return workload_from_labels(pod.labels) or workload_value("Pod", pod.name)
    if ref.kind == "StatefulSet" and pod.labels and pod.labels.get(LWS_LABEL):
        return workload_value("LeaderWorkerSet", pod.labels[LWS_LABEL])
    if ref.kind in followed:
        return None
    return workload_value(ref.kind, ref.name)


def guessed_workload(pod: PodOwnership) -> str:
    """Best answer without I/O for a pod whose controller must be read."""
    ref = controller_of(pod.owners)
    if ref is None:
        return workload_value("Pod", pod.name)
    if by_label := workload_from_labels(pod.labels):
        return by_label
    template_hash = (pod.labels or {}).get(POD_TEMPLATE_HASH_LABEL, "")
    if ref.kind == "ReplicaSet" and template_hash and ref.name.endswith("-" + template_hash):
        return workload_value("Deployment", ref.name[: -len(template_hash) - 1])
    return workload_value(ref.kind, ref.name)


@dataclass(frozen=True, slots=True)
class _Cached:
    parent: OwnerRef | None  # the looked-up object's controller
    failed_at: float | None = None  # monotonic seconds of the last failure


class OwnerResolver:
    """Resolves pods to workloads; `resolve` may GET, `provisional` never does."""

    def __init__(
        self,
        lookup: OwnerLookup,
        *,
        clock: Clock,
        cache_size: int = 4096,
        retry_after_s: float = 60.0,
        on_failure: Callable[[LookupFailed], None] | None = None,
        followed: Iterable[str] = FOLLOWED_KINDS,
        max_depth: int = DEFAULT_MAX_DEPTH,
    ) -> None:
        if cache_size < 1:
            raise ValueError(f"cache_size: {cache_size}: must be at least 1")
        if max_depth < 1:
            raise ValueError(f"max_depth: {max_depth}: must be at least 1")
        self._lookup = lookup
        self._clock = clock
        self._cache_size = cache_size
        self._retry_after_s = retry_after_s
        self._on_failure = on_failure
        self._followed = frozenset(followed)
        self._max_depth = max_depth
        self._cache: OrderedDict[tuple[str, str, str], _Cached] = OrderedDict()
        self._inflight: dict[tuple[str, str, str], asyncio.Future[_Cached]] = {}

    def provisional(self, pod: PodOwnership) -> str:
        """The workload from what is known now: cache, labels, names. No I/O."""
        if (direct := direct_workload(pod, self._followed)) is not None:
            return direct
        ref = controller_of(pod.owners)
        assert ref is not None  # direct_workload handled the no-controller case
        for depth in range(self._max_depth):
            if ref.kind not in self._followed:
                break
            cached = self._cache.get((pod.namespace, ref.kind, ref.name))
            if cached is None or cached.failed_at is not None:
                # Not read yet: the labels' guess for the pod's own owner, else the
                # highest owner known so far.
                return guessed_workload(pod) if depth == 0 else workload_value(ref.kind, ref.name)
            if cached.parent is None:
                break
            ref = cached.parent
        return workload_value(ref.kind, ref.name)

    def needs_lookup(self, pod: PodOwnership) -> bool:
        """True when `resolve` would GET (no fresh cached answer for some hop)."""
        if direct_workload(pod, self._followed) is not None:
            return False
        ref = controller_of(pod.owners)
        assert ref is not None
        for _depth in range(self._max_depth):
            if ref.kind not in self._followed:
                return False
            cached = self._cache.get((pod.namespace, ref.kind, ref.name))
            if cached is None or self._retry_due(cached):
                return True
            if cached.failed_at is not None or cached.parent is None:
                return False
            ref = cached.parent
        return False

    async def resolve(self, pod: PodOwnership) -> str:
        """The final workload, reading controllers upward as far as needed.
        Never raises for lookup failures: falls back to what is known."""
        if (direct := direct_workload(pod, self._followed)) is not None:
            return direct
        ref = controller_of(pod.owners)
        assert ref is not None
        for depth in range(self._max_depth):
            if ref.kind not in self._followed:
                break
            cached = await self._parent_of(pod.namespace, ref)
            if cached.failed_at is not None:
                return guessed_workload(pod) if depth == 0 else workload_value(ref.kind, ref.name)
            if cached.parent is None:
                break
            ref = cached.parent
        return workload_value(ref.kind, ref.name)

    def _retry_due(self, cached: _Cached) -> bool:
        return cached.failed_at is not None and self._clock.monotonic() - cached.failed_at >= self._retry_after_s

    async def _parent_of(self, namespace: str, ref: OwnerRef) -> _Cached:
        key = (namespace, ref.kind, ref.name)
        cached = self._cache.get(key)
        if cached is not None and not self._retry_due(cached):
            self._cache.move_to_end(key)
            return cached
        if (pending := self._inflight.get(key)) is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[_Cached] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            result = await self._fetch(namespace, ref)
            self._store(key, result)
            future.set_result(result)
            return result
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters re-raise it themselves
            raise
        finally:
            del self._inflight[key]

    async def _fetch(self, namespace: str, ref: OwnerRef) -> _Cached:
        try:
            return _Cached(await self._lookup(ref.kind, namespace, ref.name))
        except LookupFailed as failure:
            if self._on_failure is not None:
                self._on_failure(failure)
            return _Cached(None, failed_at=self._clock.monotonic())

    def _store(self, key: tuple[str, str, str], value: _Cached) -> None:
        self._cache[key] = value
        self._cache.move_to_end(key)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
