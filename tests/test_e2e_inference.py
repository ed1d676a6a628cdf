"""End to end: a real Prometheus scrapes the daemon (--simulate) and the simulated
serving engines' listener, evaluates prometheus/rules/gpucarbon-inference.yaml,
and the per-token figure equals the simulation's true energy / true tokens.

The scenario below puts each case on its own GPUs:
  GPU 0   Deployment/chat (vLLM), pod chat-0 at 0.6 SM utilization, 900 tokens/s
  GPU 1   Deployment/chat, pod chat-1: an idle replica (context open, no tokens);
          the workload pays its energy
  GPU 2   two pods of different teams time-slicing: vLLM (team nlp) and SGLang (team search)
  GPU 3   Deployment/summarize (TGI)
  GPU 4   Deployment/vision (Triton): requests, no tokens

The rules' 5-minute windows are wall-clock windows to Prometheus; with the
simulation 20x faster than real time, the rules are loaded with `[5m]` written
as `[15s]`, which is 5 simulated minutes, so that the windows fill in a test's
time. (A window only partly covered by data would bias rate(): it divides by
the whole window.)

"True" figures come from outside the rules: the GPUs' measured energy counters
on the daemon's /metrics (the simulated NVML counter, integrated exactly) and the
engines' counters on the serving listener, each read twice, a few simulated
minutes apart.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.parse
from pathlib import Path

import pytest
from procs import Daemon, Prometheus, free_port, http_get, prometheus_binary, wait_until

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parent.parent
RULES = [
    REPO / "prometheus" / "rules" / "gpucarbon-recording.yaml",
    REPO / "prometheus" / "rules" / "gpucarbon-inference.yaml",
]
SPEED = 20  # simulated seconds per wall second
WINDOW = "15s"  # 5 simulated minutes of wall time, in place of the rules' [5m]
TRUTH_WINDOW_S = 15.0  # wall seconds between the two readings: 5 simulated minutes

SCENARIO = """
speed: 20
seed: 3
gpus:
  - {model: NVIDIA H100 80GB HBM3, count: 5, idle_watts: 70, context_watts: 118, max_watts: 700}
workloads:
  - {namespace: llm, pod: chat-0, container: vllm, workload: Deployment/chat, team: nlp, gpus: [0], sm_util: 0.6,
     serving: {engine: vllm, model: meta-llama/Llama-3.1-8B-Instruct, generated_tokens_per_second: 900,
               prompt_tokens_per_second: 2400, requests_per_second: 6}}
  - {namespace: llm, pod: chat-1, container: vllm, workload: Deployment/chat, team: nlp, gpus: [1], sm_util: 0.0,
     serving: {engine: vllm, model: meta-llama/Llama-3.1-8B-Instruct, generated_tokens_per_second: 0,
               requests_per_second: 0}}
  - {namespace: shared, pod: llama-0, container: vllm, workload: Deployment/llama, team: nlp, gpus: [2], sm_util: 0.3,
     serving: {engine: vllm, model: llama, generated_tokens_per_second: 400, requests_per_second: 2}}
  - {namespace: shared, pod: qwen-0, container: sglang, workload: Deployment/qwen, team: search, gpus: [2],
     sm_util: 0.2, serving: {engine: sglang, model: qwen, generated_tokens_per_second: 300, requests_per_second: 3}}
  - {namespace: docs, pod: summarize-0, container: tgi, workload: Deployment/summarize, team: search, gpus: [3],
     sm_util: 0.5, serving: {engine: tgi, generated_tokens_per_second: 500, prompt_tokens_per_second: 4000,
                             requests_per_second: 2.5}}
  - {namespace: vision, pod: resnet-0, container: triton, workload: Deployment/vision, team: vision, gpus: [4],
     sm_util: 0.4, serving: {engine: triton, model: resnet50, requests_per_second: 40}}
"""


def _value(text: str, name: str, **labels: str) -> float:
    """Sum of a family's samples whose labels include `labels` (exposition text)."""
    total, found = 0.0, False
    for line in text.splitlines():
        match = re.match(r"^([^\s{#]+)(?:\{([^}]*)\})? (\S+)$", line)
        if not match or match.group(1) != name:
            continue
        have = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(2) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(match.group(3))
            found = True
    assert found, f"{name}{labels} not in the exposition"
    return total


class Stack:
    def __init__(self, daemon: Daemon, serving_url: str, prom: Prometheus) -> None:
        self.daemon, self.serving_url, self.prom = daemon, serving_url, prom

    def read(self) -> tuple[str, str]:
        """The daemon's and the engines' expositions, fetched back to back."""
        status, engines = http_get(self.serving_url)
        assert status == 200, engines
        return self.daemon.metrics(), engines.decode()

    def rule(self, promql: str) -> dict[str, float]:
        return {row["metric"].get("workload", ""): float(row["value"][1]) for row in self.prom.query(promql)}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("inference")
    scenario = tmp / "scenario.yaml"
    scenario.write_text(SCENARIO)
    serving_port = free_port()
    rules = []
    for path in RULES:
        copy = tmp / path.name
        copy.write_text(path.read_text().replace("[5m]", f"[{WINDOW}]"))
        rules.append(str(copy))
    daemon = Daemon(
        tmp, f"--simulate={scenario}", f"--simulate.serving-address=127.0.0.1:{serving_port}", "--poll.interval=100ms"
    )
    prom = None
    try:
        daemon.wait_ready()
        prom = Prometheus(tmp, [f"127.0.0.1:{daemon.port}", f"127.0.0.1:{serving_port}"], rule_files=rules)
        yield Stack(daemon, f"http://127.0.0.1:{serving_port}/metrics", prom)
    finally:
        if prom is not None:
            prom.proc.terminate()
            prom.proc.wait(10)
        daemon.stop()


def test_the_daemon_never_serves_the_engines_series(stack: Stack) -> None:
    daemon_text, engines = stack.read()
    assert "vllm:generation_tokens_total" in engines and "tgi_request_success" in engines
    assert not re.search(r"^(vllm:|sglang[:_]|tgi_|nv_inference_)", daemon_text, flags=re.M)


def test_per_token_rule_equals_true_energy_over_true_tokens(stack: Stack) -> None:
    wait_until(
        lambda: (
            stack.rule("namespace_workload:gpucarbon_energy_per_token_joules:rate5m").keys()
            >= {"Deployment/chat", "Deployment/summarize"}
        ),
        60,
        "the per-token rule",
    )
    time.sleep(16)  # the rate windows fill
    daemon0, engines0 = stack.read()
    time.sleep(TRUTH_WINDOW_S)
    daemon1, engines1 = stack.read()
    time.sleep(1.5)  # a scrape and an evaluation after the second reading

    def delta(name: str, before: str, after: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    chat_joules = sum(delta("gpucarbon_gpu_energy_joules_total", daemon0, daemon1, gpu=g) for g in ("0", "1"))
    chat_tokens = delta("vllm:generation_tokens_total", engines0, engines1, pod="chat-0") + delta(
        "vllm:generation_tokens_total", engines0, engines1, pod="chat-1"
    )
    tgi_joules = delta("gpucarbon_gpu_energy_joules_total", daemon0, daemon1, gpu="3")
    tgi_tokens = delta("tgi_request_generated_tokens_sum", engines0, engines1, pod="summarize-0")
    triton_joules = delta("gpucarbon_gpu_energy_joules_total", daemon0, daemon1, gpu="4")
    triton_requests = delta("nv_inference_request_success", engines0, engines1, pod="resnet-0")
    assert chat_tokens > 900 * 60 and tgi_tokens > 500 * 60, "a few simulated minutes have passed"

    per_token = stack.rule("namespace_workload:gpucarbon_energy_per_token_joules:rate5m")
    per_request = stack.rule("namespace_workload:gpucarbon_energy_per_request_joules:rate5m")
    truth = {"Deployment/chat": chat_joules / chat_tokens, "Deployment/summarize": tgi_joules / tgi_tokens}
    for workload, expected in truth.items():
        error = abs(per_token[workload] - expected) / expected
        print(f"{workload}: rule {per_token[workload]:.5f} J/token, truth {expected:.5f} J/token, error {error:.3%}")
        assert error < 0.02, (workload, per_token[workload], expected)
    expected = triton_joules / triton_requests
    error = abs(per_request["Deployment/vision"] - expected) / expected
    print(
        f"Deployment/vision: rule {per_request['Deployment/vision']:.4f} J/request, "
        f"truth {expected:.4f}, error {error:.3%}"
    )
    assert error < 0.02
    assert "Deployment/vision" not in per_token, "Triton counts no tokens: no per-token figure"


def test_the_idle_replica_is_paid_by_its_workload(stack: Stack) -> None:
    wait_until(
        lambda: stack.prom.query('namespace_pod:gpucarbon_generated_tokens:rate5m{pod="chat-1"}'),
        60,
        "the idle replica's token rate",
    )
    idle = stack.prom.query('namespace_pod:gpucarbon_generated_tokens:rate5m{pod="chat-1"}')
    assert float(idle[0]["value"][1]) == 0 and idle[0]["metric"]["team"] == "nlp"
    # the workload's energy includes chat-1's GPU: more than chat-0's GPU alone
    energy = stack.rule('namespace_workload:gpucarbon_workload_energy_joules:rate5m{workload="Deployment/chat"}')
    gpu0 = stack.prom.query(f'rate(gpucarbon_gpu_energy_joules_total{{gpu="0"}}[{WINDOW}])')
    assert energy["Deployment/chat"] > float(gpu0[0]["value"][1]) + 60, "the idle replica's ~118 W are included"


def test_two_teams_time_slicing_one_gpu_get_their_own_figures(stack: Stack) -> None:
    wait_until(
        lambda: (
            stack.rule('namespace_workload:gpucarbon_energy_per_token_joules:rate5m{namespace="shared"}').keys()
            == {"Deployment/llama", "Deployment/qwen"}
        ),
        60,
        "both teams' per-token figures",
    )
    rows = stack.prom.query('namespace_workload:gpucarbon_energy_per_token_joules:rate5m{namespace="shared"}')
    assert {r["metric"]["workload"]: r["metric"]["team"] for r in rows} == {
        "Deployment/llama": "nlp",
        "Deployment/qwen": "search",
    }
    # per-token x tokens, over both teams, is the shared GPU's measured energy rate (within scrape skew)
    shared = stack.prom.query(
        'sum(namespace_workload:gpucarbon_energy_per_token_joules:rate5m{namespace="shared"}'
        " * on (cluster, namespace, workload, team) namespace_workload:gpucarbon_generated_tokens:rate5m)"
    )
    gpu = stack.prom.query(f'rate(gpucarbon_gpu_energy_joules_total{{gpu="2"}}[{WINDOW}])')
    assert abs(float(shared[0]["value"][1]) - float(gpu[0]["value"][1])) / float(gpu[0]["value"][1]) < 0.02


def test_engine_and_model_are_recorded(stack: Stack) -> None:
    wait_until(lambda: len(stack.prom.query("namespace_pod:gpucarbon_serving_info:group")) == 6, 60, "serving info")
    info = {
        r["metric"]["pod"]: (r["metric"]["engine"], r["metric"].get("model", ""))
        for r in stack.prom.query("namespace_pod:gpucarbon_serving_info:group")
    }
    assert info == {
        "chat-0": ("vllm", "meta-llama/Llama-3.1-8B-Instruct"),
        "chat-1": ("vllm", "meta-llama/Llama-3.1-8B-Instruct"),
        "llama-0": ("vllm", "llama"),
        "qwen-0": ("sglang", "qwen"),
        "summarize-0": ("tgi", ""),
        "resnet-0": ("triton", "resnet50"),
    }


def test_the_charts_scrape_settings_keep_the_workloads_namespace_and_pod(tmp_path: Path) -> None:
    """What the chart's ServiceMonitor asks of Prometheus, on a real Prometheus: the
    Operator attaches the exporter pod's namespace, pod and container as target
    labels; the ServiceMonitor drops them and honours the exporter's labels, so a
    workload series keeps its own namespace and pod (the join key) instead of
    becoming exported_namespace, and a GPU series gets none."""
    daemon = Daemon(tmp_path, "--simulate", "--poll.interval=200ms")
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {
                "job_name": "gpu-carbon-exporter",
                "honor_labels": True,
                "static_configs": [
                    {
                        "targets": [f"127.0.0.1:{daemon.port}"],
                        "labels": {"namespace": "gpu-carbon", "pod": "gce-x7k2p", "container": "exporter"},
                    }
                ],
                "relabel_configs": [{"action": "labeldrop", "regex": "(namespace|pod|container)"}],
            }
        ],
    }
    (tmp_path / "prom.yml").write_text(json.dumps(config))
    server = subprocess.Popen(
        [prometheus_binary(), f"--config.file={tmp_path / 'prom.yml'}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        daemon.wait_ready()

        def query(promql: str) -> list:
            status, body = http_get(
                f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
            )
            return json.loads(body)["data"]["result"] if status == 200 else []

        wait_until(lambda: query("gpucarbon_workload_energy_joules_total"), 30, "workload series")
        held = query('gpucarbon_workload_energy_joules_total{namespace="vision", pod="notebook-alice-0"}')
        assert held and held[0]["metric"]["container"] == "jupyter"
        assert query('{__name__=~"gpucarbon_.*", exported_namespace!=""}') == []
        assert query('gpucarbon_gpu_energy_joules_total{namespace!=""}') == []
        assert query("gpucarbon_gpu_energy_joules_total")
    finally:
        server.terminate()
        server.wait(10)
        daemon.stop()
