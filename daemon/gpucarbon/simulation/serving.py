"""The serving engines, simulated: token and request counters of vLLM, SGLang,
TGI and Triton for scenario workloads that have a `serving:` block.

Each engine's families are rendered in the engine's own names, types and labels,
as its /metrics shows them (checked against the engines' sources; versions in
docs/inference.md):

    vLLM 0.19   prometheus_client counters vllm:generation_tokens_total,
                vllm:prompt_tokens_total, vllm:request_success_total
                (labels engine, model_name; finished_reason)
    SGLang 0.5  prometheus_client counters sglang:generation_tokens_total,
                sglang:prompt_tokens_total, sglang:num_requests_total
                (labels engine_type, is_streaming, model_name)
    TGI 3.3     metrics-exporter-prometheus: counter tgi_request_success (no
                _total), histograms tgi_request_generated_tokens and
                tgi_request_input_length (no labels)
    Triton      nv_inference_request_success, nv_inference_count (labels
                model, version); no token counters

Every series also carries the workload's `namespace` and `pod`, the labels
Kubernetes service discovery would attach to the pod's scrape. These series are
served on their own listener, never on the daemon's /metrics.

Counts are exact integrals of the scenario's piecewise-constant rates from the
workload's start to now (simulated seconds), floored to whole tokens and
requests, so a test can compute the true totals from the scenario alone.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # aiohttp's server loads only when --simulate.serving-address is given
    from aiohttp import web

log = logging.getLogger(__name__)

ENGINES = ("vllm", "sglang", "tgi", "triton")
KEYS = {"engine", "model", "generated_tokens_per_second", "prompt_tokens_per_second", "requests_per_second"}
MAX_RATE = 1e9  # per second: far above any real server, catches unit mistakes (tokens per hour...)

# TGI's generated-token and input-length histogram buckets (fractions of the
# configured max tokens in the real server; fixed powers of two here).
TGI_BUCKETS = tuple(float(2**k) for k in range(16))


@dataclass(frozen=True, slots=True)
class Rate:
    """A per-second rate as (from simulated second, value) steps; 0 before the first."""

    steps: tuple[tuple[float, float], ...]

    def at(self, t: float) -> float:
        value = 0.0
        for since, rate in self.steps:
            if since <= t:
                value = rate
        return value

    def integral(self, start: float, end: float) -> float:
        """Exact ∫ rate dt over [start, end] (steps are constant in between)."""
        if end <= start:
            return 0.0
        total = 0.0
        ends = [t for t, _ in self.steps[1:]] + [math.inf]  # each step holds until the next
        for (since, rate), until in zip(self.steps, ends, strict=True):
            lo, hi = max(since, start), min(until, end)
            if hi > lo:
                total += rate * (hi - lo)
        return total


@dataclass(frozen=True, slots=True)
class ServingSpec:
    engine: str  # one of ENGINES
    model: str  # "" for TGI, which does not label its counters with the model
    generated_tokens: Rate | None  # None for Triton (no token counters)
    prompt_tokens: Rate | None
    requests: Rate


@dataclass(frozen=True, slots=True)
class ServingPod:
    """One serving workload of the scenario, with its pod's identity and lifetime."""

    namespace: str
    pod: str
    start: float
    end: float | None
    spec: ServingSpec

    def running_at(self, t: float) -> bool:
        return self.start <= t and (self.end is None or t < self.end)


class _ServingWorkload(Protocol):
    """What serving_pods reads of a scenario workload."""

    @property
    def namespace(self) -> str: ...
    @property
    def pod(self) -> str: ...
    @property
    def start(self) -> float: ...
    @property
    def end(self) -> float | None: ...
    @property
    def serving(self) -> ServingSpec | None: ...


def serving_pods(workloads: Iterable[_ServingWorkload]) -> tuple[ServingPod, ...]:
    """The scenario's workloads that have a `serving:` block, as pods of an engine."""
    return tuple(ServingPod(w.namespace, w.pod, w.start, w.end, w.serving) for w in workloads if w.serving)


@dataclass(frozen=True, slots=True)
class Counts:
    """Whole tokens and requests served from the pod's start to a moment."""

    generated_tokens: int
    prompt_tokens: int
    requests: int


def counts(pod: ServingPod, t: float) -> Counts:
    end = t if pod.end is None else min(t, pod.end)

    def total(rate: Rate | None) -> int:
        return 0 if rate is None else math.floor(rate.integral(pod.start, end) + 1e-9)

    spec = pod.spec
    return Counts(total(spec.generated_tokens), total(spec.prompt_tokens), total(spec.requests))


# --- the scenario's `serving:` block ---------------------------------------------------

Fail = Callable[[str, str], Exception]  # (key, problem) -> the scenario's error


def parse_serving(raw: Any, path: str, fail: Fail) -> ServingSpec:
    """Validate one workload's `serving:` block; `fail` builds the error that names the key."""
    if not isinstance(raw, Mapping):
        raise fail(path, "must be a mapping")
    for name in raw:
        if name not in KEYS:
            raise fail(f"{path}.{name}", f"unknown key (allowed: {', '.join(sorted(KEYS))})")
    engine = raw.get("engine")
    if engine not in ENGINES:
        raise fail(f"{path}.engine", f"{engine!r} must be one of: {', '.join(ENGINES)}")
    model = raw.get("model")
    if engine == "tgi":
        if model is not None:
            raise fail(f"{path}.model", "TGI does not label its counters with the model: leave it out")
        model = ""
    elif not isinstance(model, str) or not model:
        raise fail(f"{path}.model", f"{model!r} must be the served model name, e.g. meta-llama/Llama-3.1-8B-Instruct")
    generated = _rate(raw, "generated_tokens_per_second", path, fail, required=engine != "triton")
    prompt = _rate(raw, "prompt_tokens_per_second", path, fail, required=False)
    if engine == "triton":
        for key, rate in (("generated_tokens_per_second", generated), ("prompt_tokens_per_second", prompt)):
            if rate is not None:
                raise fail(f"{path}.{key}", "Triton counts requests, not tokens: leave it out")
    elif prompt is None:
        prompt = Rate(((0.0, 0.0),))
    requests = _rate(raw, "requests_per_second", path, fail, required=True)
    assert requests is not None
    return ServingSpec(engine, model, generated, prompt, requests)


def _rate(raw: Mapping, key: str, path: str, fail: Fail, required: bool) -> Rate | None:
    value = raw.get(key)
    where = f"{path}.{key}"
    if value is None:
        if required:
            raise fail(where, "is required: a number per second or a list of [t, per second] steps")
        return None
    steps = [[0, value]] if _is_number(value) else value
    if not isinstance(steps, list) or not steps:
        raise fail(where, f"{str(value)[:40]!r} must be a number per second or a list of [t, per second] steps")
    parsed = []
    for i, step in enumerate(steps):
        if not isinstance(step, list) or len(step) != 2 or not all(_is_number(v) for v in step):
            raise fail(f"{where}[{i}]", f"{str(step)[:40]!r} must be [t, per second] numbers")
        t, rate = float(step[0]), float(step[1])
        if t < 0 or not 0 <= rate <= MAX_RATE:
            raise fail(f"{where}[{i}]", f"{step!r}: t must be >= 0 and the rate between 0 and {MAX_RATE:g}")
        parsed.append((t, rate))
    if [t for t, _ in parsed] != sorted(t for t, _ in parsed):
        raise fail(where, "steps must be in time order")
    return Rate(tuple(parsed))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# --- exposition -------------------------------------------------------------------------

Labels = Mapping[str, str]


@dataclass
class _Family:
    name: str  # as on the # TYPE line
    kind: str  # counter, gauge, histogram
    help: str
    lines: list[str]


class _Exposition:
    """Families in first-seen order, each with one HELP/TYPE header however many
    pods add samples to it (a second TYPE line for a name is a scrape error)."""

    def __init__(self) -> None:
        self._families: dict[str, _Family] = {}

    def sample(self, family: str, kind: str, help_text: str, name: str, labels: Labels, value: str) -> None:
        entry = self._families.setdefault(family, _Family(family, kind, help_text, []))
        entry.lines.append(f"{name}{_labels(labels)} {value}")

    def text(self) -> str:
        out = []
        for family in self._families.values():
            out.append(f"# HELP {family.name} {family.help}")
            out.append(f"# TYPE {family.name} {family.kind}")
            out.extend(family.lines)
        return "\n".join(out) + "\n" if out else ""


def render(pods: Iterable[ServingPod], t: float, created: float = 0.0) -> str:
    """The engines' exposition at simulated time `t` for the pods running then.
    `created` is the wall-clock start (Unix seconds) for prometheus_client's
    *_created samples."""
    exposition = _Exposition()
    for pod in pods:
        if pod.running_at(t):
            RENDERERS[pod.spec.engine](exposition, pod, counts(pod, t), created)
    return exposition.text()


def _client_python_counter(
    out: _Exposition, name: str, help_text: str, labels: Labels, value: int, created: float
) -> None:
    """A prometheus_client Counter in the 0.0.4 text format: NAME_total and NAME_created."""
    out.sample(f"{name}_total", "counter", help_text, f"{name}_total", labels, f"{float(value)!r}")
    out.sample(f"{name}_created", "gauge", help_text, f"{name}_created", labels, repr(float(created)))


def _vllm(out: _Exposition, pod: ServingPod, n: Counts, created: float) -> None:
    base = {"engine": "0", "model_name": pod.spec.model, "namespace": pod.namespace, "pod": pod.pod}
    _client_python_counter(
        out, "vllm:prompt_tokens", "Number of prefill tokens processed.", base, n.prompt_tokens, created
    )
    _client_python_counter(
        out, "vllm:generation_tokens", "Number of generation tokens processed.", base, n.generated_tokens, created
    )
    # prometheus_client pre-creates one child per FinishReason; all simulated requests stop normally.
    for reason in ("stop", "length", "abort", "error", "repetition"):
        _client_python_counter(
            out,
            "vllm:request_success",
            "Count of successfully processed requests.",
            {**base, "finished_reason": reason},
            n.requests if reason == "stop" else 0,
            created,
        )


def _sglang(out: _Exposition, pod: ServingPod, n: Counts, created: float) -> None:
    labels = {
        "engine_type": "unified",
        "is_streaming": "false",
        "model_name": pod.spec.model,
        "namespace": pod.namespace,
        "pod": pod.pod,
    }
    _client_python_counter(
        out, "sglang:prompt_tokens", "Number of prefill tokens processed.", labels, n.prompt_tokens, created
    )
    _client_python_counter(
        out, "sglang:generation_tokens", "Number of generation tokens processed.", labels, n.generated_tokens, created
    )
    _client_python_counter(out, "sglang:num_requests", "Number of requests processed.", labels, n.requests, created)


def _tgi(out: _Exposition, pod: ServingPod, n: Counts, created: float) -> None:
    labels = {"namespace": pod.namespace, "pod": pod.pod}
    out.sample(
        "tgi_request_success",
        "counter",
        "Number of successful requests",
        "tgi_request_success",
        labels,
        str(n.requests),
    )
    _tgi_histogram(
        out, "tgi_request_input_length", "Input token length per request", labels, n.prompt_tokens, n.requests
    )
    _tgi_histogram(
        out, "tgi_request_generated_tokens", "Generated tokens per request", labels, n.generated_tokens, n.requests
    )


def _tgi_histogram(out: _Exposition, name: str, help_text: str, labels: Labels, total: int, count: int) -> None:
    """Every simulated request has the mean length, so all fall in one bucket."""
    mean = total / count if count else 0.0
    for le in TGI_BUCKETS:
        out.sample(
            name, "histogram", help_text, f"{name}_bucket", {**labels, "le": repr(le)}, str(count if mean <= le else 0)
        )
    out.sample(name, "histogram", help_text, f"{name}_bucket", {**labels, "le": "+Inf"}, str(count))
    out.sample(name, "histogram", help_text, f"{name}_sum", labels, repr(float(total)))
    out.sample(name, "histogram", help_text, f"{name}_count", labels, str(count))


def _triton(out: _Exposition, pod: ServingPod, n: Counts, created: float) -> None:
    labels = {"model": pod.spec.model, "namespace": pod.namespace, "pod": pod.pod, "version": "1"}
    out.sample(
        "nv_inference_request_success",
        "counter",
        "Number of successful inference requests, all batch sizes",
        "nv_inference_request_success",
        labels,
        str(n.requests),
    )
    out.sample(
        "nv_inference_request_failure",
        "counter",
        "Number of failed inference requests, all batch sizes",
        "nv_inference_request_failure",
        {**labels, "reason": "OTHER"},
        "0",
    )
    # One inference per request: the simulation does not model client-side batches.
    out.sample(
        "nv_inference_count",
        "counter",
        "Number of inferences performed (does not include cached requests)",
        "nv_inference_count",
        labels,
        str(n.requests),
    )


RENDERERS: dict[str, Callable[[_Exposition, ServingPod, Counts, float], None]] = {
    "vllm": _vllm,
    "sglang": _sglang,
    "tgi": _tgi,
    "triton": _triton,
}


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{key}="{_escape(value)}"' for key, value in sorted(labels.items())) + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


# --- the listener -----------------------------------------------------------------------

TEXT_FORMAT = "text/plain; version=0.0.4; charset=utf-8"


class ServingListener:
    """The engines' /metrics on their own address (a Service: start, close).
    `sim_time` is the simulation's clock in simulated seconds, the one the GPUs'
    energy is integrated on, so tokens and joules advance together."""

    def __init__(
        self,
        pods: tuple[ServingPod, ...],
        sim_time: Callable[[], float],
        host: str | None,
        port: int,
        created: float | None = None,
    ) -> None:
        self._pods = pods
        self._sim_time = sim_time
        self._host, self._port = host, port
        self._created = time.time() if created is None else created
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        from aiohttp import web

        async def metrics(_: web.Request) -> web.Response:
            text = render(self._pods, self._sim_time(), self._created)
            return web.Response(body=text.encode(), headers={"Content-Type": TEXT_FORMAT})

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        return app

    async def start(self) -> None:
        from aiohttp import web

        self._runner = web.AppRunner(self.app(), access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host=self._host, port=self._port)
        await site.start()
        log.info(
            "simulated serving engines listening on %s:%d/metrics (%d pods)",
            self._host or "",
            self._port,
            len(self._pods),
        )

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
