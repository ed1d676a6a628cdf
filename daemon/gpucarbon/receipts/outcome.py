"""How a run ended, from what the scheduler reports.

Pods (the object as the API server returns it, a plain dict):
  1. a `DisruptionTarget` condition with status True (Kubernetes >= 1.26):
     PreemptionByScheduler / PreemptionByKubeScheduler -> preempted;
     EvictionByEvictionAPI, TerminationByKubelet, DeletionByTaintManager -> evicted;
     DeletionByPodGC -> deleted;
  2. `status.reason`: Evicted -> evicted, Preempting -> preempted,
     DeadlineExceeded (activeDeadlineSeconds) -> timeout;
  3. phase Succeeded -> succeeded; phase Failed -> failed, or deleted when the
     pod was being deleted and its main container died of the signal that
     deletion sends (exit 137/143, not OOMKilled);
  4. deleted before it reached a terminal phase -> deleted;
  5. anything else -> unknown.
The reason and exit code come from the main container (the one whose process
used the GPU, else the first in the spec): its `state.terminated`, else its
`lastState.terminated` (a container waiting in CrashLoopBackOff).

Slurm job states (scontrol JobState / job_state): COMPLETED -> succeeded;
FAILED, OUT_OF_MEMORY, NODE_FAIL, BOOT_FAIL -> failed (the state is the reason);
CANCELLED -> cancelled; TIMEOUT, DEADLINE -> timeout; PREEMPTED -> preempted.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

PREEMPTED_REASONS = frozenset({"PreemptionByScheduler", "PreemptionByKubeScheduler"})
EVICTED_REASONS = frozenset({"EvictionByEvictionAPI", "TerminationByKubelet", "DeletionByTaintManager"})
DELETED_REASONS = frozenset({"DeletionByPodGC"})
DELETION_SIGNAL_EXITS = frozenset({137, 143})  # 128 + SIGKILL, 128 + SIGTERM

SLURM_STATES = {
    "COMPLETED": "succeeded",
    "FAILED": "failed",
    "OUT_OF_MEMORY": "failed",
    "NODE_FAIL": "failed",
    "BOOT_FAIL": "failed",
    "CANCELLED": "cancelled",
    "TIMEOUT": "timeout",
    "DEADLINE": "timeout",
    "PREEMPTED": "preempted",
}


def pod_outcome(
    pod: Mapping[str, Any], containers: Iterable[str] = (), deleted: bool = False
) -> tuple[str, str, int | None]:
    """(outcome, reason, exit code) of a pod; `containers` are the ones that used
    the GPU (the main container is chosen among them), `deleted` that the API
    server said DELETED."""
    status = pod.get("status") or {}
    main = _main_container(pod, list(containers))
    reason, exit_code = _terminated(main)
    disruption = _disruption(status)
    if disruption is not None:
        if disruption in PREEMPTED_REASONS:
            return "preempted", disruption, exit_code
        if disruption in DELETED_REASONS:
            return "deleted", disruption, exit_code
        return "evicted", disruption, exit_code
    pod_reason = status.get("reason") or ""
    if pod_reason == "Evicted":
        return "evicted", pod_reason, exit_code
    if pod_reason == "Preempting":
        return "preempted", pod_reason, exit_code
    if pod_reason == "DeadlineExceeded":
        return "timeout", pod_reason, exit_code
    phase = status.get("phase") or ""
    being_deleted = deleted or bool((pod.get("metadata") or {}).get("deletionTimestamp"))
    if phase == "Succeeded":
        return "succeeded", reason or "Completed", exit_code
    if phase == "Failed":
        if being_deleted and exit_code in DELETION_SIGNAL_EXITS and reason != "OOMKilled":
            return "deleted", reason or "Deleted", exit_code
        return "failed", reason or pod_reason or "Error", exit_code
    if being_deleted:
        return "deleted", reason or "Deleted", exit_code
    return "unknown", reason or phase, exit_code


def pod_is_final(pod: Mapping[str, Any], deleted: bool) -> bool:
    """True once the pod will run nothing again: terminal phase, or deleted."""
    phase = ((pod.get("status") or {}).get("phase")) or ""
    return deleted or phase in ("Succeeded", "Failed")


def _disruption(status: Mapping[str, Any]) -> str | None:
    for condition in status.get("conditions") or ():
        if condition.get("type") == "DisruptionTarget" and condition.get("status") == "True":
            return condition.get("reason") or "DisruptionTarget"
    return None


def _main_container(pod: Mapping[str, Any], gpu_containers: list[str]) -> Mapping[str, Any] | None:
    statuses = {s.get("name"): s for s in ((pod.get("status") or {}).get("containerStatuses") or ())}
    for name in gpu_containers:
        if name in statuses:
            return statuses[name]
    for container in (pod.get("spec") or {}).get("containers") or ():
        if container.get("name") in statuses:
            return statuses[container["name"]]
    return next(iter(statuses.values()), None)


def _terminated(container: Mapping[str, Any] | None) -> tuple[str, int | None]:
    if container is None:
        return "", None
    for key in ("state", "lastState"):
        terminated = (container.get(key) or {}).get("terminated")
        if terminated:
            code = terminated.get("exitCode")
            return terminated.get("reason") or "", code if isinstance(code, int) else None
    return "", None


def slurm_outcome(state: str) -> tuple[str, str]:
    """(outcome, reason) from a JobState such as "COMPLETED", "CANCELLED by 1000"
    or "FAILED"; anything unknown (RUNNING, a future state) -> unknown."""
    word = (state or "").strip().split(" ", 1)[0].upper()
    outcome = SLURM_STATES.get(word, "unknown")
    return outcome, word


def slurm_exit_code(value: Any) -> int | None:
    """ExitCode "2:0" (text), an int (older JSON) or {"return_code": {"number": 2}}
    (Slurm >= 23.02 JSON) -> 2."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.split(":", 1)[0].strip().isdigit():
        return int(value.split(":", 1)[0])
    if isinstance(value, Mapping):
        code = value.get("return_code")
        if isinstance(code, Mapping):
            return code.get("number") if code.get("set", True) and isinstance(code.get("number"), int) else None
        if isinstance(code, int) and not isinstance(code, bool):
            return code
    return None
