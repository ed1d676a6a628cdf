"""The simulated serving engines: the `serving:` block, exact token and request
counts, and each engine's exposition in its own names, types and labels.

Names and types come from the engines' sources (docs/inference.md lists the
versions): the exposition is parsed back with client_python's parser and, for
the exact text shapes, compared with what each engine's metrics library writes.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gpucarbon.simulation.serving import (
    Rate,
    ServingPod,
    ServingSpec,
    counts,
    parse_serving,
    render,
)

REPO = Path(__file__).resolve().parent.parent


class BadBlock(Exception):
    pass


def fail(key: str, problem: str) -> Exception:
    return BadBlock(f"{key}: {problem}")


def spec(**block) -> ServingSpec:
    return parse_serving(block, "workloads[0].serving", fail)


def pod(
    block: dict, name: str = "p-0", namespace: str = "serve", start: float = 0.0, end: float | None = None
) -> ServingPod:
    return ServingPod(namespace, name, start, end, spec(**block))


VLLM = {
    "engine": "vllm",
    "model": "meta-llama/Llama-3.1-8B-Instruct",
    "generated_tokens_per_second": 100,
    "prompt_tokens_per_second": 300,
    "requests_per_second": 2,
}
SGLANG = {
    "engine": "sglang",
    "model": "Qwen/Qwen2.5-7B-Instruct",
    "generated_tokens_per_second": 50,
    "requests_per_second": 1,
}
TGI = {"engine": "tgi", "generated_tokens_per_second": 40, "prompt_tokens_per_second": 80, "requests_per_second": 0.5}
TRITON = {"engine": "triton", "model": "resnet50", "requests_per_second": 10}


def families(text: str) -> dict[str, object]:
    return {family.name: family for family in text_string_to_metric_families(text)}


def samples(text: str) -> dict[tuple[str, tuple], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


# --- rates and counts --------------------------------------------------------------------


def test_rate_integral_is_exact_over_steps() -> None:
    rate = Rate(((0.0, 10.0), (60.0, 40.0), (120.0, 0.0)))
    assert rate.at(59.9) == 10 and rate.at(60) == 40 and rate.at(500) == 0
    assert rate.integral(0, 60) == 600
    assert rate.integral(30, 90) == 10 * 30 + 40 * 30
    assert rate.integral(0, 1000) == 600 + 2400
    assert rate.integral(90, 30) == 0


def test_rate_is_zero_before_its_first_step() -> None:
    assert Rate(((100.0, 5.0),)).integral(0, 110) == 50


def test_counts_integrate_from_start_to_end_and_floor_to_whole_units() -> None:
    serving = pod(
        {**VLLM, "generated_tokens_per_second": 2.5, "requests_per_second": [[0, 1], [10, 3]]}, start=5, end=25
    )
    assert counts(serving, 4) == counts(serving, 5)  # not started: nothing yet
    n = counts(serving, 15)
    assert n.generated_tokens == 25 and n.requests == 5 + 15 and n.prompt_tokens == 3000
    assert counts(serving, 1000) == counts(serving, 25), "an ended pod's counters stop"
    assert counts(pod({**VLLM, "generated_tokens_per_second": 0.3}), 10).generated_tokens == 3


# --- the scenario block -------------------------------------------------------------------


def test_every_engine_parses() -> None:
    assert spec(**VLLM).model == "meta-llama/Llama-3.1-8B-Instruct"
    assert spec(**SGLANG).prompt_tokens == Rate(((0.0, 0.0),)), "prompt tokens default to none"
    assert spec(**TGI).model == ""
    triton = spec(**TRITON)
    assert triton.generated_tokens is None and triton.prompt_tokens is None


@pytest.mark.parametrize(
    "block, key",
    [
        ({**VLLM, "engine": "llama.cpp"}, "serving.engine"),
        ({**VLLM, "colour": "red"}, "serving.colour"),
        ({k: v for k, v in VLLM.items() if k != "model"}, "serving.model"),
        ({**TGI, "model": "mistral"}, "serving.model"),
        ({**TRITON, "generated_tokens_per_second": 5}, "serving.generated_tokens_per_second"),
        ({k: v for k, v in VLLM.items() if k != "generated_tokens_per_second"}, "serving.generated_tokens_per_second"),
        ({k: v for k, v in VLLM.items() if k != "requests_per_second"}, "serving.requests_per_second"),
        ({**VLLM, "requests_per_second": -1}, "serving.requests_per_second[0]"),
        ({**VLLM, "requests_per_second": "lots"}, "serving.requests_per_second"),
        ({**VLLM, "requests_per_second": True}, "serving.requests_per_second"),
        ({**VLLM, "generated_tokens_per_second": [[60, 5], [0, 1]]}, "serving.generated_tokens_per_second"),
        ({**VLLM, "generated_tokens_per_second": [[0, 5, 1]]}, "serving.generated_tokens_per_second[0]"),
    ],
)
def test_bad_blocks_name_the_key(block: dict, key: str) -> None:
    with pytest.raises(BadBlock) as err:
        spec(**block)
    assert str(err.value).startswith(f"workloads[0].{key}: "), err.value


def test_a_block_that_is_not_a_mapping_is_refused() -> None:
    with pytest.raises(BadBlock, match=r"^workloads\[0\]\.serving: must be a mapping"):
        parse_serving("vllm", "workloads[0].serving", fail)


# --- exposition ---------------------------------------------------------------------------


def test_vllm_speaks_client_python_counters_with_its_labels() -> None:
    text = render([pod(VLLM, "vllm-0")], 10, created=1_700_000_000.0)
    found = families(text)
    for name in ("vllm:prompt_tokens", "vllm:generation_tokens", "vllm:request_success"):
        assert found[name].type == "counter"
    values = samples(text)
    base = (
        ("engine", "0"),
        ("model_name", "meta-llama/Llama-3.1-8B-Instruct"),
        ("namespace", "serve"),
        ("pod", "vllm-0"),
    )
    assert values[("vllm:generation_tokens_total", base)] == 1000
    assert values[("vllm:prompt_tokens_total", base)] == 3000
    assert values[("vllm:request_success_total", tuple(sorted(base + (("finished_reason", "stop"),))))] == 20
    assert values[("vllm:request_success_total", tuple(sorted(base + (("finished_reason", "abort"),))))] == 0
    # client_python's 0.0.4 text: HELP/TYPE on the _total name, value as a float.
    assert "# TYPE vllm:generation_tokens_total counter\n" in text
    assert (
        'vllm:generation_tokens_total{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct",'
        'namespace="serve",pod="vllm-0"} 1000.0\n' in text
    )


def test_sglang_counters_keep_the_colon_names_and_labels() -> None:
    text = render([pod(SGLANG, "sglang-0")], 10)
    found = families(text)
    assert {"sglang:prompt_tokens", "sglang:generation_tokens", "sglang:num_requests"} <= set(found)
    labels = (
        ("engine_type", "unified"),
        ("is_streaming", "false"),
        ("model_name", "Qwen/Qwen2.5-7B-Instruct"),
        ("namespace", "serve"),
        ("pod", "sglang-0"),
    )
    assert samples(text)[("sglang:generation_tokens_total", labels)] == 500
    assert samples(text)[("sglang:num_requests_total", labels)] == 10


def test_tgi_counter_has_no_total_suffix_and_token_histograms_sum_the_tokens() -> None:
    text = render([pod(TGI, "tgi-0")], 100)
    assert '# TYPE tgi_request_success counter\ntgi_request_success{namespace="serve",pod="tgi-0"} 50\n' in text
    found = families(text)
    assert found["tgi_request_generated_tokens"].type == "histogram"
    assert found["tgi_request_input_length"].type == "histogram"
    values = samples(text)
    labels = (("namespace", "serve"), ("pod", "tgi-0"))
    assert values[("tgi_request_success_total", labels)] == 50  # the parser's name for it
    assert values[("tgi_request_generated_tokens_sum", labels)] == 4000
    assert values[("tgi_request_generated_tokens_count", labels)] == 50
    assert values[("tgi_request_input_length_sum", labels)] == 8000
    assert values[("tgi_request_generated_tokens_bucket", (("le", "+Inf"),) + labels)] == 50
    # mean 80 tokens per request: below the 128 bucket, above the 64 one
    assert values[("tgi_request_generated_tokens_bucket", (("le", "64.0"),) + labels)] == 0
    assert values[("tgi_request_generated_tokens_bucket", (("le", "128.0"),) + labels)] == 50


def test_triton_counts_requests_per_model_and_no_tokens() -> None:
    text = render([pod(TRITON, "triton-0")], 6)
    labels = (("model", "resnet50"), ("namespace", "serve"), ("pod", "triton-0"), ("version", "1"))
    assert "# TYPE nv_inference_request_success counter\n" in text
    # On the wire the counter has no _total (client_python's parser would add one when reading).
    assert 'nv_inference_request_success{model="resnet50",namespace="serve",pod="triton-0",version="1"} 60\n' in text
    assert samples(text)[("nv_inference_request_success_total", labels)] == 60
    assert "token" not in text


def test_pods_of_one_engine_share_each_family_header() -> None:
    text = render([pod(VLLM, "a"), pod(VLLM, "b", namespace="other"), pod(SGLANG, "c")], 10)
    headers = [line for line in text.splitlines() if line.startswith("# TYPE")]
    assert len(headers) == len(set(headers)), "a second TYPE line for a family fails the scrape"
    pods = {s.labels["pod"] for family in text_string_to_metric_families(text) for s in family.samples}
    assert pods == {"a", "b", "c"}


def test_every_series_names_its_namespace_and_pod() -> None:
    text = render([pod(VLLM, "v"), pod(SGLANG, "s"), pod(TGI, "t"), pod(TRITON, "n")], 30)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            assert sample.labels.get("namespace") == "serve" and sample.labels.get("pod"), sample


def test_a_pod_not_running_has_no_series() -> None:
    assert render([pod(VLLM, start=100)], 50) == ""
    assert render([pod(VLLM, end=100)], 150) == ""


def test_label_values_are_escaped() -> None:
    text = render([pod({**VLLM, "model": 'we"ird\\name'})], 1)
    assert (
        samples(text)[
            (
                "vllm:generation_tokens_total",
                (("engine", "0"), ("model_name", 'we"ird\\name'), ("namespace", "serve"), ("pod", "p-0")),
            )
        ]
        == 100
    )


def test_large_counts_render_as_numbers_prometheus_reads() -> None:
    text = render([pod({**VLLM, "generated_tokens_per_second": 1e6})], 86400 * 30)
    value = next(
        s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "vllm:generation_tokens_total"
    )
    assert math.isclose(value, 1e6 * 86400 * 30)


# --- the listener -------------------------------------------------------------------------


async def test_listener_serves_the_engines_on_metrics_at_the_simulation_time() -> None:
    import aiohttp
    from procs import free_port

    from gpucarbon.simulation.serving import ServingListener

    now = {"t": 10.0}
    port = free_port()
    listener = ServingListener((pod(VLLM, "vllm-0"), pod(TRITON, "triton-0")), lambda: now["t"], "127.0.0.1", port)
    await listener.start()
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
                assert response.status == 200
                assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
                first = await response.text()
            now["t"] = 20.0
            async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
                second = await response.text()
            async with session.get(f"http://127.0.0.1:{port}/") as response:
                assert response.status == 404
    finally:
        await listener.close()
    key = (
        "vllm:generation_tokens_total",
        (
            ("engine", "0"),
            ("model_name", "meta-llama/Llama-3.1-8B-Instruct"),
            ("namespace", "serve"),
            ("pod", "vllm-0"),
        ),
    )
    assert samples(first)[key] == 1000 and samples(second)[key] == 2000
    assert "nv_inference_request_success{" in second


# --- in the scenario and on the command line ----------------------------------------------


def test_a_scenario_workload_carries_its_serving_block() -> None:
    from gpucarbon.simulation.scenario import parse_scenario
    from gpucarbon.simulation.serving import serving_pods

    scenario = parse_scenario(
        "gpus: [{model: G, count: 2}]\n"
        "workloads:\n"
        "  - {namespace: llm, pod: chat-0, workload: Deployment/chat, gpus: [0], start: 5, end: 50,\n"
        "     serving: {engine: sglang, model: qwen, generated_tokens_per_second: 10, requests_per_second: 1}}\n"
        "  - {workload: Job/train, gpus: [1]}\n"
    )
    assert scenario.workloads[0].serving == spec(**{**SGLANG, "model": "qwen", "generated_tokens_per_second": 10})
    assert scenario.workloads[1].serving is None
    assert serving_pods(scenario.workloads) == (ServingPod("llm", "chat-0", 5.0, 50.0, scenario.workloads[0].serving),)


@pytest.mark.parametrize(
    "workload, key",
    [
        ("{workload: W, gpus: [0], serving: {engine: vllm}}", "workloads[0].serving.model"),
        (
            "{workload: W, gpus: [0], serving: {engine: tgi, requests_per_second: 1, tokens: 3}}",
            "workloads[0].serving.tokens",
        ),
        (
            "{workload: W, gpus: [0], allocated_only: true,"
            " serving: {engine: triton, model: m, requests_per_second: 1}}",
            "workloads[0].serving",
        ),
    ],
)
def test_bad_serving_blocks_in_a_scenario_name_the_file_and_key(workload: str, key: str) -> None:
    from gpucarbon.simulation.scenario import ScenarioError, parse_scenario

    with pytest.raises(ScenarioError) as err:
        parse_scenario(f"gpus: [{{model: G}}]\nworkloads: [{workload}]", "node.yaml")
    assert str(err.value).startswith(f"node.yaml: {key}: "), err.value


def test_the_demo_serves_tokens_from_a_time_sliced_gpu() -> None:
    from gpucarbon.simulation.scenario import load_scenario
    from gpucarbon.simulation.serving import serving_pods

    demo = load_scenario(None)
    pods = serving_pods(demo.workloads)
    assert {p.spec.engine for p in pods} >= {"vllm", "sglang"}
    serving = [w for w in demo.workloads if w.serving]
    assert len({w.team for w in serving}) >= 2 and len({g for w in serving for g in w.gpus}) == 1, (
        "two teams' serving pods time-slice one GPU"
    )
    assert "vllm:generation_tokens_total{" in render(pods, 60)


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO / "daemon")}
    return subprocess.run(
        [sys.executable, "-m", "gpucarbon", *args], capture_output=True, text=True, timeout=60, env=env
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["--simulate.serving-address=127.0.0.1:0"], "--simulate.serving-address: needs --simulate"),
        (["--simulate", "--simulate.serving-address=nowhere"], "--simulate.serving-address"),
    ],
)
def test_serving_address_without_a_simulation_or_bad_is_one_line_exit_two(args: list[str], message: str) -> None:
    result = _run("--once", *args)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert message in result.stderr


def test_serving_address_with_a_scenario_that_serves_nothing_is_refused(tmp_path: Path) -> None:
    scenario = tmp_path / "plain.yaml"
    scenario.write_text("gpus: [{model: G}]\nworkloads: [{workload: W, gpus: [0]}]\n")
    result = _run("--once", f"--simulate={scenario}", "--simulate.serving-address=127.0.0.1:0")
    assert result.returncode == 2
    assert result.stderr.strip().endswith(f"--simulate.serving-address: {scenario} has no workload with serving:")
