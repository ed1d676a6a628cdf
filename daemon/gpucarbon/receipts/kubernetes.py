"""A pod's end, from the pod objects the Kubernetes source keeps in memory.

`PodObjects` is what identity/kubernetes.py offers: the last object the watch
saw for a pod UID (or namespace/name) and whether it was DELETED. Nothing here
does I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from gpucarbon.receipts.fingerprint import pod_fingerprint
from gpucarbon.receipts.model import Owner, RunFacts, parse_rfc3339
from gpucarbon.receipts.outcome import pod_is_final, pod_outcome
from gpucarbon.receipts.tracker import STILL_RUNNING, RunRef

# apiVersion of well-known top-level owners, for Events regarding them when
# the pod's own ownerReference does not name them (a Job's PyTorchJob, say).
OWNER_API_VERSIONS = {
    "Job": "batch/v1",
    "CronJob": "batch/v1",
    "Deployment": "apps/v1",
    "StatefulSet": "apps/v1",
    "DaemonSet": "apps/v1",
    "ReplicaSet": "apps/v1",
    "JobSet": "jobset.x-k8s.io/v1alpha2",
    "PyTorchJob": "kubeflow.org/v1",
    "TFJob": "kubeflow.org/v1",
    "MPIJob": "kubeflow.org/v2beta1",
    "XGBoostJob": "kubeflow.org/v1",
    "PaddleJob": "kubeflow.org/v1",
    "JAXJob": "kubeflow.org/v1",
    "RayCluster": "ray.io/v1",
    "RayJob": "ray.io/v1",
    "LeaderWorkerSet": "leaderworkerset.x-k8s.io/v1",
}


class PodObjects(Protocol):
    def pod_object(self, uid: str) -> tuple[Mapping[str, Any], bool] | None:
        """(pod as the API server returned it, deleted) or None when unknown."""

    def pod_object_by_name(self, namespace: str, name: str) -> tuple[Mapping[str, Any], bool] | None: ...


class KubernetesRunStatus:
    def __init__(self, pods: PodObjects) -> None:
        self._pods = pods

    def facts(self, run: RunRef):
        if run.kind != "pod":
            return None
        if "/" in run.run_id:  # known by name only (kubelet allocation, metadata never arrived)
            namespace, _, name = run.run_id.partition("/")
            found = self._pods.pod_object_by_name(namespace, name)
        else:
            found = self._pods.pod_object(run.run_id)
        if found is None:
            return None
        pod, deleted = found
        if not pod_is_final(pod, deleted):
            return STILL_RUNNING
        return pod_facts(pod, deleted, run.containers, run.workload)


def pod_facts(pod: Mapping[str, Any], deleted: bool, containers: tuple[str, ...] = (), workload: str = "") -> RunFacts:
    outcome, reason, exit_code = pod_outcome(pod, containers, deleted)
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    return RunFacts(
        outcome=outcome,
        reason=reason,
        exit_code=exit_code,
        started_at=_time(status.get("startTime")),
        finished_at=_finished(status),
        fingerprint=pod_fingerprint(pod),
        owner=top_owner(meta.get("ownerReferences") or (), workload),
        pod_uid=meta.get("uid") or "",
    )


def top_owner(refs, workload: str) -> Owner | None:
    """The run's top-level owner: the workload ("Kind/name") the identity stage
    resolved; the pod's own ownerReference gives its apiVersion and uid when it
    is that object. None for bare pods and unknown kinds."""
    kind, _, name = workload.partition("/")
    if not name or kind == "Pod":
        return None
    for ref in refs:
        if ref.get("kind") == kind and ref.get("name") == name:
            return Owner(ref.get("apiVersion") or OWNER_API_VERSIONS.get(kind, ""), kind, name, ref.get("uid") or "")
    api_version = OWNER_API_VERSIONS.get(kind)
    return Owner(api_version, kind, name) if api_version else None


def _finished(status: Mapping[str, Any]) -> float | None:
    times = [
        _time(((c.get("state") or {}).get("terminated") or {}).get("finishedAt"))
        for c in status.get("containerStatuses") or ()
    ]
    known = [t for t in times if t is not None]
    return max(known) if known else None


def _time(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return parse_rfc3339(value)
    except ValueError:
        return None
