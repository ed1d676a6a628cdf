"""Parse /proc/<pid>/cgroup into who the process belongs to.

The kernel writes one line per hierarchy: cgroup v1 `N:controllers:path`, cgroup v2
`0::path` (hybrid hosts have both). From the path we read, when present:

- the Kubernetes pod UID: kubelet's systemd driver names the pod cgroup
  `kubepods[-<qos>]-pod<uid_with_underscores>.slice`, the cgroupfs driver `pod<uid>`
  under a `kubepods` directory;
- the container ID from the container leaf: `cri-containerd-<id>.scope`,
  `crio-<id>[.scope]`, `docker-<id>.scope`, runc's unexpanded systemd form
  `<slice>:cri-containerd:<id>`, or a bare `<id>` (cgroupfs);
- the Slurm job and step: v1 `/slurm/uid_<u>/job_<id>/step_<s>/task_<t>`, v2
  `<root>/job_<id>/step_<s>/...`.

Anything else is a plain host process: `parse_cgroup` returns an empty
CgroupIdentity() for unknown or malformed text and never raises for a str.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from gpucarbon.identity.model import CgroupIdentity

# v1 hierarchies to trust first. Resource controllers hold the workload's own cgroup
# (Slurm v1 places tasks under /slurm only in these); name=systemd may show the unit
# of the daemon that spawned the process instead. The v2 line comes after them so a
# hybrid host is read the same way every time; other v1 hierarchies come last.
_V1_PREFERENCE = ("memory", "pids", "cpu", "cpuacct", "freezer", "devices", "cpuset", "name=systemd")
_UNIFIED_RANK = len(_V1_PREFERENCE)
_OTHER_RANK = _UNIFIED_RANK + 1

# A cgroup is a directory: its name is at most NAME_MAX bytes. Longer components are
# not from the kernel, and skipping them bounds the regex work on hostile input.
_NAME_MAX = 255

_HEX64 = r"[0-9a-f]{64}"
# RFC 4122 UID as the API server spells it (systemd driver swaps '-' for '_'), or
# the 32-hex config hash kubelet uses as the UID of static pods.
_POD_UID = (
    r"[0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12}"
    r"|[0-9a-f]{32}"
)
_SYSTEMD_POD = re.compile(rf"(?:[a-z0-9_.-]*-)?kubepods(?:-[a-z]+)?-pod(?P<uid>{_POD_UID})\.slice")
_CGROUPFS_POD = re.compile(rf"pod(?P<uid>{_POD_UID})")

_CONTAINER_LEAVES: tuple[tuple[re.Pattern[str], str | None], ...] = (
    (re.compile(rf"cri-containerd-(?P<id>{_HEX64})\.scope"), "containerd"),
    # `crio-conmon-<id>.scope` (CRI-O's monitor, beside the container, not in it)
    # never matches: "conmon-" is not hex.
    (re.compile(rf"crio-(?P<id>{_HEX64})(?:\.scope)?"), "cri-o"),
    (re.compile(rf"docker-(?P<id>{_HEX64})\.scope"), "docker"),
)
_BARE_ID = re.compile(_HEX64)
# runc given a systemd cgroupsPath `slice:prefix:name` without systemd cgroups
# managing it leaves the colon form in the path as one component.
_SYSTEMD_TRIPLE = re.compile(rf"(?P<slice>[^:]+):(?P<prefix>cri-containerd|crio|docker):(?P<id>{_HEX64})")
_TRIPLE_LEAF_PREFIX = {"cri-containerd": "cri-containerd-", "crio": "crio-", "docker": "docker-"}
# cgroup v2 appends this to the path of a process whose cgroup was already removed
# (an exiting process); the path before it still says where the process ran.
_DELETED_SUFFIX = " (deleted)"

_SLURM_UID = re.compile(r"uid_\d{1,10}")
_SLURM_JOB = re.compile(r"job_(?P<id>\d{1,20})")
_SLURM_STEP = re.compile(r"step_(?P<step>\d{1,10}|batch|extern|interactive)")

_EMPTY = CgroupIdentity()


def parse_cgroup(text: str) -> CgroupIdentity:
    """Identity of a process from the text of its /proc/<pid>/cgroup.

    Lines are tried in a fixed order of preference (see _V1_PREFERENCE) and the
    first that names a pod, container or Slurm job wins; fields are never mixed
    across lines. Unknown or malformed content gives CgroupIdentity().
    """
    if not isinstance(text, str):
        raise TypeError(f"parse_cgroup needs the file's text as str, got {type(text).__name__}")
    for path in _paths_by_preference(text.splitlines()):
        identity = _parse_path(path)
        if identity != _EMPTY:
            return identity
    return _EMPTY


def _paths_by_preference(lines: Iterable[str]) -> list[str]:
    ranked: list[tuple[int, int, str]] = []
    for order, line in enumerate(lines):
        parts = line.split(":", 2)  # the path itself may contain ':'
        if len(parts) != 3:
            continue
        hierarchy_id, controllers, path = parts
        if not hierarchy_id.isascii() or not hierarchy_id.isdigit() or not path.startswith("/"):
            continue
        ranked.append((_rank(hierarchy_id, controllers), order, path))
    ranked.sort()
    return [path for _, _, path in ranked]


def _rank(hierarchy_id: str, controllers: str) -> int:
    if hierarchy_id == "0" and controllers == "":
        return _UNIFIED_RANK
    ranks = [_V1_PREFERENCE.index(c) for c in controllers.split(",") if c in _V1_PREFERENCE]
    return min(ranks, default=_OTHER_RANK)


def _parse_path(path: str) -> CgroupIdentity:
    components = _components(path)
    if components is None:
        return _EMPTY
    pod_at, pod_uid = _find_pod(components)
    if pod_at is None:
        container = _deepest_container(components)
    elif pod_at + 1 < len(components):
        # The container is the pod cgroup's direct child; deeper cgroups are the
        # container's own business and a missing child means a pod-level process.
        container = _container_leaf(components[pod_at + 1], components[pod_at])
    else:
        container = None
    job_id, step = _find_slurm(components)
    container_id, runtime = container if container else (None, None)
    return CgroupIdentity(
        pod_uid=pod_uid,
        container_id=container_id,
        runtime=runtime,
        slurm_job_id=job_id,
        slurm_step=step,
    )


def _components(path: str) -> list[str] | None:
    """Path components with the colon form expanded; None for impossible paths."""
    components: list[str] = []
    path = path.removesuffix(_DELETED_SUFFIX)
    for name in path.split("/"):
        if name == "":
            continue
        if name in (".", "..") or len(name) > _NAME_MAX:
            return None  # the kernel never writes these: not a real cgroup path
        triple = _SYSTEMD_TRIPLE.fullmatch(name)
        if triple:
            # `<slice>:cri-containerd:<id>` is a pod slice and a container leaf in
            # one name; split it so both are found the usual way.
            components.append(triple["slice"])
            components.append(f"{_TRIPLE_LEAF_PREFIX[triple['prefix']]}{triple['id']}.scope")
        else:
            components.append(name)
    return components


def _find_pod(components: list[str]) -> tuple[int | None, str | None]:
    for at, name in enumerate(components):
        match = _SYSTEMD_POD.fullmatch(name)
        if match is None:
            match = _CGROUPFS_POD.fullmatch(name)
            if match is None or not any("kubepods" in parent for parent in components[:at]):
                continue
        return at, match["uid"].replace("_", "-")
    return None, None


def _deepest_container(components: list[str]) -> tuple[str, str | None] | None:
    for at in range(len(components) - 1, -1, -1):
        parent = components[at - 1] if at > 0 else ""
        container = _container_leaf(components[at], parent)
        if container:
            return container
    return None


def _container_leaf(name: str, parent: str) -> tuple[str, str | None] | None:
    """(container id, runtime) when `name` is a container's cgroup."""
    for pattern, runtime in _CONTAINER_LEAVES:
        match = pattern.fullmatch(name)
        if match:
            return match["id"], runtime
    if _BARE_ID.fullmatch(name):
        # cgroupfs drivers name the leaf by id alone; only Docker's own tree
        # (`/docker/<id>`) says which runtime made it.
        return name, "docker" if parent == "docker" else None
    return None


def _find_slurm(components: list[str]) -> tuple[str | None, str | None]:
    for at, name in enumerate(components):
        job = _SLURM_JOB.fullmatch(name)
        if job is None:
            continue
        step_match = _SLURM_STEP.fullmatch(components[at + 1]) if at + 1 < len(components) else None
        under_uid = at > 0 and _SLURM_UID.fullmatch(components[at - 1]) is not None
        # v1 always nests jobs under uid_<u>; v2 has no uid level, so there the
        # step directory is what says the `job_<n>` directory is Slurm's.
        if step_match or under_uid:
            return job["id"], step_match["step"] if step_match else None
    return None, None
