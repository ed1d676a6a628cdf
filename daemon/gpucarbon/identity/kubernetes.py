"""Pod and namespace metadata from the Kubernetes API server, kept in memory.

Two list+watch loops (this node's pods via `fieldSelector=spec.nodeName=<node>`,
and all namespaces for their labels) fill an in-memory index; `pod(uid)` and
`pods_by_name(namespace, name)` read that index and never do I/O, so nothing the
scrape or the poller calls waits on the network.

Failure handling, all without dropping what is already known:
- watch expired (410 Gone, as an HTTP status or an ERROR event): relist;
- dropped or refused connection, 5xx, 403: count the error, mark the source down,
  wait (exponential backoff with jitter, injectable sleep), then relist and watch
  again; objects missing from the relist count as deleted (kept for retention);
- a watch that stays silent longer than `stall_timeout_s` (a half-open TCP
  connection never ends): reconnect from the last resourceVersion, no relist;
- a watch the server ends normally (timeoutSeconds): lightkube reconnects from
  the last resourceVersion by itself.

Owner (workload) lookups that need a GET run in a background task; until they
finish a pod carries the provisional workload from `owners.provisional`.

Deleted pods stay resolvable for `deleted_retention_s`, so the energy of their
last interval still lands on their names.

Static pods: the kubelet runs them under a cgroup named by the manifest's config
hash (32 hex digits), while the API server only has their mirror pod, with its own
`metadata.uid` and the hash in annotation `kubernetes.io/config.mirror`. `pod(uid)`
answers a config hash with the mirror pod, so a static pod's processes and its
allocation meet on the mirror's UID: one series with its real names.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import yaml
from lightkube import AsyncClient, KubeConfig
from lightkube.config.models import Cluster, User
from lightkube.core.exceptions import ApiError, ConfigError
from lightkube.generic_resource import create_namespaced_resource
from lightkube.resources.apps_v1 import ReplicaSet, StatefulSet
from lightkube.resources.batch_v1 import Job
from lightkube.resources.core_v1 import Namespace, Pod

from gpucarbon.backoff import Backoff
from gpucarbon.clock import Clock, Sleep
from gpucarbon.errors import GpuCarbonError
from gpucarbon.identity import health as reasons
from gpucarbon.identity.health import SourceHealth
from gpucarbon.identity.model import PodMeta
from gpucarbon.identity.owners import (
    DEFAULT_MAX_DEPTH,
    FOLLOWED_KINDS,
    LookupFailed,
    OwnerRef,
    OwnerResolver,
    PodOwnership,
    controller_of,
)
from gpucarbon.teams import TeamRules

try:  # lightkube >= 1.0 ships its HTTP client as httpx2, earlier releases use httpx
    import httpx2 as httpx
except ImportError:  # pragma: no cover - depends on the installed lightkube
    import httpx  # type: ignore[no-redef]

log = logging.getLogger(__name__)

SOURCE = "kubernetes"
ALL_NAMESPACES = "*"
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
LIST_CHUNK = 500  # objects per list page
_OWNED_KINDS: dict[str, Any] = {"ReplicaSet": ReplicaSet, "Job": Job, "StatefulSet": StatefulSet}
# Custom resources that may be followed: kind -> (apiVersion when no ownerReference
# named one yet, plural). Other kinds use the apiVersion their ownerReference gives
# and the plural `<kind lowercased>s`.
_CUSTOM_KINDS = {"RayCluster": ("ray.io/v1", "rayclusters")}
MIRROR_ANNOTATION = "kubernetes.io/config.mirror"
CONFIG_HASH_ANNOTATION = "kubernetes.io/config.hash"
_CONFIG_HASH = re.compile(r"[0-9a-f]{32}")


class KubernetesSetupError(GpuCarbonError):
    """The client cannot be built (no kubeconfig, not in a cluster); one line."""


def make_client(
    *,
    server: str | None = None,
    token: str | None = None,
    kubeconfig: str | None = None,
    service_account_dir: str = SERVICE_ACCOUNT_DIR,
    timeout_s: float = 10.0,
) -> AsyncClient:
    """An AsyncClient, from the first of: `server` (+ optional bearer `token`; tests
    and plain-HTTP proxies), a `kubeconfig` file, the in-cluster service account
    (token, CA and $KUBERNETES_SERVICE_HOST/PORT). `timeout_s` bounds every request
    except watches, whose reads are bounded by the stall timeout instead."""
    try:
        if server is not None:
            config = KubeConfig.from_one(cluster=Cluster(server=server), user=User(token=token))
        elif kubeconfig is not None:
            config = KubeConfig.from_file(kubeconfig)
        else:
            config = KubeConfig.from_service_account(service_account_dir)
        return AsyncClient(config, timeout=httpx.Timeout(timeout_s), trust_env=False)
    except (
        ConfigError,
        OSError,
        KeyError,
        ValueError,
        TypeError,
        AttributeError,
        AssertionError,
        yaml.YAMLError,
    ) as err:
        if kubeconfig:
            where = f"kubeconfig {kubeconfig}"
        elif server:
            where = f"kubernetes server {server}"
        else:
            where = f"in-cluster service account {service_account_dir}"
        raise KubernetesSetupError(f"{where}: {_setup_problem(err)}") from None


def _setup_problem(err: Exception) -> str:
    """One line. A YAML error's own text quotes the offending line, which in a
    kubeconfig may hold a token or key: give only the problem and where it is."""
    if isinstance(err, yaml.MarkedYAMLError):
        mark = err.problem_mark
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        return f"not valid YAML: {err.problem or err.context}{at}"
    if isinstance(err, yaml.YAMLError):
        return "not valid YAML"
    if isinstance(err, AttributeError):  # lightkube reads a non-mapping document
        return "not a kubeconfig (expected a mapping with clusters, users and contexts)"
    return f"{type(err).__name__}: {err}"


def status_code(exc: BaseException) -> int | None:
    """The HTTP status of an API failure (ApiError or a bare HTTP status error)."""
    if isinstance(exc, ApiError) and exc.status is not None and exc.status.code:
        return int(exc.status.code)
    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code
    return None


def classify(exc: BaseException) -> str:
    """A short health reason for an exception from the client."""
    code = status_code(exc)
    if code == 410:
        return reasons.WATCH_EXPIRED
    if code in (401, 403):
        return reasons.FORBIDDEN
    if code is not None:
        return reasons.API_ERROR
    if isinstance(exc, (httpx.TimeoutException, TimeoutError)):
        return reasons.TIMEOUT
    if isinstance(exc, httpx.ConnectError):
        return reasons.UNAVAILABLE
    if isinstance(exc, httpx.TransportError):
        return reasons.DISCONNECTED
    return reasons.DECODE


class _WatchStalled(Exception):
    pass


class ListWatch:
    """One list+watch loop over one resource; calls back with objects."""

    def __init__(
        self,
        name: str,
        client: AsyncClient,
        resource: type,
        *,
        on_list: Callable[[list[Any]], None],
        on_event: Callable[[str, Any], None],
        on_state: Callable[[str, bool, str | None], None],
        namespace: str | None = None,
        fields: Mapping[str, str] | None = None,
        sleep: Sleep,
        backoff: Backoff,
        watch_timeout_s: int,
        stall_timeout_s: float,
    ) -> None:
        self.name = name
        self._client = client
        self._resource = resource
        self._on_list = on_list
        self._on_event = on_event
        self._on_state = on_state  # (loop name, ok, error reason or None)
        self._namespace = namespace
        self._fields: dict[str, Any] | None = dict(fields) if fields else None
        self._sleep = sleep
        self._backoff = backoff
        self._watch_timeout_s = watch_timeout_s
        self._stall_timeout_s = stall_timeout_s
        self.version: str | None = None
        self.relists = 0
        self._expired_streak = 0

    async def run(self) -> None:
        while True:
            try:
                if self.version is None:
                    await self._relist()
                await self._watch()
            except asyncio.CancelledError:
                raise
            except _WatchStalled:
                continue  # quiet or half-open stream: reconnect from self.version
            except Exception as exc:  # noqa: BLE001 - every failure is counted, none ends the loop
                await self._recover(exc)

    async def _recover(self, exc: Exception) -> None:
        reason = classify(exc)
        log.warning("kubernetes %s: %s: %s", self.name, reason, exc)
        self._on_state(self.name, False, reason)
        # Relist after every failure, not only 410: the list is this node's pods (or the
        # namespaces), cheap, makes the cache exact again, and is the only answer that
        # proves the server is back (a resumed watch may stay silent for minutes).
        self.version = None
        if reason == reasons.WATCH_EXPIRED:
            self._expired_streak += 1
            if self._expired_streak == 1:
                return  # relist at once; a version expiring again right away backs off
        await self._sleep(self._backoff.next_delay())

    async def _relist(self) -> None:
        listing: Any = self._client.list(
            self._resource, namespace=self._namespace, chunk_size=LIST_CHUNK, fields=self._fields
        )
        items = [item async for item in listing]
        self._on_list(items)
        self.version = listing.resourceVersion
        self.relists += 1
        # The backoff resets on watch events only: a server whose lists work but whose
        # watches fail must not get a relist every `initial_s`.
        self._on_state(self.name, True, None)

    async def _watch(self) -> None:
        stream: Any = self._client.watch(
            self._resource,
            namespace=self._namespace,
            fields=self._fields,
            server_timeout=self._watch_timeout_s,
            resource_version=self.version,
        )
        loop = asyncio.get_running_loop()
        async with contextlib.aclosing(stream) as events:
            try:
                async with asyncio.timeout(self._stall_timeout_s) as deadline:
                    async for kind, obj in events:
                        deadline.reschedule(loop.time() + self._stall_timeout_s)
                        self._handle(kind, obj)
            except TimeoutError:
                raise _WatchStalled() from None

    def _handle(self, kind: str, obj: Any) -> None:
        version = getattr(obj.metadata, "resourceVersion", None) if obj.metadata else None
        if kind in ("ADDED", "MODIFIED", "DELETED"):
            self._on_event(kind, obj)
        if version:
            self.version = version
        self._expired_streak = 0
        self._backoff.reset()
        self._on_state(self.name, True, None)


@dataclass(frozen=True, slots=True)
class _PodFacts:
    """What the API server said about a pod, kept to recompute its metadata."""

    uid: str
    ownership: PodOwnership
    containers: Mapping[str, str]
    config_hash: str | None = None  # set on a static pod's mirror: the UID its cgroup carries


def pod_facts(pod: Any) -> _PodFacts | None:
    """Facts from a lightkube Pod; None for a pod without uid/name/namespace."""
    meta = pod.metadata
    if meta is None or not meta.uid or not meta.name or not meta.namespace:
        return None
    owners = tuple(
        OwnerRef(ref.kind, ref.name, bool(ref.controller), ref.apiVersion or "") for ref in (meta.ownerReferences or ())
    )
    labels = MappingProxyType(dict(meta.labels or {}))
    ownership = PodOwnership(meta.namespace, meta.name, owners, labels)
    return _PodFacts(
        meta.uid, ownership, MappingProxyType(container_names(pod.status)), mirror_config_hash(meta.annotations)
    )


def mirror_config_hash(annotations: Mapping[str, str] | None) -> str | None:
    """The config hash a mirror pod stands for (the UID of the static pod's cgroup),
    None for any other pod. The mirror annotation holds the hash; where it holds
    something else the config.hash annotation does."""
    if not annotations or MIRROR_ANNOTATION not in annotations:
        return None
    for value in (annotations.get(MIRROR_ANNOTATION), annotations.get(CONFIG_HASH_ANNOTATION)):
        if value and _CONFIG_HASH.fullmatch(value):
            return value
    return None


def container_names(status: Any) -> dict[str, str]:
    """container id (runtime prefix `containerd://` stripped) -> container name."""
    names: dict[str, str] = {}
    if status is None:
        return names
    for group in (status.initContainerStatuses, status.containerStatuses, status.ephemeralContainerStatuses):
        for container in group or ():
            if container.containerID:
                names[container.containerID.split("://", 1)[-1]] = container.name
    return names


class KubernetesSource:
    """Implements MetadataSource: `pod(uid)` from memory, filled by `run()`."""

    def __init__(
        self,
        client: AsyncClient,
        *,
        node_name: str,
        teams: TeamRules,
        clock: Clock,
        sleep: Sleep = asyncio.sleep,
        rng: Callable[[], float] = random.random,
        watch_namespaces: bool = True,
        watch_timeout_s: int = 300,
        stall_timeout_s: float | None = None,
        backoff_initial_s: float = 1.0,
        backoff_max_s: float = 60.0,
        deleted_retention_s: float = 600.0,
        owner_cache_size: int = 4096,
        owner_retry_s: float = 60.0,
        owner_follow: Iterable[str] = FOLLOWED_KINDS,
        owner_max_depth: int = DEFAULT_MAX_DEPTH,
    ) -> None:
        if not node_name:
            raise ValueError("kubernetes.node_name: empty: set it or $NODE_NAME (the pod's spec.nodeName)")
        self.health = SourceHealth(SOURCE)
        self._client = client
        self._teams = teams
        self._clock = clock
        self._deleted_retention_s = deleted_retention_s
        self._owner_retry_s = owner_retry_s
        self._resolver = OwnerResolver(
            self._controller_of,
            clock=clock,
            cache_size=owner_cache_size,
            retry_after_s=owner_retry_s,
            on_failure=self._owner_failed,
            followed=owner_follow,
            max_depth=owner_max_depth,
        )
        stall = stall_timeout_s if stall_timeout_s is not None else watch_timeout_s + 30.0
        common = dict(sleep=sleep, watch_timeout_s=watch_timeout_s, stall_timeout_s=stall, on_state=self._loop_state)
        self._loops = [
            ListWatch(
                "pods",
                client,
                Pod,
                namespace=ALL_NAMESPACES,
                fields={"spec.nodeName": node_name},
                on_list=self._pods_listed,
                on_event=self._pod_event,
                backoff=Backoff(backoff_initial_s, backoff_max_s, rng),
                **common,  # type: ignore[arg-type]
            )
        ]
        if watch_namespaces:
            self._loops.append(
                ListWatch(
                    "namespaces",
                    client,
                    Namespace,
                    on_list=self._namespaces_listed,
                    on_event=self._namespace_event,
                    backoff=Backoff(backoff_initial_s, backoff_max_s, rng),
                    **common,  # type: ignore[arg-type]
                )
            )
        self._loop_ok = {loop.name: False for loop in self._loops}
        self._pods: dict[str, PodMeta] = {}
        self._facts: dict[str, _PodFacts] = {}
        self._objects: dict[str, Any] = {}  # uid -> the last Pod object seen (receipts read its status)
        self._by_name: dict[tuple[str, str], str] = {}
        self._by_config_hash: dict[str, str] = {}  # static pod config hash -> mirror pod UID
        self._api_versions: dict[str, str] = {}  # owner kind -> apiVersion seen in ownerReferences
        self._custom_resources: dict[tuple[str, str, str], Any] = {}
        self._deleted_at: dict[str, float] = {}  # uid -> monotonic seconds
        self._namespace_labels: dict[str, Mapping[str, str]] = {}
        self._owner_queue: asyncio.Queue[str] = asyncio.Queue()
        self._queued: set[str] = set()
        self._synced = asyncio.Event()

    # ---- reads: never I/O ---------------------------------------------------

    def pod(self, uid: str) -> PodMeta | None:
        """By UID, or by a static pod's config hash (its cgroup's UID): the mirror pod."""
        meta = self._pods.get(uid)
        if meta is None and (mirror := self._by_config_hash.get(uid)) is not None:
            meta = self._pods.get(mirror)
        return meta

    def pods_by_name(self, namespace: str, name: str) -> PodMeta | None:
        """The live pod of that name (a deleted one until a live one reuses the name)."""
        uid = self._by_name.get((namespace, name))
        return self._pods.get(uid) if uid is not None else None

    def namespace_labels(self, namespace: str) -> Mapping[str, str]:
        return self._namespace_labels.get(namespace, MappingProxyType({}))

    def is_deleted(self, uid: str) -> bool:
        return uid in self._deleted_at

    def pod_object(self, uid: str) -> tuple[dict, bool] | None:
        """(the last Pod object seen, as the API server's JSON, deleted?) for
        receipts: status, spec and owner references; None when unknown."""
        pod = self._objects.get(uid)
        return (pod.to_dict(), uid in self._deleted_at) if pod is not None else None

    def pod_object_by_name(self, namespace: str, name: str) -> tuple[dict, bool] | None:
        uid = self._by_name.get((namespace, name))
        return self.pod_object(uid) if uid is not None else None

    @property
    def synced(self) -> bool:
        """True once the first pod list has arrived."""
        return self._synced.is_set()

    async def wait_synced(self) -> None:
        await self._synced.wait()

    # ---- lifecycle -----------------------------------------------------------

    async def run(self) -> None:
        """Runs the loops until cancelled; never returns on API errors."""
        async with asyncio.TaskGroup() as group:
            for loop in self._loops:
                group.create_task(loop.run(), name=f"kubernetes-{loop.name}")
            group.create_task(self._owner_worker(), name="kubernetes-owners")

    async def close(self) -> None:
        await self._client.close()

    # ---- pods ----------------------------------------------------------------

    def _pods_listed(self, pods: list[Any]) -> None:
        now = self._clock.monotonic()
        seen = set()
        for pod in pods:
            if (facts := pod_facts(pod)) is not None:
                seen.add(facts.uid)
                self._upsert(facts)
                self._objects[facts.uid] = pod
        for uid in self._facts.keys() - seen:
            self._deleted_at.setdefault(uid, now)  # gone while we were not watching
        self._prune(now)
        self._synced.set()

    def _pod_event(self, kind: str, pod: Any) -> None:
        facts = pod_facts(pod)
        if facts is None:
            return
        self._upsert(facts)  # a deleted pod too: its last state labels its final interval
        self._objects[facts.uid] = pod
        if kind == "DELETED":
            self._deleted_at.setdefault(facts.uid, self._clock.monotonic())
        self._prune(self._clock.monotonic())

    def _upsert(self, facts: _PodFacts) -> None:
        self._remember_api_versions(facts.ownership.owners)
        self._deleted_at.pop(facts.uid, None)
        self._facts[facts.uid] = facts
        key = (facts.ownership.namespace, facts.ownership.name)
        current = self._by_name.get(key)
        if current is None or current == facts.uid or current in self._deleted_at:
            self._by_name[key] = facts.uid
        if facts.config_hash is not None:
            mirror = self._by_config_hash.get(facts.config_hash)
            if mirror is None or mirror == facts.uid or mirror in self._deleted_at:
                self._by_config_hash[facts.config_hash] = facts.uid
        self._pods[facts.uid] = self._meta(facts, self._resolver.provisional(facts.ownership))
        if self._resolver.needs_lookup(facts.ownership):
            self._queue_owner(facts.uid)

    def _meta(self, facts: _PodFacts, workload: str) -> PodMeta:
        own = facts.ownership
        team = self._teams.decide(
            namespace=own.namespace,
            pod_labels=own.labels,
            namespace_labels=self._namespace_labels.get(own.namespace),
            workload=workload,
        ).team
        return PodMeta(facts.uid, own.namespace, own.name, workload, team, facts.containers)

    def _prune(self, now: float) -> None:
        expired = [uid for uid, at in self._deleted_at.items() if now - at >= self._deleted_retention_s]
        for uid in expired:
            del self._deleted_at[uid]
            facts = self._facts.pop(uid)
            self._pods.pop(uid, None)
            self._objects.pop(uid, None)
            key = (facts.ownership.namespace, facts.ownership.name)
            if self._by_name.get(key) == uid:
                del self._by_name[key]
            if facts.config_hash is not None and self._by_config_hash.get(facts.config_hash) == uid:
                del self._by_config_hash[facts.config_hash]

    # ---- namespaces ----------------------------------------------------------

    def _namespaces_listed(self, namespaces: list[Any]) -> None:
        fresh: dict[str, Mapping[str, str]] = {
            ns.metadata.name: MappingProxyType(dict(ns.metadata.labels or {}))
            for ns in namespaces
            if ns.metadata and ns.metadata.name
        }
        changed = {
            name
            for name in fresh.keys() | self._namespace_labels.keys()
            if fresh.get(name) != self._namespace_labels.get(name)
        }
        self._namespace_labels = fresh
        self._recompute_teams(changed)

    def _namespace_event(self, kind: str, namespace: Any) -> None:
        if namespace.metadata is None or not namespace.metadata.name:
            return
        name = namespace.metadata.name
        if kind == "DELETED":
            self._namespace_labels.pop(name, None)
        else:
            self._namespace_labels[name] = MappingProxyType(dict(namespace.metadata.labels or {}))
        self._recompute_teams({name})

    def _recompute_teams(self, namespaces: Iterable[str]) -> None:
        wanted = set(namespaces)
        for uid, facts in self._facts.items():
            if facts.ownership.namespace in wanted:
                self._pods[uid] = self._meta(facts, self._pods[uid].workload)

    # ---- owners --------------------------------------------------------------

    def _queue_owner(self, uid: str) -> None:
        if uid not in self._queued:
            self._queued.add(uid)
            self._owner_queue.put_nowait(uid)

    async def _owner_worker(self) -> None:
        while True:
            try:
                uid = await asyncio.wait_for(self._owner_queue.get(), timeout=self._owner_retry_s)
            except TimeoutError:
                self._requeue_unresolved()
                continue
            facts = self._facts.get(uid)
            if facts is None:  # pruned while queued
                self._queued.discard(uid)
                continue
            workload = await self._resolver.resolve(facts.ownership)
            # Discarded only now, so events during the read do not queue the pod twice.
            self._queued.discard(uid)
            current = self._facts.get(uid)
            if current is facts:
                self._pods[uid] = self._meta(facts, workload)
            elif current is not None:
                self._queue_owner(uid)  # a newer event replaced the facts: resolve those

    def _requeue_unresolved(self) -> None:
        for uid, facts in self._facts.items():
            if self._resolver.needs_lookup(facts.ownership):
                self._queue_owner(uid)

    async def _controller_of(self, kind: str, namespace: str, name: str) -> OwnerRef | None:
        resource = self._resource_for(kind)
        try:
            obj: Any = await self._client.get(resource, name, namespace=namespace)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - mapped to a reason, never fatal
            if status_code(exc) == 404:
                return None  # gone: the pod's direct owner is the workload
            raise LookupFailed(classify(exc), f"{kind} {namespace}/{name}: {exc}") from None
        metadata = obj.metadata if obj.metadata is not None else None
        refs = metadata.ownerReferences if metadata is not None else None
        parents = [OwnerRef(r.kind, r.name, bool(r.controller), r.apiVersion or "") for r in refs or ()]
        self._remember_api_versions(parents)
        return controller_of(parents)

    def _resource_for(self, kind: str) -> Any:
        """The lightkube resource class to GET `kind` with; custom resources are
        built from the apiVersion their ownerReferences named."""
        if kind in _OWNED_KINDS:
            return _OWNED_KINDS[kind]
        default_version, plural = _CUSTOM_KINDS.get(kind, ("", kind.lower() + "s"))
        api_version = self._api_versions.get(kind, default_version)
        if "/" not in api_version:
            raise LookupFailed(reasons.API_ERROR, f"{kind}: no apiVersion known to read it with")
        group, version = api_version.split("/", 1)
        key = (group, version, kind)
        if key not in self._custom_resources:
            self._custom_resources[key] = create_namespaced_resource(group, version, kind, plural)
        return self._custom_resources[key]

    def _remember_api_versions(self, refs: Iterable[OwnerRef]) -> None:
        for ref in refs:
            if ref.api_version and "/" in ref.api_version:
                self._api_versions[ref.kind] = ref.api_version

    def _owner_failed(self, failure: LookupFailed) -> None:
        log.warning("kubernetes owner lookup: %s", failure)
        self.health.record_error(reasons.OWNER_LOOKUP, down=False)

    # ---- health --------------------------------------------------------------

    def _loop_state(self, loop: str, ok: bool, reason: str | None) -> None:
        if reason is not None:
            self.health.record_error(reason)
        self._loop_ok[loop] = ok
        if all(self._loop_ok.values()):
            self.health.mark_up()
        else:
            self.health.mark_down()
