"""A fake Kubernetes API server on 127.0.0.1 (aiohttp), enough for the identity
sources: real-format PodList/NamespaceList with resourceVersion, watch streams
(ADDED/MODIFIED/DELETED, BOOKMARK, ERROR 410 Gone), ReplicaSet and Job GETs, and
injectable faults (status codes, dropped connections, slow answers).

Every change bumps one global resourceVersion and lands in an event log; a watch
replays the log after its resourceVersion and then waits for new events, like the
real watch cache. `compact()` forgets the log, so a watch from an older version
gets an ERROR event with a 410 Status, as the real server sends it.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

POD_PATH = "/api/v1/pods"
NAMESPACE_PATH = "/api/v1/namespaces"
EVENTS_PATH = "/apis/events.k8s.io/v1/namespaces/{ns}/events"


def status_body(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def make_pod(
    name: str,
    *,
    uid: str,
    namespace: str = "default",
    node: str = "node-a",
    labels: dict[str, str] | None = None,
    owners: list[dict[str, Any]] | None = None,
    containers: dict[str, str] | None = None,  # container name -> "containerd://<id>"
    init_containers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A pod as the API server returns it (enough fields for strict decoders)."""

    def statuses(items: dict[str, str] | None) -> list[dict[str, Any]]:
        return [
            {
                "name": n,
                "containerID": cid,
                "image": f"registry.example/{n}:1",
                "imageID": f"registry.example/{n}@sha256:{'0' * 64}",
                "ready": True,
                "restartCount": 0,
                "started": True,
                "state": {"running": {"startedAt": "2024-05-01T10:00:00Z"}},
            }
            for n, cid in (items or {}).items()
        ]

    names = list((containers or {}).keys()) or ["main"]
    return {
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": uid,
            "creationTimestamp": "2024-05-01T10:00:00Z",
            "labels": labels or {},
            "ownerReferences": owners or [],
        },
        "spec": {"nodeName": node, "containers": [{"name": n, "image": f"registry.example/{n}:1"} for n in names]},
        "status": {
            "phase": "Running",
            "containerStatuses": statuses(containers),
            "initContainerStatuses": statuses(init_containers),
        },
    }


def owner(kind: str, name: str, api_version: str = "apps/v1", controller: bool = True) -> dict[str, Any]:
    return {
        "apiVersion": api_version,
        "kind": kind,
        "name": name,
        "uid": f"uid-{kind.lower()}-{name}",
        "controller": controller,
        "blockOwnerDeletion": True,
    }


def make_namespace(name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "kind": "Namespace",
        "apiVersion": "v1",
        "metadata": {"name": name, "uid": f"uid-ns-{name}", "labels": labels or {}},
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"},
    }


# kind -> (apiVersion, plural) of the owner objects the fake serves to GETs.
OWNED_KINDS = {
    "ReplicaSet": ("apps/v1", "replicasets"),
    "Job": ("batch/v1", "jobs"),
    "StatefulSet": ("apps/v1", "statefulsets"),
    "RayCluster": ("ray.io/v1", "rayclusters"),
}


def make_owned(kind: str, name: str, namespace: str, parent: dict[str, Any] | None) -> dict[str, Any]:
    api_version = OWNED_KINDS[kind][0]
    return {
        "kind": kind,
        "apiVersion": api_version,
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": f"uid-{kind.lower()}-{name}",
            "ownerReferences": [parent] if parent else [],
        },
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "template": {"spec": {"containers": [{"name": "c", "image": "x"}]}},
        },
    }


@dataclass
class Fault:
    """What the next matching request gets instead of a normal answer."""

    kind: str  # "status" | "drop" | "slow" | "gone"
    status: int = 500
    delay_s: float = 0.0
    after_events: int = 0  # "drop"/"gone" on a watch: after this many events


@dataclass
class _Collection:
    path: str
    list_kind: str
    objects: dict[str, dict[str, Any]] = field(default_factory=dict)  # key -> object
    log: list[tuple[int, str, dict[str, Any]]] = field(default_factory=list)  # (rv, type, obj)
    log_start: int = 0  # watches from a version below this get 410


class FakeApiServer:
    def __init__(self) -> None:
        self.version = 100
        self.collections = {
            "pods": _Collection(POD_PATH, "PodList"),
            "namespaces": _Collection(NAMESPACE_PATH, "NamespaceList"),
        }
        self.owned: dict[tuple[str, str, str], dict[str, Any]] = {}  # (kind, ns, name)
        self.nodes: dict[str, dict[str, Any]] = {}  # name -> Node (GET only)
        self.events: list[dict[str, Any]] = []  # events.k8s.io/v1 Events created (POST)
        # (verb, collection) -> faults for the next requests; owner GETs use collection "owned"
        self.faults: dict[tuple[str, str], list[Fault]] = {}
        self._drops = 0  # bumped by drop_watches()
        self.requests: list[tuple[str, str, dict[str, str]]] = []  # (verb, path, query)
        self.authorizations: list[str | None] = []  # Authorization header of each request
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.url = ""

    # ---- lifecycle -------------------------------------------------------------

    async def start(self) -> str:
        app = web.Application()
        app.router.add_get(POD_PATH, self._collection_handler("pods"))
        app.router.add_get(NAMESPACE_PATH, self._collection_handler("namespaces"))
        for kind, (api_version, plural) in OWNED_KINDS.items():
            app.router.add_get(f"/apis/{api_version}/namespaces/{{ns}}/{plural}/{{name}}", self._owned_handler(kind))
        app.router.add_get("/api/v1/nodes/{name}", self._node_handler)
        app.router.add_post(EVENTS_PATH, self._event_handler)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    # ---- state changes -----------------------------------------------------------

    def set_node(self, name: str, labels: dict[str, str], provider_id: str | None = None) -> None:
        """A Node the daemon may GET (zone: auto reads its region label and providerID)."""
        self.nodes[name] = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "uid": f"node-{name}", "resourceVersion": "1", "labels": labels},
            "spec": {"providerID": provider_id} if provider_id else {},
        }

    async def _node_handler(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        self.requests.append(("get", request.path, dict(request.query)))
        node = self.nodes.get(name)
        if node is None:
            return web.json_response(status_body(404, "NotFound", f'nodes "{name}" not found'), status=404)
        return web.json_response(node)

    async def _event_handler(self, request: web.Request) -> web.Response:
        """Create an events.k8s.io/v1 Event: checks what the real server's
        validation checks for the fields the daemon sets; 409 on a name reuse."""
        namespace = request.match_info["ns"]
        self.requests.append(("post", request.path, dict(request.query)))
        fault = self._next_fault("post", "events")
        if fault is not None and fault.kind == "status":
            return web.json_response(status_body(fault.status, "InternalError", "injected"), status=fault.status)
        body = await request.json()
        meta = body.get("metadata") or {}
        problems = [
            f for f in ("eventTime", "reportingController", "reportingInstance", "action", "reason") if not body.get(f)
        ]
        if meta.get("namespace", namespace) != namespace or body.get("apiVersion") != "events.k8s.io/v1":
            problems.append("namespace/apiVersion")
        if not re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", str(body.get("eventTime", ""))):
            problems.append("eventTime (RFC 3339 with microseconds)")
        if len(body.get("note") or "") > 1024:
            problems.append("note longer than 1kB")
        if problems:
            return web.json_response(status_body(422, "Invalid", f"invalid Event: {', '.join(problems)}"), status=422)
        if any(
            e["metadata"]["name"] == meta.get("name") and e["metadata"]["namespace"] == namespace for e in self.events
        ):
            return web.json_response(status_body(409, "AlreadyExists", "events already exists"), status=409)
        self.version += 1
        created = {
            **body,
            "metadata": {
                **meta,
                "namespace": namespace,
                "resourceVersion": str(self.version),
                "uid": f"event-{self.version}",
            },
        }
        self.events.append(created)
        return web.json_response(created, status=201)

    async def apply(self, collection: str, event: str, obj: dict[str, Any]) -> int:
        """ADDED/MODIFIED/DELETED one object; returns its new resourceVersion."""
        coll = self.collections[collection]
        self.version += 1
        obj = json.loads(json.dumps(obj))
        obj["metadata"]["resourceVersion"] = str(self.version)
        key = self._key(obj)
        if event == "DELETED":
            coll.objects.pop(key, None)
        else:
            coll.objects[key] = obj
        coll.log.append((self.version, event, obj))
        async with self._changed:
            self._changed.notify_all()
        return self.version

    async def add_pod(self, pod: dict[str, Any]) -> int:
        return await self.apply("pods", "ADDED", pod)

    async def bookmark(self, collection: str = "pods") -> int:
        """A BOOKMARK event: only metadata.resourceVersion, kind of the collection."""
        self.version += 1
        kind = self.collections[collection].list_kind.removesuffix("List")
        marker = {"kind": kind, "apiVersion": "v1", "metadata": {"resourceVersion": str(self.version)}}
        self.collections[collection].log.append((self.version, "BOOKMARK", marker))
        async with self._changed:
            self._changed.notify_all()
        return self.version

    def compact(self, collection: str = "pods") -> None:
        """Forget history and move on one version (a change nobody saw): a watch
        from any version a client holds now gets 410 Gone."""
        coll = self.collections[collection]
        self.version += 1
        coll.log.clear()
        coll.log_start = self.version + 1

    async def drop_watches(self) -> None:
        """Cut every open watch connection mid-stream (no final chunk)."""
        self._drops += 1
        async with self._changed:
            self._changed.notify_all()

    def set_owned(self, kind: str, namespace: str, name: str, parent: dict[str, Any] | None) -> None:
        self.owned[(kind, namespace, name)] = make_owned(kind, name, namespace, parent)

    def fail(self, verb: str, fault: Fault, times: int = 1, collection: str = "pods") -> None:
        """Fault the next `times` requests of `verb` ("list", "watch", "get") on
        `collection` ("pods", "namespaces"; "get" always uses "owned")."""
        key = (verb, "owned" if verb == "get" else collection)
        self.faults.setdefault(key, []).extend([fault] * times)

    def count(self, verb: str, path_prefix: str = "") -> int:
        return sum(1 for v, p, _ in self.requests if v == verb and p.startswith(path_prefix))

    # ---- handlers ----------------------------------------------------------------

    def _key(self, obj: dict[str, Any]) -> str:
        meta = obj["metadata"]
        return f"{meta.get('namespace', '')}/{meta['name']}"

    def _next_fault(self, verb: str, collection: str) -> Fault | None:
        pending = self.faults.get((verb, collection))
        return pending.pop(0) if pending else None

    def _collection_handler(self, name: str):
        async def handler(request: web.Request) -> web.StreamResponse:
            verb = "watch" if request.query.get("watch") in ("true", "1") else "list"
            self.requests.append((verb, request.path, dict(request.query)))
            self.authorizations.append(request.headers.get("Authorization"))
            fault = self._next_fault(verb, name)
            if fault is not None and fault.kind == "slow":
                await asyncio.sleep(fault.delay_s)
                fault = None
            if fault is not None and fault.kind == "status":
                return web.json_response(status_body(fault.status, "InternalError", "injected"), status=fault.status)
            if fault is not None and fault.kind == "drop" and fault.after_events == 0 and verb == "list":
                request.transport.close()  # type: ignore[union-attr]
                return web.Response()
            coll = self.collections[name]
            if verb == "list":
                return self._list(coll, request)
            return await self._watch(coll, request, fault)

        return handler

    def _selected(self, obj: dict[str, Any], request: web.Request) -> bool:
        selector = request.query.get("fieldSelector", "")
        for term in filter(None, selector.split(",")):
            key, _, value = term.partition("=")
            if key == "spec.nodeName" and obj.get("spec", {}).get("nodeName") != value:
                return False
        return True

    def _list(self, coll: _Collection, request: web.Request) -> web.Response:
        items = [o for o in coll.objects.values() if self._selected(o, request)]
        body = {
            "kind": coll.list_kind,
            "apiVersion": "v1",
            "metadata": {"resourceVersion": str(self.version)},
            "items": items,
        }
        return web.json_response(body)

    async def _watch(self, coll: _Collection, request: web.Request, fault: Fault | None) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        since = int(request.query.get("resourceVersion") or 0)
        timeout = float(request.query.get("timeoutSeconds") or 30)
        if since and since < coll.log_start - 1 or (fault is not None and fault.kind == "gone"):
            gone = status_body(410, "Expired", f"too old resource version: {since} ({coll.log_start})")
            await response.write(json.dumps({"type": "ERROR", "object": gone}).encode() + b"\n")
            return response
        sent = 0
        drops = self._drops
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        cursor = since
        while True:
            for rv, kind, obj in [e for e in coll.log if e[0] > cursor]:
                cursor = rv
                if kind != "BOOKMARK" and not self._selected(obj, request):
                    continue
                if fault is not None and fault.kind == "drop" and sent >= fault.after_events:
                    request.transport.close()  # type: ignore[union-attr]
                    return response
                await response.write(json.dumps({"type": kind, "object": obj}).encode() + b"\n")
                sent += 1
            if fault is not None and fault.kind == "drop" and sent >= fault.after_events:
                request.transport.close()  # type: ignore[union-attr]
                return response
            if self._drops != drops:
                request.transport.close()  # type: ignore[union-attr]
                return response
            remaining = deadline - loop.time()
            if remaining <= 0:
                return response
            async with self._changed:
                try:
                    await asyncio.wait_for(self._changed.wait(), remaining)
                except TimeoutError:
                    pass

    def _owned_handler(self, kind: str):
        async def handler(request: web.Request) -> web.Response:
            ns, name = request.match_info["ns"], request.match_info["name"]
            self.requests.append(("get", request.path, dict(request.query)))
            self.authorizations.append(request.headers.get("Authorization"))
            fault = self._next_fault("get", "owned")
            if fault is not None and fault.kind == "slow":
                await asyncio.sleep(fault.delay_s)
            elif fault is not None:
                return web.json_response(status_body(fault.status, "Forbidden", "injected"), status=fault.status)
            obj = self.owned.get((kind, ns, name))
            if obj is None:
                return web.json_response(status_body(404, "NotFound", f"{kind} {name} not found"), status=404)
            return web.json_response(obj)

        return handler
