"""Who a GPU's energy belongs to."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Consumer:
    """An energy consumer. `key` is stable for the consumer's life; the label
    values may improve as metadata arrives (the ledger keys on `key`)."""

    key: str
    namespace: str = ""
    pod: str = ""
    container: str = ""
    workload: str = ""
    team: str = ""
    # Provisional keys the same consumer was booked under before its metadata
    # arrived (container id instead of name, pod name instead of UID); the
    # ledger folds their series into this one so it continues under final labels.
    aliases: tuple[str, ...] = ()

    def labels(self) -> tuple[str, str, str, str, str]:
        return (self.namespace, self.pod, self.container, self.workload, self.team)


@dataclass(frozen=True, slots=True)
class CgroupIdentity:
    """What /proc/<pid>/cgroup tells about a process. All fields optional."""

    pod_uid: str | None = None  # with dashes, as the API server spells it
    container_id: str | None = None  # 64-hex (or runtime-specific) container id
    runtime: str | None = None  # "containerd", "cri-o", "docker" or None
    slurm_job_id: str | None = None
    slurm_step: str | None = None


@dataclass(frozen=True, slots=True)
class PodMeta:
    """Metadata of a pod as the Kubernetes sources know it."""

    uid: str
    namespace: str
    name: str
    workload: str = ""  # "<Kind>/<name>"
    team: str = ""
    containers: Mapping[str, str] | None = None  # container id -> container name


class MetadataSource(Protocol):
    """Resolves pod UIDs to names, workloads and teams (the Kubernetes API source)."""

    def pod(self, uid: str) -> PodMeta | None: ...


class AllocationSource(Protocol):
    """Who holds each GPU by allocation, running or not (kubelet, simulation)."""

    def allocations(self) -> Mapping[str, tuple[Consumer, ...]]:
        """GPU UUID -> consumers holding it."""
