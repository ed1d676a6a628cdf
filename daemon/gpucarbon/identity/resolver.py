"""pid -> Consumer: who a GPU process belongs to.

Order: the simulation's own PIDs; then /proc/<pid>/cgroup -> pod UID (names from
the metadata source when it knows the pod), Slurm job, or plain process. A PID
that vanished or cannot be read still gets its energy under UNRESOLVED.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Protocol, cast

from gpucarbon.identity.health import HealthSnapshot
from gpucarbon.identity.model import CgroupIdentity, Consumer, MetadataSource, PodMeta
from gpucarbon.teams import WORKLOAD_MAX_LEN, sanitise_label_value

UNRESOLVED = Consumer(key="unresolved", workload="unresolved")
PROCFS_SOURCE = "procfs"
# /proc/<pid>/comm keeps the first 15 bytes of "nvidia-cuda-mps-server"; the
# control daemon (nvidia-cuda-mps-control) never holds a GPU context.
MPS_SERVER_COMM = "nvidia-cuda-mps"


class ProcessFacts(Protocol):
    @property
    def user(self) -> str: ...

    @property
    def comm(self) -> str: ...

    @property
    def cgroup(self) -> CgroupIdentity: ...


class LookupFailure(Protocol):
    @property
    def reason(self) -> str: ...  # "vanished", "unreadable", "malformed"


class GenerationalCache(Protocol):
    def next_generation(self) -> object: ...


class SlurmTeams(Protocol):
    def team(self, job_id: str) -> str | None: ...


def pod_name_key(namespace: str, pod: str, container: str) -> str:
    """The provisional key of a container known by name only (kubelet pod-resources)."""
    return f"pod-name/{namespace}/{pod}/{container}"


def pod_consumer(meta: PodMeta, container: str, *provisional_keys: str) -> Consumer:
    """The consumer of a container of a pod the API server knows, the same whether
    a process (resolver) or an allocation (allocations.py) names it, so the two
    paths meet on one key. Its provisional keys become aliases (docs/kubernetes.md,
    "No double counting")."""
    return Consumer(
        key=f"pod/{meta.uid}/{container}",
        namespace=sanitise_label_value(meta.namespace),
        pod=sanitise_label_value(meta.name),
        container=sanitise_label_value(container),
        workload=sanitise_label_value(meta.workload or f"Pod/{meta.name}", WORKLOAD_MAX_LEN),
        team=sanitise_label_value(meta.team),
        aliases=(*provisional_keys, pod_name_key(meta.namespace, meta.name, container)),
    )


class Resolver:
    def __init__(
        self,
        lookup_process: Callable[[int], ProcessFacts | LookupFailure | None],
        metadata: MetadataSource | None = None,
        synthetic: Callable[[int], Consumer | None] | None = None,
        slurm: SlurmTeams | None = None,
        user_teams: Mapping[str, str] | None = None,
        process_cache: GenerationalCache | None = None,
    ) -> None:
        self._lookup = lookup_process
        self._process_cache = process_cache
        self._metadata = metadata
        self._synthetic = synthetic
        self._slurm = slurm
        self._user_teams = dict(user_teams or {})
        self._failures: Counter[str] = Counter()

    def failures(self) -> tuple[tuple[str, int], ...]:
        """PIDs that fell back to UNRESOLVED, by reason, since start."""
        return tuple(sorted(self._failures.items()))

    def health(self) -> HealthSnapshot:
        """The procfs source: always up; lookups that failed, by reason."""
        return HealthSnapshot(PROCFS_SOURCE, True, MappingProxyType(dict(self._failures)))

    def next_poll(self) -> None:
        """A poll finished: the process cache ages by one generation."""
        if self._process_cache is not None:
            self._process_cache.next_generation()

    def consumer(self, pid: int) -> Consumer:
        if self._synthetic is not None:
            found = self._synthetic(pid)
            if found is not None:
                return found
        looked_up = self._lookup(pid)
        if looked_up is None or not hasattr(looked_up, "cgroup"):
            self._failures[getattr(looked_up, "reason", "vanished")] += 1
            return UNRESOLVED
        facts = cast(ProcessFacts, looked_up)  # it has a cgroup: the lookup found the process
        cgroup = facts.cgroup
        if cgroup.pod_uid:
            return self._pod_consumer(cgroup.pod_uid, cgroup.container_id or "")
        if cgroup.slurm_job_id:
            return self._slurm_consumer(cgroup.slurm_job_id, facts.user)
        return self._process_consumer(facts.user, facts.comm)

    def is_mps_server(self, pid: int) -> bool:
        """Whether the process is a CUDA MPS server, which runs its clients'
        kernels and is never charged itself (attribution/sharing.py)."""
        if self._synthetic is not None and self._synthetic(pid) is not None:
            return False
        facts = self._lookup(pid)
        return facts is not None and str(getattr(facts, "comm", "")).startswith(MPS_SERVER_COMM)

    def _pod_consumer(self, uid: str, container_id: str) -> Consumer:
        meta = self._metadata.pod(uid) if self._metadata is not None else None
        if meta is None:
            # Known pod UID, names not (yet) known: energy still lands here.
            short_id = container_id[:12]
            return Consumer(key=f"pod/{uid}/{short_id}", container=short_id, workload=f"Pod/uid-{uid}")
        container = (meta.containers or {}).get(container_id, container_id[:12])
        return pod_consumer(meta, container, f"pod/{uid}/{container_id[:12]}")

    def _slurm_consumer(self, job_id: str, user: str) -> Consumer:
        team = self._slurm.team(job_id) if self._slurm is not None else None
        team = team or self._user_teams.get(user, "")
        workload = sanitise_label_value(f"slurm/{job_id}", WORKLOAD_MAX_LEN)
        return Consumer(key=f"slurm/{job_id}", workload=workload, team=sanitise_label_value(team))

    def _process_consumer(self, user: str, comm: str) -> Consumer:
        workload = sanitise_label_value(f"process/{user}/{comm}", WORKLOAD_MAX_LEN)
        return Consumer(key=workload, workload=workload, team=sanitise_label_value(self._user_teams.get(user)))
