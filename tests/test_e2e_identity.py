"""End to end: the whole real identity path with only the GPU simulated.

The daemon runs as a subprocess with `--simulate` on a scenario whose workloads
are real pids of the fixture procfs tree (tests/fixtures/procfs), so each GPU
process is resolved the way it is on a node: `/proc/<pid>/cgroup` -> pod UID or
Slurm job; pod names, owner and team from a fake Kubernetes API server; who holds
which GPU from a fake kubelet serving PodResources on a unix socket.

    GPU 0  pids 4101+4102  pod ml/bert-train-0, Job bert-train, team from a pod label
    GPU 1  pid 4202        pod serving/vllm-6c9d8f-x2x7q, ReplicaSet -> Deployment vllm,
                           team from the namespace label; ends at 10 s, then deleted
    GPU 2  nothing runs    allocated to research/notebook-0: it pays the idle draw
    GPU 3  pids 4404+4505  Slurm job 4242 (team from a fake scontrol) and Xorg
    GPU 4  pid 4606        pod batch/jax-worker-0, JobSet by its label, team from the
                           static namespace map; the API server learns of it late

The fakes run on their own event loop in a background thread for the life of
the module; the checks read the daemon's /metrics. The tests share one daemon
and run in file order: the last one stops the fake kubelet.
"""

from __future__ import annotations

import asyncio
import json
import math
import shutil
import string
import tempfile
import threading
import time
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from fakes.apiserver import FakeApiServer, make_namespace, make_pod, owner
from fakes.kubelet import FakeKubelet
from fakes.kubelet import pod as kubelet_pod
from fakes.slurm import FakeScontrol
from procs import Daemon, http_get, wait_until
from prometheus_client.parser import text_string_to_metric_families

from gpucarbon.simulation.gpu import gpu_uuid as sim_gpu_uuid
from gpucarbon.simulation.scenario import load_scenario

pytestmark = pytest.mark.e2e

HERE = Path(__file__).resolve().parent
FIXTURES = HERE / "fixtures" / "e2e-identity"
SCENARIO = FIXTURES / "scenario.yaml"
PROCFS = HERE / "fixtures" / "procfs"
NODE = "gpu-node-7"  # config.yaml.in's kubernetes.node_name

IDLE_WATTS = 60.0  # the scenario's idle draw of every GPU
VLLM_END_S = 10.0  # the scenario's end of pid 4202 on GPU 1
MJ = 0.001  # one millijoule, in the exposition's joules
RETENTION_S = 3.0  # config.yaml.in's retention.finished
PATIENCE_S = 30.0  # generous: a loaded 2-core machine

# Pod UIDs and container IDs are the fixture procfs tree's (its README.md).
TRAINER_UID = "6f1b8e2a-3c4d-4e5f-9a0b-1c2d3e4f5a6b"
TRAINER_CID = "ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb"
VLLM_UID = "58e2d9b4-7a1c-4e3f-b6d8-0c2e4a6b8d1f"
VLLM_CID = "c64064614423cb790e88b3e5492ff5ccf673b25ae823089f7a60c65cda24d809"
NOTEBOOK_UID = "9e0c6a4d-2b1f-4c3e-8d7a-6f5e4d3c2b1a"  # no process: in no cgroup
JAX_UID = "0b7f3c1e-9d2a-4f61-8c3b-5e7a9d1f2b4c"
JAX_CID = "cd0aa9856147b6c5b4ff2b7dfee5da20aa38253099ef1b4a64aced233c9afe29"

T = TypeVar("T")


# ---- plumbing ---------------------------------------------------------------------


class LoopThread:
    """An asyncio loop on a daemon thread, for fakes that must keep serving while
    the test thread blocks on HTTP and sleeps."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="e2e-fakes", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = PATIENCE_S) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.run(_cancel_others())  # handlers the servers left (open watches), quietly
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


async def _cancel_others() -> None:
    others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in others:
        task.cancel()
    await asyncio.gather(*others, return_exceptions=True)


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


class Scrape:
    """One /metrics answer, parsed by client_python's own parser."""

    def __init__(self, text: str) -> None:
        self.samples = [
            Sample(s.name, dict(s.labels), s.value)
            for family in text_string_to_metric_families(text)
            for s in family.samples
        ]

    def series(self, name: str, **labels: str) -> list[Sample]:
        return [s for s in self.samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]

    def one(self, name: str, **labels: str) -> Sample:
        found = self.series(name, **labels)
        assert len(found) == 1, f"{name}{labels}: expected one series, got {found}"
        return found[0]

    def total(self, name: str, **labels: str) -> float:
        return math.fsum(s.value for s in self.series(name, **labels))


def gpu_uuid(index: int) -> str:
    """The simulated GPU's UUID (`GPU-<uuid>`), as NVML and the daemon spell it."""
    return sim_gpu_uuid(load_scenario(str(SCENARIO)).seed, index)


# ---- the cluster the fakes pretend to be -----------------------------------------------


def api_pods() -> list[dict]:
    return [
        make_pod(
            "bert-train-0",
            uid=TRAINER_UID,
            namespace="ml",
            node=NODE,
            labels={"team": "nlp", "job-name": "bert-train"},
            owners=[owner("Job", "bert-train", api_version="batch/v1")],
            containers={"trainer": f"containerd://{TRAINER_CID}"},
        ),
        make_pod(
            "vllm-6c9d8f-x2x7q",
            uid=VLLM_UID,
            namespace="serving",
            node=NODE,
            labels={"app": "vllm"},
            owners=[owner("ReplicaSet", "vllm-6c9d8f")],
            containers={"server": f"cri-o://{VLLM_CID}"},
        ),
        make_pod(
            "notebook-0",
            uid=NOTEBOOK_UID,
            namespace="research",
            node=NODE,
            labels={"team": "vision"},
            owners=[owner("StatefulSet", "notebook")],
            containers={"jupyter": f"containerd://{'e' * 64}"},
        ),
        # Another node's pod: the field selector keeps it out.
        make_pod(
            "elsewhere-0",
            uid="00000000-0000-4000-8000-000000000001",
            namespace="ml",
            node="gpu-node-8",
            labels={"team": "nlp"},
        ),
    ]


def late_jax_pod() -> dict:
    """Added only by test_late_metadata_moves_the_pod_to_its_final_labels."""
    return make_pod(
        "jax-worker-0",
        uid=JAX_UID,
        namespace="batch",
        node=NODE,
        labels={"jobset.sigs.k8s.io/jobset-name": "llm-pretrain", "job-name": "llm-pretrain-w-0"},
        containers={"worker": f"containerd://{JAX_CID}"},
    )


def kubelet_pods(*, with_vllm: bool = True) -> list:
    """Each device-ID form the NVIDIA device plugin uses: UUID, index, replica of
    an index; and GKE's plugin's form, a share of /dev/nvidia2 (the simulated
    GPUs' minor numbers are their indices)."""
    pods = [
        kubelet_pod("ml", "bert-train-0", {"trainer": {"nvidia.com/gpu": [gpu_uuid(0)]}}),
        kubelet_pod("research", "notebook-0", {"jupyter": {"nvidia.com/gpu": ["nvidia2/vgpu1"]}}),
        kubelet_pod("batch", "jax-worker-0", {"worker": {"nvidia.com/gpu.shared": ["4::2"]}}),
        kubelet_pod("kube-system", "dns-0", {"coredns": {"cpu.example/other": ["x"]}}),  # holds no GPU
        # A GPU this node does not have (a stale answer): ignored, never a crash.
        kubelet_pod("ml", "ghost-0", {"main": {"nvidia.com/gpu": ["GPU-00000000-0000-0000-0000-000000000000"]}}),
    ]
    if with_vllm:
        pods.append(kubelet_pod("serving", "vllm-6c9d8f-x2x7q", {"server": {"nvidia.com/gpu": ["1"]}}))
    return pods


async def start_api() -> FakeApiServer:
    api = FakeApiServer()
    await api.start()
    await api.apply("namespaces", "ADDED", make_namespace("ml"))
    await api.apply("namespaces", "ADDED", make_namespace("serving", {"team": "inference"}))
    await api.apply("namespaces", "ADDED", make_namespace("research"))
    api.set_owned("Job", "ml", "bert-train", None)
    api.set_owned("ReplicaSet", "serving", "vllm-6c9d8f", owner("Deployment", "vllm"))
    # zone: auto (the default) reads this node: an AWS node in Paris -> France's grid.
    api.set_node(NODE, {"topology.kubernetes.io/region": "eu-west-3"}, "aws:///eu-west-3a/i-0abc")
    for item in api_pods():
        await api.add_pod(item)
    return api


async def start_kubelet(socket_path: Path) -> FakeKubelet:
    kubelet = FakeKubelet(socket_path)
    kubelet.pods = kubelet_pods()
    await kubelet.start()
    return kubelet


async def delete_vllm(api: FakeApiServer, kubelet: FakeKubelet) -> None:
    kubelet.pods = kubelet_pods(with_vllm=False)
    vllm = next(p for p in api_pods() if p["metadata"]["uid"] == VLLM_UID)
    vllm["status"]["phase"] = "Succeeded"
    await api.apply("pods", "DELETED", vllm)


def fill(template: str, **values: str) -> str:
    return string.Template((FIXTURES / template).read_text()).substitute(values)


@dataclass
class Node:
    daemon: Daemon
    api: FakeApiServer
    kubelet: FakeKubelet
    fakes: LoopThread

    def scrape(self) -> Scrape:
        return Scrape(self.daemon.metrics())


@pytest.fixture(scope="module")
def node(tmp_path_factory) -> Iterable[Node]:
    tmp = tmp_path_factory.mktemp("e2e-identity")
    # Unix socket paths are limited to 107 bytes; pytest's tmp paths can be longer.
    socket_dir = Path(tempfile.mkdtemp(prefix="e2ek", dir="/tmp"))
    fakes = LoopThread()
    api = kubelet = daemon = None
    try:
        api = fakes.run(start_api())
        kubelet = fakes.run(start_kubelet(socket_dir / "kubelet.sock"))
        (tmp / "slurm").mkdir()
        scontrol = FakeScontrol(tmp / "slurm")  # job 4242: account "physics"
        (tmp / "kubeconfig.yaml").write_text(fill("kubeconfig.yaml.in", server=api.url))
        (tmp / "config.yaml").write_text(
            fill(
                "config.yaml.in",
                kubeconfig=str(tmp / "kubeconfig.yaml"),
                socket=str(kubelet.socket_path),
                scontrol=str(scontrol.path),
            )
        )
        daemon = Daemon(
            tmp,
            f"--simulate={SCENARIO}",
            f"--config.file={tmp / 'config.yaml'}",
            f"--path.procfs={PROCFS}",
            "--poll.interval=200ms",
            "--log.level=debug",
        )
        daemon.wait_ready(60)
        yield Node(daemon, api, kubelet, fakes)
    finally:
        if daemon is not None:
            daemon.stop()
        if kubelet is not None:
            fakes.run(kubelet.stop())
        if api is not None:
            fakes.run(api.stop())
        fakes.close()
        shutil.rmtree(socket_dir, ignore_errors=True)
    log = daemon.log.read_text(errors="replace")
    assert "Traceback" not in log, log


def wait_scrape(node: Node, check, what: str, timeout: float = PATIENCE_S) -> Scrape:
    """The first scrape for which `check(scrape)` is true; on timeout the
    message carries the daemon's last log lines."""

    def attempt():
        scrape = node.scrape()
        return scrape if check(scrape) else None

    try:
        return wait_until(attempt, timeout, what)
    except AssertionError as err:
        tail = "\n".join(node.daemon.log.read_text(errors="replace").splitlines()[-30:])
        raise AssertionError(f"{err}\n--- daemon log (last lines) ---\n{tail}") from None


def assert_conserved(scrape: Scrape) -> None:
    """The issue's sums, from one scrape: per GPU, workloads + unattributed +
    retired = measured to 1 mJ; teams + unattributed = all GPUs."""
    gpus = scrape.series("gpucarbon_gpu_energy_joules_total")
    assert len(gpus) == 5
    for gpu in gpus:
        uuid = gpu.labels["uuid"]
        parts = (
            scrape.total("gpucarbon_workload_energy_joules_total", uuid=uuid)
            + scrape.total("gpucarbon_gpu_unattributed_energy_joules_total", uuid=uuid)
            + scrape.total("gpucarbon_gpu_retired_energy_joules_total", uuid=uuid)
        )
        assert abs(parts - gpu.value) <= MJ, (uuid, parts, gpu.value)
    teams = scrape.total("gpucarbon_team_energy_joules_total")
    unattributed = scrape.total("gpucarbon_gpu_unattributed_energy_joules_total")
    assert abs(teams + unattributed - scrape.total("gpucarbon_gpu_energy_joules_total")) <= len(gpus) * MJ


# ---- the checks, in the order the scenario unfolds -------------------------------------


def test_kubernetes_pods_get_names_owner_workload_and_team(node):
    expected = {
        gpu_uuid(0): {
            "namespace": "ml",
            "pod": "bert-train-0",
            "container": "trainer",
            "workload": "Job/bert-train",
            "team": "nlp",
        },  # team from the pod label
        gpu_uuid(1): {
            "namespace": "serving",
            "pod": "vllm-6c9d8f-x2x7q",
            "container": "server",
            "workload": "Deployment/vllm",
            "team": "inference",
        },  # from the namespace label
    }

    def named(scrape: Scrape) -> bool:
        # Busy time, not only held time: the pid's process runs (from 2 s) and
        # was resolved to these names, beside the kubelet's allocation.
        busy = [
            scrape.series("gpucarbon_workload_busy_seconds_total", uuid=uuid, **labels)
            for uuid, labels in expected.items()
        ]
        return all(found and found[0].value > 0 for found in busy)

    scrape = wait_scrape(node, named, "pid-backed pods under their Kubernetes names")
    for uuid, labels in expected.items():
        series = scrape.one("gpucarbon_workload_energy_joules_total", uuid=uuid, **labels)
        assert series.value > 0
        assert scrape.one("gpucarbon_workload_busy_seconds_total", uuid=uuid, **labels).value > 0
    # The process path (cgroup -> pod UID -> container name) and the allocation path
    # (kubelet names -> pod UID) meet on one consumer: one holder per GPU, not two.
    holders = wait_scrape(
        node, lambda s: len(s.series("gpucarbon_gpu_allocation_info", uuid=gpu_uuid(0))) == 1, "one holder of GPU 0"
    )
    assert holders.one("gpucarbon_gpu_allocation_info", uuid=gpu_uuid(0)).labels["pod"] == "bert-train-0"
    assert not scrape.series("gpucarbon_workload_energy_joules_total", pod="elsewhere-0")
    assert not scrape.series("gpucarbon_workload_energy_joules_total", pod="ghost-0")


def test_allocated_idle_pod_pays_its_gpus_idle_energy(node):
    notebook = {
        "uuid": gpu_uuid(2),
        "namespace": "research",
        "pod": "notebook-0",
        "container": "jupyter",
        "workload": "StatefulSet/notebook",
        "team": "vision",
    }
    first = wait_scrape(
        node, lambda s: s.series("gpucarbon_gpu_allocation_info", **notebook), "the notebook as holder of GPU 2"
    )
    before = first.one("gpucarbon_workload_energy_joules_total", **notebook).value
    later = wait_scrape(
        node,
        lambda s: s.one("gpucarbon_workload_energy_joules_total", **notebook).value >= before + IDLE_WATTS,
        "a second of idle energy more",
    )
    energy = later.one("gpucarbon_workload_energy_joules_total", **notebook)
    held = later.one("gpucarbon_workload_held_seconds_total", **notebook)
    busy = later.one("gpucarbon_workload_busy_seconds_total", **notebook)
    # Alone on an idle GPU, it pays all of it: idle watts x held seconds. The
    # simulation integrates power exactly and the counter truncates to whole mJ;
    # held time comes from the same readings' time stamps.
    assert energy.value == pytest.approx(IDLE_WATTS * held.value, abs=5 * MJ)
    assert energy.value > before
    assert busy.value == 0.0
    holder = later.one("gpucarbon_gpu_allocation_info", uuid=gpu_uuid(2))  # alone on it
    assert (holder.labels["pod"], holder.labels["team"]) == ("notebook-0", "vision")


JAX_KNOWN_BY_KUBELET = {
    "uuid": gpu_uuid(4),
    "namespace": "batch",
    "pod": "jax-worker-0",
    "container": "worker",
    "workload": "Pod/jax-worker-0",
}
JAX_KNOWN_BY_CGROUP = {"uuid": gpu_uuid(4), "container": JAX_CID[:12], "workload": f"Pod/uid-{JAX_UID}"}
JAX_FINAL = {
    "uuid": gpu_uuid(4),
    "namespace": "batch",
    "pod": "jax-worker-0",
    "container": "worker",
    "workload": "JobSet/llm-pretrain",
    "team": "platform",
}


def jax_seen_without_metadata(scrape: Scrape) -> bool:
    """The process runs (busy time) and both sources have named what they know."""
    by_cgroup = scrape.series("gpucarbon_workload_busy_seconds_total", **JAX_KNOWN_BY_CGROUP)
    return (
        bool(by_cgroup)
        and by_cgroup[0].value > 0
        and bool(scrape.series("gpucarbon_workload_held_seconds_total", **JAX_KNOWN_BY_KUBELET))
    )


def test_pod_unknown_to_the_api_server_still_gets_its_energy(node):
    scrape = wait_scrape(node, jax_seen_without_metadata, "jax-worker-0 named by the kubelet and its cgroup")
    for known in (JAX_KNOWN_BY_KUBELET, JAX_KNOWN_BY_CGROUP):
        assert scrape.one("gpucarbon_workload_energy_joules_total", **known).value > 0
        assert scrape.one("gpucarbon_workload_energy_joules_total", **known).labels["team"] == "unassigned"
    # Until the API server joins them, nothing links the cgroup's pod UID to the
    # kubelet's names (PodResources has no UID): each source's view holds the GPU,
    # as docs/kubernetes.md says, and the energy is split, not duplicated.
    assert len(scrape.series("gpucarbon_gpu_allocation_info", uuid=gpu_uuid(4))) == 2
    assert_conserved(scrape)


def test_late_metadata_moves_the_pod_to_its_final_labels(node):
    wait_scrape(node, jax_seen_without_metadata, "jax-worker-0 named by the kubelet and its cgroup")
    node.fakes.run(node.api.add_pod(late_jax_pod()))
    scrape = wait_scrape(
        node,
        lambda s: (
            s.series("gpucarbon_workload_busy_seconds_total", **JAX_FINAL)
            and s.one("gpucarbon_workload_busy_seconds_total", **JAX_FINAL).value > 0
        ),
        "jax-worker-0 under its final labels",
    )
    holders = wait_scrape(
        node,
        lambda s: len(s.series("gpucarbon_gpu_allocation_info", uuid=gpu_uuid(4))) == 1,
        "one holder of GPU 4 once the API server knows the pod",
    )
    assert holders.one("gpucarbon_gpu_allocation_info", uuid=gpu_uuid(4)).labels["workload"] == "JobSet/llm-pretrain"
    assert_conserved(scrape)


def test_late_metadata_continues_the_same_series(node):
    scrape = wait_scrape(
        node,
        lambda s: s.series("gpucarbon_workload_energy_joules_total", **JAX_FINAL),
        "jax-worker-0 under its final labels",
    )
    attributed = (
        scrape.one("gpucarbon_gpu_energy_joules_total", uuid=gpu_uuid(4)).value
        - scrape.one("gpucarbon_gpu_unattributed_energy_joules_total", uuid=gpu_uuid(4)).value
    )
    assert scrape.one("gpucarbon_workload_energy_joules_total", **JAX_FINAL).value == pytest.approx(attributed, abs=MJ)


def test_slurm_and_host_processes_resolve_through_procfs(node):
    scrape = wait_scrape(
        node,
        lambda s: s.series("gpucarbon_workload_energy_joules_total", workload="slurm/4242", team="physics"),
        "Slurm job 4242 with its account as team",
    )
    slurm = scrape.one("gpucarbon_workload_energy_joules_total", workload="slurm/4242")
    assert slurm.labels["uuid"] == gpu_uuid(3) and slurm.labels["namespace"] == ""
    host = [
        s
        for s in scrape.series("gpucarbon_workload_energy_joules_total", uuid=gpu_uuid(3))
        if s.labels["workload"].startswith("process/")
    ]
    assert [s.labels["workload"] for s in host] in (["process/root/Xorg"], ["process/0/Xorg"])


def test_deleted_pod_keeps_its_energy_in_its_team_total(node):
    vllm = {"uuid": gpu_uuid(1), "pod": "vllm-6c9d8f-x2x7q", "team": "inference"}
    # The scenario's process ends at 10 s: GPU 1 falls back to idle power.
    wait_scrape(
        node,
        lambda s: s.one("gpucarbon_gpu_power_watts", uuid=gpu_uuid(1)).value == IDLE_WATTS,
        "pid 4202 to end",
        timeout=VLLM_END_S + PATIENCE_S,
    )
    node.fakes.run(delete_vllm(node.api, node.kubelet))

    team_history: list[float] = []
    final: list[float] = []  # the series' energy once it holds GPU 1 no more (power 0)

    def retired(scrape: Scrape) -> bool:
        team_history.append(scrape.one("gpucarbon_team_energy_joules_total", team="inference").value)
        assert_conserved(scrape)
        series = scrape.series("gpucarbon_workload_energy_joules_total", **vllm)
        if series and scrape.one("gpucarbon_workload_power_watts", **vllm).value == 0:
            final[:] = [scrape.one("gpucarbon_workload_energy_joules_total", **vllm).value, team_history[-1]]
        return not series

    scrape = wait_scrape(node, retired, f"the deleted pod's series to be retired (retention.finished {RETENTION_S}s)")
    assert team_history == sorted(team_history), f"team counter went down: {team_history}"
    assert final, "the series was seen between its last interval and its retirement"
    series_energy, team_then = final
    team = scrape.one("gpucarbon_team_energy_joules_total", team="inference").value
    # The team's only consumer was this pod (its one series: metadata came first).
    assert team == pytest.approx(series_energy, abs=MJ)
    assert team == team_then, "retiring the series leaves the team total as it was"
    assert scrape.total("gpucarbon_gpu_retired_energy_joules_total", uuid=gpu_uuid(1)) >= series_energy - MJ
    # Nobody holds GPU 1 now: its idle draw is unattributed, not charged to the team.
    time.sleep(1.0)
    again = node.scrape()
    assert again.one("gpucarbon_team_energy_joules_total", team="inference").value == team
    assert not again.series("gpucarbon_gpu_allocation_info", uuid=gpu_uuid(1))
    assert (
        again.one("gpucarbon_gpu_unattributed_energy_joules_total", uuid=gpu_uuid(1)).value
        > scrape.one("gpucarbon_gpu_unattributed_energy_joules_total", uuid=gpu_uuid(1)).value
    )


def test_deleted_pod_gets_one_receipt_and_an_event_on_the_api_server(node):
    """Runs after the deletion above: the pod's receipt (exactly its energy) is
    served by /api/v1/receipts and reaches the API server as an Event."""

    def receipt() -> dict | None:
        status, body = http_get(node.daemon.url + "/api/v1/receipts")
        assert status == 200, body
        found = [r for r in json.loads(body)["receipts"] if r["pod"] == "vllm-6c9d8f-x2x7q"]
        assert len(found) <= 1, found
        return found[0] if found else None

    got = wait_until(receipt, PATIENCE_S, "the deleted pod's receipt")
    assert (got["kind"], got["namespace"], got["team"], got["pod_uid"]) == ("pod", "serving", "inference", VLLM_UID)
    assert got["outcome"] == "succeeded"  # deleted after it completed (phase Succeeded)
    team = node.scrape().one("gpucarbon_team_energy_joules_total", team="inference").value
    assert got["energy_joules"] == pytest.approx(team, abs=MJ)  # the team's only run: all of it, to the mJ

    def events() -> list[dict]:
        return [e for e in node.api.events if e["regarding"].get("uid") == VLLM_UID]

    [event] = wait_until(events, PATIENCE_S, "the receipt Event")
    assert event["reason"] == "GPUEnergyReceipt" and event["type"] == "Normal"
    assert event["regarding"] == {
        "apiVersion": "v1",
        "kind": "Pod",
        "namespace": "serving",
        "name": "vllm-6c9d8f-x2x7q",
        "uid": VLLM_UID,
    }
    assert event["reportingController"] == "gpu-carbon-exporter" and event["reportingInstance"] == NODE
    assert event["note"].startswith("Used ") and "outcome succeeded" in event["note"]
    owners = [e for e in node.api.events if e["regarding"].get("kind") == "Deployment"]
    assert [e["regarding"]["name"] for e in owners] == ["vllm"]  # its top-level owner too


def test_conservation_holds_exactly(node):
    for _ in range(5):
        assert_conserved(node.scrape())
        time.sleep(0.3)


def test_source_health_and_a_kubelet_outage(node):
    scrape = wait_scrape(
        node,
        lambda s: (
            s.one("gpucarbon_source_up", source="kubernetes").value == 1
            and s.one("gpucarbon_source_up", source="podresources").value == 1
        ),
        "both sources up",
    )
    trainer = {"uuid": gpu_uuid(0), "pod": "bert-train-0", "container": "trainer"}
    node.fakes.run(node.kubelet.stop())  # the socket goes away, as when kubelet restarts
    down = wait_scrape(
        node, lambda s: s.one("gpucarbon_source_up", source="podresources").value == 0, "podresources down"
    )
    assert down.total("gpucarbon_source_errors_total", source="podresources") >= 1
    assert down.one("gpucarbon_source_up", source="kubernetes").value == 1
    # Still serving and attributing: the process path needs no kubelet.
    before = down.one("gpucarbon_workload_energy_joules_total", **trainer).value
    later = wait_scrape(
        node,
        lambda s: s.one("gpucarbon_workload_energy_joules_total", **trainer).value > before,
        "attribution to go on without the kubelet",
    )
    assert_conserved(later)
    assert node.daemon.proc.poll() is None
    assert scrape.one("gpucarbon_source_up", source="procfs").value == 1


def test_zone_auto_reads_the_node_and_uses_its_grid(node):
    scrape = wait_scrape(
        node,
        lambda s: s.series("gpucarbon_grid_carbon_intensity_grams_per_kwh", zone="FR"),
        "intensity for the node's zone",
    )
    (intensity,) = scrape.series("gpucarbon_grid_carbon_intensity_grams_per_kwh")
    assert intensity.labels["source"] == "table" and intensity.value < 100  # France: low-carbon grid
    assert ("get", f"/api/v1/nodes/{NODE}", {}) in node.api.requests


def test_unmapped_allocations_are_counted_by_resource(node):
    # ghost-0 holds a GPU this node does not have: counted, never guessed, never a crash.
    scrape = wait_scrape(
        node, lambda s: s.series("gpucarbon_podresources_unmapped_devices"), "the unmapped-devices gauge"
    )
    assert [(s.labels["resource"], s.value) for s in scrape.series("gpucarbon_podresources_unmapped_devices")] == [
        ("nvidia.com/gpu", 1.0)
    ]
    log = node.daemon.log.read_text(errors="replace")
    assert log.count("'GPU-00000000-0000-0000-0000-000000000000' of pod ml/ghost-0") == 1
