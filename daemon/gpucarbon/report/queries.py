"""The PromQL behind every figure, in one place.

Energy, emissions and GPU time come from the recording rules in
prometheus/rules/gpucarbon-recording.yaml: each `*:rate5m` rule is a per-second
rate (J/s, g/s, GPU-seconds/s), so its integral over the range is the period's
total. The integral is a subquery sampled every 5 minutes, the rules' own
window, so adjacent windows tile the range whatever interval the rules are
evaluated at:  sum_over_time(RULE[range:5m]) * 300.

Figures no rule covers (the receipts waste counters, tokens) use increase() on
the daemon's counters; those are per team or per workload, not per GPU, so
they stay cheap. Cost comes from its rate rules, integrated like energy.
"""

from __future__ import annotations

from dataclasses import dataclass

from gpucarbon.receipts.model import OUTCOMES, WASTE_OUTCOMES

STEP_S = 300  # subquery resolution = the rules' rate window (5m)
STEP = "5m"
IDLE_POWER = "gpucarbon_gpu_idle_power_watts"
PUE = "gpucarbon_pue_ratio"
INTENSITY = "gpucarbon_grid_carbon_intensity_grams_per_kwh"
BUILD_INFO = "gpucarbon_build_info"
# Outcomes of finished runs counted as wasted energy: the daemon's own set
# (failed, preempted, evicted, timeout), as the Waste dashboard and the alert.
FAILED_OUTCOMES = tuple(o for o in OUTCOMES if o in WASTE_OUTCOMES)
FINISHED_ENERGY = "gpucarbon_team_finished_energy_joules_total"  # {team, outcome}, J, per node
REPEATED_ENERGY = "gpucarbon_team_repeated_energy_joules_total"  # {team}, J, per node


@dataclass(frozen=True)
class Grouping:
    """How --by maps onto labels and onto the recording rules."""

    name: str  # team | namespace | workload
    labels: tuple[str, ...]  # the labels that name one group
    energy: str  # J/s
    emissions: str  # g/s
    held: str  # GPU-seconds held per second (GPUs held)
    busy: str  # busy GPU-seconds per second
    cost: str  # currency/s, with a `currency` label (the rule exists once carbon.cost is configured)


_W = "gpucarbon_workload_"
GROUPINGS = {
    "team": Grouping(
        "team",
        ("team",),
        "team:gpucarbon_team_energy_joules:rate5m",
        "team:gpucarbon_team_emissions_grams:rate5m",
        "team:gpucarbon_workload_held_seconds:rate5m",
        "team:gpucarbon_workload_busy_seconds:rate5m",
        "team:gpucarbon_team_energy_cost:rate5m",
    ),
    "namespace": Grouping(
        "namespace",
        ("namespace",),
        "namespace:gpucarbon_workload_energy_joules:rate5m",
        "namespace:gpucarbon_workload_emissions_grams:rate5m",
        "namespace:gpucarbon_workload_held_seconds:rate5m",
        "namespace:gpucarbon_workload_busy_seconds:rate5m",
        "namespace:gpucarbon_workload_energy_cost:rate5m",
    ),
    "workload": Grouping(
        "workload",
        ("namespace", "workload", "team"),
        "namespace_workload:gpucarbon_workload_energy_joules:rate5m",
        "namespace_workload:gpucarbon_workload_emissions_grams:rate5m",
        "namespace_workload:gpucarbon_workload_held_seconds:rate5m",
        "namespace_workload:gpucarbon_workload_busy_seconds:rate5m",
        "namespace_workload:gpucarbon_workload_energy_cost:rate5m",
    ),
}

# Power drawn by held-but-idle GPUs, W: per workload, the idle share of held
# time (held - busy GPU-seconds per second) on each GPU times that GPU's idle
# power, recorded by prometheus/rules/gpucarbon-recording.yaml.
IDLE_DRAW = "namespace_workload:gpucarbon_workload_idle_draw_watts:rate5m"

# Fleet totals (the measured whole the groups and the unattributed part add up to).
TOTAL_ENERGY = "cluster:gpucarbon_gpu_energy_joules:rate5m"
TOTAL_UNATTRIBUTED = "cluster:gpucarbon_gpu_unattributed_energy_joules:rate5m"
TOTAL_EMISSIONS = "cluster:gpucarbon_gpu_emissions_grams:rate5m"
TOTAL_HELD = "cluster:gpucarbon_workload_held_seconds:rate5m"
TOTAL_BUSY = "cluster:gpucarbon_workload_busy_seconds:rate5m"
TOP_WORKLOADS = "namespace_workload:gpucarbon_workload_energy_joules:rate5m"
TOP_WORKLOAD_EMISSIONS = "namespace_workload:gpucarbon_workload_emissions_grams:rate5m"


def is_rule(expr: str) -> bool:
    """A recording rule name (level:metric:operations), not an expression."""
    return ":" in expr and " " not in expr and "(" not in expr


def required_rules(grouping: Grouping) -> tuple[str, ...]:
    names = (
        grouping.energy,
        grouping.emissions,
        grouping.held,
        grouping.busy,
        TOTAL_ENERGY,
        TOTAL_UNATTRIBUTED,
        TOTAL_EMISSIONS,
        TOP_WORKLOADS,
    )
    return tuple(dict.fromkeys(n for n in names if is_rule(n)))


def by(labels: tuple[str, ...]) -> str:
    return ", ".join(labels)


_MS = {"s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def left_open(window: str) -> str:
    """`1d` -> `86399999ms`: a subquery window without the step at its start.
    Prometheus 2.x includes both ends of a window, so two adjacent days would
    both count the 5-minute step on the midnight between them (1/288 too much
    per day), while VictoriaMetrics and Prometheus 3 count it once; one
    millisecond less makes every store count the same steps."""
    return f"{int(window[:-1]) * _MS[window[-1]] - 1}ms"


def integral(rate_expr: str, labels: tuple[str, ...], window: str) -> str:
    """The total over `window` of a per-second rate, summed by `labels`."""
    inner = f"sum by ({by(labels)}) ({rate_expr})" if labels else f"sum({rate_expr})"
    return f"sum_over_time(({inner})[{left_open(window)}:{STEP}]) * {STEP_S}"


def increase(counter: str, labels: tuple[str, ...], window: str, matchers: str = "") -> str:
    return f"sum by ({by(labels)}) (increase({counter}{matchers}[{window}]))"


def top_idle_holders(window: str, k: int = 10) -> str:
    """The k workloads with the most held-but-idle GPU-seconds (the per-workload rules)."""
    rate = (
        "sum by (namespace, workload, team) (namespace_workload:gpucarbon_workload_held_seconds:rate5m)"
        " - sum by (namespace, workload, team) (namespace_workload:gpucarbon_workload_busy_seconds:rate5m)"
    )
    return f"topk({k}, sum_over_time(({rate})[{left_open(window)}:{STEP}]) * {STEP_S})"


TOKENS = "vllm:generation_tokens_total"  # default --tokens.metric (vLLM's generated-token counter)


def _token_pods(tokens_metric: str, window: str) -> str:
    """Tokens per pod; the inference server's series carry namespace and pod
    (added by Prometheus' Kubernetes service discovery)."""
    return f"sum by (namespace, pod) (increase({tokens_metric}[{window}]))"


def tokens(labels: tuple[str, ...], tokens_metric: str, window: str) -> str:
    """Tokens generated per group: each pod's tokens joined to the team and
    workload the daemon saw holding GPUs for that pod."""
    holders = f"group by (namespace, pod, team, workload) (last_over_time({_W}energy_joules_total[{window}:1h]))"
    return (
        f"sum by ({by(labels)}) ({_token_pods(tokens_metric, window)}"
        f" * on (namespace, pod) group_left (team, workload) {holders})"
    )


def token_energy(labels: tuple[str, ...], tokens_metric: str, window: str) -> str:
    """GPU energy (J) of the pods that generated tokens, per group."""
    energy = f"sum by (namespace, pod, team, workload) (increase({_W}energy_joules_total[{window}]))"
    return f"sum by ({by(labels)}) ({energy} and on (namespace, pod) ({_token_pods(tokens_metric, window)} > 0))"


def top_workloads(window: str, k: int = 10) -> str:
    return f"topk({k}, {integral(TOP_WORKLOADS, ('namespace', 'workload', 'team'), window)})"


def mean_gauge(metric: str, window: str, labels: tuple[str, ...] = ()) -> str:
    """Mean of a per-node gauge over the range, sampled hourly to stay cheap."""
    inner = f"avg_over_time({metric}[{left_open(window)}:1h])"
    return f"avg by ({by(labels)}) ({inner})" if labels else f"avg({inner})"


def stepped_increase(counter: str, labels: tuple[str, ...], window: str, matchers: str = "") -> str:
    """increase() of a counter that is born with its first step: the daemon
    exports a team's finished-run series only once a run of that outcome has
    ended, at that run's whole energy, and increase() cannot see a series'
    first value. So a series absent at the start of the range adds its lowest
    value in the range (its first, for a counter without resets)."""
    series = f"{counter}{matchers}"
    born = (
        f"label_replace(min_over_time({series}[{window}]) unless last_over_time({series}[10m] offset {window}),"
        ' "report_part", "first", "", "")'
    )
    return f"sum by ({by(labels)}) (increase({series}[{window}]) or {born})"


def failed_energy(window: str, labels: tuple[str, ...] = ("team",)) -> str:
    outcomes = "|".join(FAILED_OUTCOMES)
    return stepped_increase(FINISHED_ENERGY, labels, window, f'{{outcome=~"{outcomes}"}}')


def repeated_energy(window: str, labels: tuple[str, ...] = ("team",)) -> str:
    return stepped_increase(REPEATED_ENERGY, labels, window)
