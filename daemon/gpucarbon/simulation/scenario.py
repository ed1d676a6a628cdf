"""The simulation's scenario file: GPUs, workloads over time, faults.

Format (docs/simulation.md has the full reference):

    speed: 1          # simulated seconds per wall-clock second
    seed: 7
    gpus:             # expanded in order into indices 0..N-1
      - {model: NVIDIA H100 80GB HBM3, count: 4, idle_watts: 70, context_watts: 118,
         max_watts: 700, memory_bytes: 85899345920,
         minor_numbers: [0, 1, 2, 3]}   # optional: /dev/nvidia<N> of each; default the index
    workloads:
      - {namespace: research, pod: bert-0, container: trainer, workload: Job/bert,
         team: nlp, gpus: [0, 1], start: 0, end: null, sm_util: 0.9,
         allocated_only: false,   # team optional: without it the config's team rules decide
         outcome: succeeded, image: reg/train@sha256:ab.., command: [python, train.py]}
    faults:
      - {gpu: 1, kind: lost, start: 30, end: 60}   # or kind: reset (driver reload)

Unknown keys and bad values raise ScenarioError naming the key.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from gpucarbon.errors import GpuCarbonError
from gpucarbon.simulation.serving import ServingSpec, parse_serving
from gpucarbon.yamlcheck import YAML_ERRORS, is_number, key_text, yaml_where


class ScenarioError(GpuCarbonError):
    def __init__(self, source: str, key: str, problem: str) -> None:
        super().__init__(f"{source}: {key}: {problem}" if key else f"{source}: {problem}")


@dataclass(frozen=True, slots=True)
class SimGpu:
    model: str
    idle_watts: float
    max_watts: float
    memory_bytes: int
    context_watts: float | None = None  # draw with a process's CUDA context open, no work
    minor_number: int | None = None  # /dev/nvidia<N>; None: the GPU's index

    def power(self, utilization: float, has_process: bool) -> float:
        """Board power (W): the base draw, plus the busy share of the rest."""
        base = self.context_watts if has_process and self.context_watts is not None else self.idle_watts
        return base + (self.max_watts - base) * min(1.0, utilization)


@dataclass(frozen=True, slots=True)
class SimWorkload:
    namespace: str
    pod: str
    container: str
    workload: str
    team: str  # "": the configured team rules decide
    gpus: tuple[int, ...]
    start: float
    end: float | None
    sm_util: tuple[tuple[float, float], ...]  # (from simulated second, utilization) steps
    allocated_only: bool
    pid: int | None
    cgroup: str | None
    memory_bytes: int
    serving: ServingSpec | None = None  # set: the pod runs a serving engine (simulation/serving.py)
    # How the run ends (at `end`), for its receipt; image and command make its
    # fingerprint, so two workloads with the same ones are the same computation.
    outcome: str = "succeeded"
    reason: str | None = None
    exit_code: int | None = None
    image: str | None = None
    command: tuple[str, ...] = ()

    def running_at(self, t: float) -> bool:
        return self.start <= t and (self.end is None or t < self.end)

    def util_at(self, t: float) -> float:
        util = 0.0
        for since, value in self.sm_util:
            if since <= t:
                util = value
        return util


@dataclass(frozen=True, slots=True)
class SimFault:
    gpu: int
    kind: str  # "lost" or "reset"
    start: float
    end: float | None


@dataclass(frozen=True, slots=True)
class Scenario:
    speed: float
    seed: int
    gpus: tuple[SimGpu, ...]
    workloads: tuple[SimWorkload, ...]
    faults: tuple[SimFault, ...] = ()
    source: str = "<scenario>"


DEMO = "demo"
SIM_OUTCOMES = ("succeeded", "failed", "preempted", "evicted", "deleted", "cancelled", "timeout")


def load_scenario(path: str | None) -> Scenario:
    """Load a scenario file; None or "demo" loads the built-in demo."""
    if path in (None, DEMO):
        text = resources.files("gpucarbon").joinpath("data/demo-scenario.yaml").read_text("utf-8")
        return parse_scenario(text, "built-in demo scenario")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ScenarioError(str(path), "", f"cannot read: {getattr(err, 'strerror', None) or err}") from None
    return parse_scenario(text, str(path))


def parse_scenario(text: str, source: str = "<scenario>") -> Scenario:
    try:
        raw = yaml.safe_load(text)
    except YAML_ERRORS as err:
        raise ScenarioError(source, "", f"invalid YAML{yaml_where(err)}") from None
    return _Parser(source).scenario(raw)


class _Parser:
    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, problem: str) -> ScenarioError:
        return ScenarioError(self.source, key, problem)

    def mapping(self, raw: Any, key: str, allowed: set[str]) -> Mapping[str, Any]:
        if not isinstance(raw, Mapping):
            raise self.fail(key or "(top level)", "must be a mapping")
        for name in raw:
            if name not in allowed:
                full = f"{key}.{key_text(name)}" if key else key_text(name)
                raise self.fail(full, f"unknown key (allowed: {', '.join(sorted(allowed))})")
        return raw

    def number(
        self, raw: Mapping, key: str, path: str, default: Any = None, minimum: float = 0.0, maximum: float = math.inf
    ) -> Any:
        value = raw.get(key)
        if value is None:  # absent or null: the default
            return default
        if not is_number(value):
            raise self.fail(f"{path}.{key}", f"{str(value)[:40]!r} is not a number")
        if not minimum <= value <= maximum:
            raise self.fail(f"{path}.{key}", f"{value!r} must be between {minimum} and {maximum}")
        return value

    def text(self, raw: Mapping, key: str, path: str, default: str | None = None) -> str:
        value = raw.get(key, default)
        if not isinstance(value, str) or (default is None and not value):
            raise self.fail(f"{path}.{key}", f"{value!r} must be a non-empty string")
        return value

    def scenario(self, raw: Any) -> Scenario:
        top = self.mapping(raw, "", {"speed", "seed", "gpus", "workloads", "faults"})
        gpus = self.gpus(top.get("gpus"))
        workloads = self.list(top.get("workloads", []), "workloads")
        faults = self.list(top.get("faults", []), "faults")
        seed = top.get("seed")
        seed = 0 if seed is None else seed
        if isinstance(seed, bool) or not isinstance(seed, int) or not is_number(seed):
            raise self.fail("seed", f"{seed!r} must be an integer")
        return Scenario(
            speed=float(self.number(top, "speed", "", 1.0, minimum=0.001, maximum=1e6)),
            seed=seed,
            gpus=gpus,
            workloads=tuple(self.workload(w, f"workloads[{i}]", len(gpus)) for i, w in enumerate(workloads)),
            faults=tuple(self.fault(f, f"faults[{i}]", len(gpus)) for i, f in enumerate(faults)),
            source=self.source,
        )

    def list(self, raw: Any, key: str) -> list:
        if raw is None:
            return []
        if not isinstance(raw, list):
            raise self.fail(key, "must be a list")
        return raw

    def gpus(self, raw: Any) -> tuple[SimGpu, ...]:
        entries = self.list(raw, "gpus")
        if not entries:
            raise self.fail("gpus", "at least one GPU is needed")
        gpus: list[SimGpu] = []
        for i, entry in enumerate(entries):
            path = f"gpus[{i}]"
            sec = self.mapping(
                entry,
                path,
                {"model", "count", "idle_watts", "context_watts", "max_watts", "memory_bytes", "minor_numbers"},
            )
            count = 1 if sec.get("count") is None else sec["count"]
            if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 64:
                raise self.fail(f"{path}.count", f"{count!r} must be an integer from 1 to 64")
            idle = self.number(sec, "idle_watts", path, 70.0, maximum=5000)
            peak = self.number(sec, "max_watts", path, 700.0, maximum=5000)
            if peak < idle:
                raise self.fail(f"{path}.max_watts", f"{peak!r} is below idle_watts {idle!r}")
            memory = self.number(sec, "memory_bytes", path, 80 * 2**30, maximum=2**50)
            context = self.number(sec, "context_watts", path, None, maximum=5000)
            if context is not None and not idle <= context <= peak:
                raise self.fail(f"{path}.context_watts", f"{context!r} must be between idle_watts and max_watts")
            gpu = SimGpu(
                self.text(sec, "model", path),
                float(idle),
                float(peak),
                int(memory),
                None if context is None else float(context),
            )
            minors = self.minor_numbers(sec.get("minor_numbers"), f"{path}.minor_numbers", count)
            gpus.extend(replace(gpu, minor_number=minor) for minor in minors)
        if len(gpus) > 64:
            raise self.fail("gpus", f"{len(gpus)} GPUs; at most 64 are supported")
        taken = [g.minor_number for g in gpus if g.minor_number is not None]
        if len(taken) != len(set(taken)):
            raise self.fail("gpus", f"minor numbers {taken} repeat: each /dev/nvidia<N> is one GPU")
        return tuple(gpus)

    def minor_numbers(self, raw: Any, path: str, count: int) -> tuple[int | None, ...]:
        if raw is None:
            return (None,) * count
        if (
            not isinstance(raw, list)
            or len(raw) != count
            or any(isinstance(m, bool) or not isinstance(m, int) or not 0 <= m < 256 for m in raw)
        ):
            raise self.fail(path, f"{raw!r} must be a list of {count} integers 0..255, one per GPU")
        return tuple(raw)

    def workload(self, raw: Any, path: str, gpu_count: int) -> SimWorkload:
        sec = self.mapping(
            raw,
            path,
            {
                "namespace",
                "pod",
                "container",
                "workload",
                "team",
                "gpus",
                "start",
                "end",
                "sm_util",
                "allocated_only",
                "pid",
                "cgroup",
                "memory_bytes",
                "serving",
                "outcome",
                "reason",
                "exit_code",
                "image",
                "command",
            },
        )
        gpus = sec.get("gpus")
        if (
            not isinstance(gpus, list)
            or not gpus
            or any(isinstance(g, bool) or not isinstance(g, int) or not 0 <= g < gpu_count for g in gpus)
        ):
            raise self.fail(f"{path}.gpus", f"{gpus!r} must be a non-empty list of GPU indices 0..{gpu_count - 1}")
        start = float(self.number(sec, "start", path, 0.0))
        end = self.number(sec, "end", path, None)
        if end is not None and end <= start:
            raise self.fail(f"{path}.end", f"{end!r} must be after start {start!r}")
        allocated_only = sec.get("allocated_only", False)
        if not isinstance(allocated_only, bool):
            raise self.fail(f"{path}.allocated_only", f"{allocated_only!r} must be true or false")
        pid = sec.get("pid")
        if pid is not None and (isinstance(pid, bool) or not isinstance(pid, int) or not 0 < pid < 2**22):
            raise self.fail(f"{path}.pid", f"{pid!r} must be a process id")
        cgroup = sec.get("cgroup")
        if cgroup is not None and not isinstance(cgroup, str):
            raise self.fail(f"{path}.cgroup", f"{cgroup!r} must be a string")
        serving = None
        if sec.get("serving") is not None:
            if allocated_only:
                raise self.fail(f"{path}.serving", "an allocated_only workload runs no process, so it serves nothing")
            serving = parse_serving(sec["serving"], f"{path}.serving", self.fail)
        return SimWorkload(
            namespace=self.text(sec, "namespace", path, ""),
            pod=self.text(sec, "pod", path, ""),
            container=self.text(sec, "container", path, ""),
            workload=self.text(sec, "workload", path),
            team=self.text(sec, "team", path, ""),
            gpus=tuple(gpus),
            start=start,
            end=None if end is None else float(end),
            sm_util=self.util(sec.get("sm_util", 0.0), f"{path}.sm_util"),
            allocated_only=allocated_only,
            pid=pid,
            cgroup=cgroup,
            memory_bytes=int(self.number(sec, "memory_bytes", path, 8 * 2**30, maximum=2**50)),
            serving=serving,
            **self.ending(sec, path, end),
        )

    def ending(self, sec: Mapping, path: str, end: float | None) -> dict:
        """outcome/reason/exit_code/image/command: how the run ends and what it ran."""
        outcome = sec.get("outcome", "succeeded")
        if outcome not in SIM_OUTCOMES:
            raise self.fail(f"{path}.outcome", f"{outcome!r} must be one of: {', '.join(SIM_OUTCOMES)}")
        if "outcome" in sec and end is None:
            raise self.fail(f"{path}.outcome", "does nothing without an end")
        exit_code = sec.get("exit_code")
        if exit_code is not None and (
            isinstance(exit_code, bool) or not isinstance(exit_code, int) or not 0 <= exit_code <= 255
        ):
            raise self.fail(f"{path}.exit_code", f"{exit_code!r} must be an integer from 0 to 255")
        command = sec.get("command", [])
        if isinstance(command, str):
            command = [command]
        if not isinstance(command, list) or not all(isinstance(c, str) and c for c in command):
            raise self.fail(f"{path}.command", f"{command!r} must be a list of non-empty strings")
        return {
            "outcome": outcome,
            "reason": self.text(sec, "reason", path) if "reason" in sec else None,
            "exit_code": exit_code,
            "image": self.text(sec, "image", path) if "image" in sec else None,
            "command": tuple(command),
        }

    def util(self, raw: Any, path: str) -> tuple[tuple[float, float], ...]:
        if isinstance(raw, (int, float)) and not isinstance(raw, bool):
            steps = [[0, raw]]
        elif isinstance(raw, list) and raw:
            steps = raw
        else:
            raise self.fail(path, f"{raw!r} must be a number 0..1 or a list of [t, util] steps")
        parsed = []
        for i, step in enumerate(steps):
            if not isinstance(step, list) or len(step) != 2:
                raise self.fail(f"{path}[{i}]", f"{step!r} must be [t, util]")
            t = self.number({"t": step[0]}, "t", f"{path}[{i}]")
            u = self.number({"util": step[1]}, "util", f"{path}[{i}]", maximum=1.0)
            if t is None or u is None:
                raise self.fail(f"{path}[{i}]", f"{step!r} must be [t, util] numbers")
            parsed.append((float(t), float(u)))
        if [t for t, _ in parsed] != sorted(t for t, _ in parsed):
            raise self.fail(path, "steps must be in time order")
        return tuple(parsed)

    def fault(self, raw: Any, path: str, gpu_count: int) -> SimFault:
        sec = self.mapping(raw, path, {"gpu", "kind", "start", "end"})
        gpu = sec.get("gpu")
        if isinstance(gpu, bool) or not isinstance(gpu, int) or not 0 <= gpu < gpu_count:
            raise self.fail(f"{path}.gpu", f"{gpu!r} must be a GPU index 0..{gpu_count - 1}")
        kind = sec.get("kind")
        if kind not in ("lost", "reset", "hang"):
            raise self.fail(f"{path}.kind", f"{kind!r} must be one of: lost, reset, hang")
        start = float(self.number(sec, "start", path, 0.0))
        end = self.number(sec, "end", path, None)
        return SimFault(gpu, kind, start, None if end is None else float(end))
