"""Kubernetes API source against a fake API server on loopback (real lightkube client)."""

from __future__ import annotations

import asyncio
import json

import pytest
from fakes.apiserver import FakeApiServer, Fault, make_namespace, make_pod, owner
from procs import eventually

from gpucarbon.backoff import Backoff
from gpucarbon.clock import ManualClock
from gpucarbon.identity.kubernetes import (
    KubernetesSetupError,
    KubernetesSource,
    make_client,
)
from gpucarbon.identity.model import MetadataSource
from gpucarbon.teams import TeamRules

CID = "containerd://" + "a" * 64
CID2 = "cri-o://" + "b" * 64
UID1 = "11111111-aaaa-bbbb-cccc-000000000001"
UID2 = "11111111-aaaa-bbbb-cccc-000000000002"
UID3 = "11111111-aaaa-bbbb-cccc-000000000003"


@pytest.fixture
async def api():
    server = FakeApiServer()
    await server.start()
    await server.apply("namespaces", "ADDED", make_namespace("ml", {"team": "research"}))
    await server.apply("namespaces", "ADDED", make_namespace("web", {}))
    yield server
    await server.stop()


class Harness:
    def __init__(self, api: FakeApiServer, **kwargs) -> None:
        self.clock = ManualClock()
        self.sleeps: list[float] = []
        self.api = api
        timeout_s = kwargs.pop("timeout_s", 5.0)
        self.source = KubernetesSource(
            make_client(server=api.url, token="test-token", timeout_s=timeout_s),
            node_name="node-a",
            teams=kwargs.pop("teams", TeamRules(namespaces={"web": "frontend"})),
            clock=self.clock,
            sleep=self._sleep,
            rng=lambda: 0.5,
            watch_timeout_s=kwargs.pop("watch_timeout_s", 5),
            **kwargs,
        )
        self.task: asyncio.Task | None = None

    async def _sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        await asyncio.sleep(0.01)

    async def start(self) -> KubernetesSource:
        self.task = asyncio.create_task(self.source.run())
        await asyncio.wait_for(self.source.wait_synced(), 15)
        return self.source

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await self.task
        await self.source.close()


@pytest.fixture
async def harness(api):
    made: list[Harness] = []

    def make(**kwargs) -> Harness:
        made.append(Harness(api, **kwargs))
        return made[-1]

    yield make
    for h in made:
        await h.stop()


def trainer_pod(**overrides):
    spec = dict(
        uid=UID1,
        namespace="ml",
        labels={"app": "trainer", "pod-template-hash": "7d9f"},
        owners=[owner("ReplicaSet", "trainer-7d9f")],
        containers={"main": CID, "sidecar": CID2},
    )
    spec.update(overrides)
    return make_pod(overrides.pop("name", "trainer-7d9f-x1"), **spec)


async def test_lists_this_nodes_pods_with_names_containers_workload_and_team(api, harness):
    api.set_owned("ReplicaSet", "ml", "trainer-7d9f", owner("Deployment", "trainer"))
    await api.add_pod(trainer_pod())
    await api.add_pod(make_pod("elsewhere", uid=UID2, node="node-b"))
    source = await harness().start()

    meta = source.pod(UID1)
    assert (meta.namespace, meta.name, meta.workload) == ("ml", "trainer-7d9f-x1", "Deployment/trainer")
    assert dict(meta.containers) == {"a" * 64: "main", "b" * 64: "sidecar"}  # runtime prefix stripped
    await eventually(lambda: source.pod(UID1).team == "research")  # namespace label `team`
    assert source.pod(UID2) is None  # another node's pod
    assert source.pods_by_name("ml", "trainer-7d9f-x1").uid == UID1
    assert source.pods_by_name("ml", "absent") is None
    assert source.health.up
    pod_requests = [q for verb, path, q in api.requests if path == "/api/v1/pods"]
    assert all(q["fieldSelector"] == "spec.nodeName=node-a" for q in pod_requests)
    as_protocol: MetadataSource = source  # the poller's seam (checked by type checkers)
    assert as_protocol.pod("no-such-uid") is None


async def test_pod_lookup_never_waits_for_an_owner_read(api, harness):
    # The Deployment is not the one the pod-template-hash rule guesses, so an
    # answer that waited for the GET would name it.
    api.set_owned("ReplicaSet", "ml", "trainer-7d9f", owner("Deployment", "trainer-v2"))
    api.fail("get", Fault("slow", delay_s=1.0))
    await api.add_pod(trainer_pod())
    source = await harness().start()
    # The GET is still in flight: the pod is served at once with the provisional guess.
    assert source.pod(UID1).workload == "Deployment/trainer"
    assert api.count("get") <= 1


async def test_watch_events_add_modify_and_delete(api, harness):
    h = harness(deleted_retention_s=60)
    source = await h.start()
    await api.add_pod(
        make_pod("job-pod", uid=UID2, namespace="web", owners=[owner("PyTorchJob", "llm", "kubeflow.org/v1")])
    )
    await eventually(lambda: source.pod(UID2) is not None)
    assert (source.pod(UID2).workload, source.pod(UID2).team) == ("PyTorchJob/llm", "frontend")

    relabelled = make_pod("job-pod", uid=UID2, namespace="web", labels={"team": "payments"}, containers={"main": CID})
    await api.apply("pods", "MODIFIED", relabelled)
    await eventually(lambda: source.pod(UID2).team == "payments")
    assert dict(source.pod(UID2).containers) == {"a" * 64: "main"}

    await api.apply("pods", "DELETED", relabelled)
    await eventually(lambda: source.is_deleted(UID2))
    assert source.pod(UID2).team == "payments"  # still resolvable for its last interval

    h.clock.advance(61)
    await api.add_pod(make_pod("later", uid=UID3))  # any event prunes expired pods
    await eventually(lambda: source.pod(UID3) is not None)
    assert source.pod(UID2) is None and source.pods_by_name("web", "job-pod") is None


async def test_name_reused_by_a_new_pod_points_at_the_live_one(api, harness):
    source = await harness().start()
    old = make_pod("db-0", uid=UID1, owners=[owner("StatefulSet", "db")])
    await api.add_pod(old)
    await api.apply("pods", "DELETED", old)
    await api.add_pod(make_pod("db-0", uid=UID2, owners=[owner("StatefulSet", "db")]))
    await eventually(lambda: source.pod(UID2) is not None)
    assert source.pods_by_name("default", "db-0").uid == UID2
    assert source.pod(UID1) is not None  # the old one is retained, under its own UID


async def test_bookmark_moves_the_resume_point(api, harness):
    h = harness()
    source = await h.start()
    rv = await api.bookmark()
    await eventually(lambda: h.source._loops[0].version == str(rv))
    assert source.health.up


async def test_watch_expiry_relists_and_notices_deletions_in_the_gap(api, harness):
    await api.add_pod(make_pod("keep", uid=UID1))
    await api.add_pod(make_pod("gone", uid=UID2))
    h = harness()
    source = await h.start()
    pods_loop = h.source._loops[0]
    # A deletion the watch never delivers, then history compacted and the stream cut.
    api.collections["pods"].objects.pop("default/gone")
    api.compact()
    await api.drop_watches()
    await eventually(lambda: pods_loop.relists >= 2)
    await api.add_pod(make_pod("new", uid=UID3))
    await eventually(lambda: source.pod(UID3) is not None)  # watching again after the relist
    assert source.is_deleted(UID2) and source.pod(UID2) is not None  # kept for retention
    assert not source.is_deleted(UID1)
    assert source.health.errors_total("watch_expired") >= 1


async def test_gone_as_an_error_event_relists(api, harness):
    h = harness()
    await h.start()
    relists = h.source._loops[0].relists
    api.fail("watch", Fault("gone"))
    await api.drop_watches()
    await eventually(lambda: h.source._loops[0].relists > relists)
    assert h.source.health.errors_total("watch_expired") >= 1


async def test_server_errors_back_off_and_keep_last_known_metadata(api, harness):
    await api.add_pod(make_pod("survivor", uid=UID1, labels={"team": "ml"}))
    h = harness()
    source = await h.start()
    api.fail("watch", Fault("status", status=500), times=3)
    await api.drop_watches()
    await eventually(lambda: source.health.errors_total("api_error") >= 3)
    assert source.pod(UID1).team == "ml"  # nothing forgotten while the server failed
    assert h.sleeps[:3] == [0.75, 1.5, 3.0]  # 1, 2, 4 s steps with equal jitter at rng=0.5
    await eventually(lambda: source.health.up)  # recovered: the relist answered
    assert h.source._loops[0].relists == 4  # the first list, then one per failure


async def test_connection_cut_mid_stream_relists_and_watches_again(api, harness):
    h = harness()
    source = await h.start()
    api.fail("watch", Fault("drop", after_events=1))
    await api.drop_watches()  # the next watch request gets the fault
    await api.add_pod(make_pod("first", uid=UID1))
    await api.add_pod(make_pod("second", uid=UID2))
    await eventually(lambda: source.pod(UID2) is not None)
    assert source.pod(UID1) is not None
    assert source.health.errors_total("disconnected") == 1
    await eventually(lambda: source.health.up)
    assert h.source._loops[0].relists == 2


async def test_failing_initial_list_is_retried_and_counted(api, harness):
    api.fail("list", Fault("status", status=503), times=2)
    await api.add_pod(make_pod("p", uid=UID1))
    h = harness()
    source = await h.start()
    assert source.pod(UID1) is not None
    assert source.health.errors_total("api_error") == 2
    assert len(h.sleeps) >= 2


async def test_dropped_list_connection_is_a_disconnect(api, harness):
    api.fail("list", Fault("drop"))
    h = harness()
    source = await h.start()
    assert source.health.errors_total("disconnected") + source.health.errors_total("unavailable") >= 1


async def test_slow_list_beyond_the_timeout_is_retried(api, harness):
    api.fail("list", Fault("slow", delay_s=1.0))
    h = harness(timeout_s=0.3)
    source = await h.start()
    assert source.health.errors_total("timeout") >= 1
    assert source.synced


async def test_silent_watch_is_reconnected_from_its_version(api, harness):
    h = harness(watch_timeout_s=30, stall_timeout_s=0.3)
    await h.start()
    watches = api.count("watch", "/api/v1/pods")
    await eventually(lambda: api.count("watch", "/api/v1/pods") > watches)
    last = [q for verb, path, q in api.requests if verb == "watch" and path == "/api/v1/pods"][-1]
    assert last["resourceVersion"] == h.source._loops[0].version
    assert h.source._loops[0].relists == 1


async def test_namespace_label_change_recomputes_teams(api, harness):
    await api.add_pod(make_pod("p", uid=UID1, namespace="ml"))
    source = await harness().start()
    await eventually(lambda: source.pod(UID1).team == "research")
    await api.apply("namespaces", "MODIFIED", make_namespace("ml", {"team": "platform"}))
    await eventually(lambda: source.pod(UID1).team == "platform")
    assert source.namespace_labels("ml")["team"] == "platform"


async def test_job_owned_by_cronjob_and_forbidden_reads(api, harness):
    api.set_owned("Job", "ml", "nightly-1", owner("CronJob", "nightly", "batch/v1"))
    await api.add_pod(make_pod("n", uid=UID1, namespace="ml", owners=[owner("Job", "nightly-1", "batch/v1")]))
    source = await harness().start()
    await eventually(lambda: source.pod(UID1).workload == "CronJob/nightly")

    api.fail("get", Fault("status", status=403))
    await api.add_pod(
        make_pod(
            "r", uid=UID2, namespace="ml", labels={"pod-template-hash": "5c"}, owners=[owner("ReplicaSet", "api-5c")]
        )
    )
    await eventually(lambda: source.health.errors_total("owner_lookup") == 1)
    assert source.pod(UID2).workload == "Deployment/api"  # pod-template-hash fallback
    assert source.health.up  # an owner read failing does not take the source down


async def test_deleted_replicaset_means_the_replicaset_is_the_workload(api, harness):
    await api.add_pod(make_pod("r", uid=UID1, owners=[owner("ReplicaSet", "lonely")]))
    source = await harness().start()
    await eventually(lambda: api.count("get") == 1)
    await eventually(lambda: source.pod(UID1).workload == "ReplicaSet/lonely")


async def test_bearer_token_is_sent_on_every_request(api, harness):
    await harness().start()
    assert api.authorizations and set(api.authorizations) == {"Bearer test-token"}


def test_kubeconfig_file_outside_the_cluster(tmp_path):
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "dev",
        "clusters": [{"name": "dev", "cluster": {"server": "http://127.0.0.1:1"}}],
        "users": [{"name": "me", "user": {"token": "abc"}}],
        "contexts": [{"name": "dev", "context": {"cluster": "dev", "user": "me", "namespace": "ml"}}],
    }
    path = tmp_path / "kubeconfig"
    path.write_text(json.dumps(config))
    client = make_client(kubeconfig=str(path))
    assert str(client._client.config.cluster.server) == "http://127.0.0.1:1"


def test_missing_kubeconfig_names_the_file(tmp_path):
    with pytest.raises(KubernetesSetupError, match=f"kubeconfig {tmp_path}/nope"):
        make_client(kubeconfig=str(tmp_path / "nope"))


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('users:\n- name: me\n  user: {token: "s3cret-token\n', "not valid YAML: found unexpected end of stream"),
        (
            "users:\n- name: me\n  user:\n    token: s3cret-token: x\n",
            "not valid YAML: mapping values are not allowed here at line 4, column 24",
        ),
        ("- token: s3cret-token\n", "not a kubeconfig"),
    ],
)
def test_broken_kubeconfig_is_one_line_naming_the_file_never_the_token(tmp_path, text, problem):
    path = tmp_path / "kubeconfig"
    path.write_text(text)
    with pytest.raises(KubernetesSetupError) as err:
        make_client(kubeconfig=str(path))
    message = str(err.value)
    assert message.startswith(f"kubeconfig {path}: {problem}")
    assert "s3cret" not in message and "\n" not in message


def self_signed_ca_pem() -> bytes:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test-ca")])
    now = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def write_service_account(directory, ca: bytes) -> None:
    (directory / "token").write_text("sa-token")
    (directory / "namespace").write_text("gpu-carbon")
    (directory / "ca.crt").write_bytes(ca)


def test_in_cluster_service_account(tmp_path, monkeypatch):
    write_service_account(tmp_path, self_signed_ca_pem())
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    client = make_client(service_account_dir=str(tmp_path))
    assert client._client.config.cluster.server == "https://10.0.0.1:443"


def test_in_cluster_with_a_broken_ca_names_the_directory(tmp_path, monkeypatch):
    write_service_account(tmp_path, b"")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    with pytest.raises(KubernetesSetupError, match=f"in-cluster service account {tmp_path}: SSLError"):
        make_client(service_account_dir=str(tmp_path))


def test_in_cluster_without_service_account_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(KubernetesSetupError, match="in-cluster service account"):
        make_client(service_account_dir=str(tmp_path / "none"))


def test_empty_node_name_is_rejected():
    with pytest.raises(ValueError, match="node_name"):
        KubernetesSource(make_client(server="http://127.0.0.1:1"), node_name="", teams=TeamRules(), clock=ManualClock())


def test_backoff_doubles_to_its_cap_with_jitter():
    backoff = Backoff(1.0, 8.0, rng=lambda: 1.0)
    assert [backoff.next_delay() for _ in range(5)] == [1.0, 2.0, 4.0, 8.0, 8.0]
    backoff = Backoff(1.0, 8.0, rng=lambda: 0.0)
    assert [backoff.next_delay() for _ in range(2)] == [0.5, 1.0]
    backoff.reset()
    assert backoff.next_delay() == 0.5


def test_documented_rbac_is_valid_and_read_only():
    import pathlib

    import kubernetes_validate
    import yaml

    doc = (pathlib.Path(__file__).parent.parent / "docs" / "kubernetes.md").read_text()
    block = doc.split("## RBAC", 1)[1].split("```yaml", 1)[1].split("```", 1)[0]
    objects = [o for o in yaml.safe_load_all(block) if o]
    for obj in objects:
        kubernetes_validate.validate(obj, kubernetes_validate.latest_version(), strict=True)
    role = next(o for o in objects if o["kind"] == "ClusterRole")
    verbs = {verb for rule in role["rules"] for verb in rule["verbs"]}
    assert verbs <= {"get", "list", "watch"}
    granted = {
        (group, resource) for rule in role["rules"] for group in rule["apiGroups"] for resource in rule["resources"]
    }
    assert granted == {("", "pods"), ("", "namespaces"), ("", "nodes"), ("apps", "replicasets"), ("batch", "jobs")}
    assert not any("*" in str(rule) for rule in role["rules"])


# ---- static pods: the cgroup carries the config hash, the API server the mirror pod --------


async def test_a_static_pod_and_its_mirror_pod_are_one_consumer(api, harness):
    from dataclasses import dataclass
    from pathlib import Path

    import yaml

    from gpucarbon.identity.allocations import KubeletAllocations
    from gpucarbon.identity.cgroup import parse_cgroup
    from gpucarbon.identity.devices import GpuInventory
    from gpucarbon.identity.model import CgroupIdentity
    from gpucarbon.identity.podresources import ContainerKey, GpuAllocations
    from gpucarbon.identity.resolver import Resolver

    fixture = yaml.safe_load(
        (Path(__file__).parent / "fixtures" / "kubernetes" / "static-pod-etcd-minikube.yaml").read_text()
    )
    mirror = fixture["mirror_pod"]
    mirror["spec"]["nodeName"] = "node-a"  # the harness watches node-a
    config_hash = mirror["metadata"]["annotations"]["kubernetes.io/config.mirror"]
    mirror_uid = mirror["metadata"]["uid"]
    await api.add_pod(mirror)
    source = await harness().start()

    cgroup = parse_cgroup(fixture["process_cgroup"])
    assert cgroup.pod_uid == config_hash != mirror_uid
    meta = source.pod(config_hash)
    assert (meta.uid, meta.namespace, meta.name, meta.workload) == (
        mirror_uid,
        "kube-system",
        "etcd-minikube",
        "Pod/etcd-minikube",
    )

    @dataclass
    class Facts:
        user: str
        comm: str
        cgroup: CgroupIdentity

    by_process = Resolver(lambda pid: Facts("root", "etcd", cgroup), metadata=source).consumer(1234)

    class Kubelet:
        def holders_by_gpu(self, normalise) -> GpuAllocations:
            return GpuAllocations({"GPU-0": (ContainerKey(**fixture["kubelet_allocation"]),)})

    allocations = KubeletAllocations(Kubelet(), source, lambda: GpuInventory({"GPU-0": 0}))
    [by_allocation] = allocations.allocations()["GPU-0"]

    assert by_process.key == by_allocation.key == f"pod/{mirror_uid}/etcd"
    assert (
        by_process.labels()
        == by_allocation.labels()
        == ("kube-system", "etcd-minikube", "etcd", "Pod/etcd-minikube", "unassigned")
    )
    # Booked under the hash before the mirror pod was known: that series folds into this one.
    assert f"pod/{config_hash}/{cgroup.container_id[:12]}" in by_process.aliases


def test_only_a_mirror_pod_has_a_config_hash():
    from gpucarbon.identity.kubernetes import mirror_config_hash

    digest = "9d80efa9dfda66b126ec4f9b5f7a004f"
    assert mirror_config_hash({"kubernetes.io/config.mirror": digest}) == digest
    assert (
        mirror_config_hash(
            {
                "kubernetes.io/config.mirror": "mirror",  # older test value
                "kubernetes.io/config.hash": digest,
            }
        )
        == digest
    )
    assert mirror_config_hash({"kubernetes.io/config.hash": digest}) is None  # the static pod itself
    assert mirror_config_hash({"kubernetes.io/config.mirror": "../../etc"}) is None
    assert mirror_config_hash(None) is None


# ---- owners deeper than one hop: KubeRay's RayJob / RayService chains ---------------------


def _kuberay_chains():
    from pathlib import Path

    import yaml

    path = Path(__file__).parent / "fixtures" / "kubernetes" / "kuberay-owner-chains.yaml"
    return yaml.safe_load(path.read_text())["chains"]


@pytest.mark.parametrize("follow_raycluster", [True, False], ids=["RayCluster followed", "default"])
async def test_kuberay_pods_are_named_by_their_rayjob_or_rayservice(api, harness, follow_raycluster):
    chains = _kuberay_chains()
    for i, chain in enumerate(chains):
        for parent in chain["parents"]:
            ctl = parent["controller"]
            api.set_owned(
                parent["kind"],
                "ml",
                parent["name"],
                owner(ctl["kind"], ctl["name"], api_version=ctl["apiVersion"]) if ctl else None,
            )
        ref = chain["owner"]
        await api.add_pod(
            make_pod(
                chain["pod"],
                uid=f"22222222-aaaa-bbbb-cccc-00000000000{i}",
                namespace="ml",
                labels=chain["labels"],
                owners=[owner(ref["kind"], ref["name"], api_version=ref["apiVersion"])],
            )
        )
    follow = ("ReplicaSet", "Job", "RayCluster") if follow_raycluster else ("ReplicaSet", "Job")
    source = await harness(owner_follow=follow).start()
    for i, chain in enumerate(chains):
        uid = f"22222222-aaaa-bbbb-cccc-00000000000{i}"
        expected = chain["workload"] if follow_raycluster else chain["without_follow"]
        await eventually(lambda uid=uid, expected=expected: source.pod(uid).workload == expected)
    reads = [path for verb, path, _ in api.requests if verb == "get"]
    assert ("/apis/ray.io/v1/namespaces/ml/rayclusters/rayjob-sample-raycluster-9c546" in reads) == follow_raycluster


async def test_the_chain_stops_at_max_depth(api, harness):
    # A Job owned by a RayCluster owned by a RayJob: two reads; max_depth 1 stops at the first.
    api.set_owned("Job", "ml", "sub", owner("RayCluster", "rc", api_version="ray.io/v1"))
    api.set_owned("RayCluster", "ml", "rc", owner("RayJob", "rj", api_version="ray.io/v1"))
    await api.add_pod(make_pod("sub-x", uid=UID1, namespace="ml", owners=[owner("Job", "sub", api_version="batch/v1")]))
    deep = await harness(owner_follow=("Job", "RayCluster"), owner_max_depth=2).start()
    await eventually(lambda: deep.pod(UID1).workload == "RayJob/rj")


async def test_the_chain_stops_at_max_depth_one(api, harness):
    api.set_owned("Job", "ml", "sub", owner("RayCluster", "rc", api_version="ray.io/v1"))
    api.set_owned("RayCluster", "ml", "rc", owner("RayJob", "rj", api_version="ray.io/v1"))
    await api.add_pod(make_pod("sub-x", uid=UID1, namespace="ml", owners=[owner("Job", "sub", api_version="batch/v1")]))
    shallow = await harness(owner_follow=("Job", "RayCluster"), owner_max_depth=1).start()
    await eventually(lambda: shallow.pod(UID1).workload == "RayCluster/rc")
    assert api.count("get", "/apis/ray.io") == 0


async def test_a_forbidden_custom_resource_read_keeps_the_best_known_owner(api, harness):
    await api.add_pod(
        make_pod(
            "w-0",
            uid=UID1,
            namespace="ml",
            labels={"ray.io/cluster": "rc"},
            owners=[owner("RayCluster", "rc", api_version="ray.io/v1")],
        )
    )
    api.fail("get", Fault("status", status=403))
    source = await harness(owner_follow=("RayCluster",)).start()
    await eventually(lambda: source.health.errors_total("owner_lookup") >= 1)
    assert source.pod(UID1).workload == "RayCluster/rc"  # the pod's own owner, from its ownerReference
