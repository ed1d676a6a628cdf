"""Ask the store for every figure of the report, in dependency order:
preflight (metrics there? rules there?) -> groups -> totals -> per day ->
top lists -> context (PUE, intensity sources) -> receipts.

Each store problem becomes one ReportError line (errors.py)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from gpucarbon.report import queries as q
from gpucarbon.report.client import PromClient
from gpucarbon.report.errors import MetricsAbsent, NoData, RulesMissing
from gpucarbon.report.model import (
    J_PER_KWH,
    Day,
    Figures,
    Group,
    IntensitySource,
    ReceiptSummary,
    Report,
    WorkloadUse,
    iso,
)
from gpucarbon.report.receipts import waste_by_group

RULES_FILE = "prometheus/rules/gpucarbon-recording.yaml"
HOW_TO_INSTALL_RULES = (
    f"install {RULES_FILE} (Prometheus rule_files:, or the Helm chart's "
    "prometheusRule.enabled=true; see docs/deploy.md) and let them cover the range"
)
NO_TEAM = "(none)"  # shown for an empty label value


@dataclass(frozen=True)
class ReportRequest:
    start: float
    end: float
    by: str = "team"
    offset_price_per_tonne: float | None = None
    currency: str | None = None  # the daemon's carbon.cost.currency, from --config.file
    receipts: ReceiptSummary | None = None
    tokens_metric: str = q.TOKENS

    @property
    def window(self) -> str:
        return f"{int(round(self.end - self.start))}s"


Progress = Callable[[str], None]


class Gatherer:
    def __init__(self, client: PromClient, request: ReportRequest, progress: Progress = lambda step: None) -> None:
        self._client = client
        self._req = request
        self._grouping = q.GROUPINGS[request.by]
        self._progress = progress
        self._notes: list[str] = []
        self._currencies: list[str] = []

    # --- the table of contents ---------------------------------------------

    def report(self) -> Report:
        self._preflight()
        groups = self._groups()
        totals, unattributed = self._totals(groups)
        if totals.energy_kwh <= 0 and not groups:
            raise NoData(
                f"no GPU energy recorded in {self._client.url} between {iso(self._req.start)} and {iso(self._req.end)}"
            )
        daily = self._daily()
        top, idle = self._top_workloads(), self._top_idle()
        pue, sources, currency = self._pue(), self._intensity_sources(), self._currency()
        groups = tuple(self._with_facility(g, pue) for g in groups)
        totals = self._with_facility(totals, pue)
        if self._req.receipts is None:
            self._notes.append("no --receipts given: runs, cluster-wide repeats and failed runs are not listed")
        return Report(
            start=self._req.start,
            end=self._req.end,
            by=self._req.by,
            source_url=self._client.url,
            groups=groups,
            totals=totals,
            unattributed_energy_kwh=unattributed,
            daily=daily,
            top_workloads=top,
            top_idle=idle,
            intensity_sources=sources,
            pue=pue,
            currency=currency,
            offset_price_per_tonne=self._req.offset_price_per_tonne,
            receipts=self._req.receipts,
            notes=tuple(self._notes),
        )

    # --- preflight ------------------------------------------------------------

    def _preflight(self) -> None:
        self._progress("checking the daemon's metrics")
        start, end = self._req.start, self._req.end
        if not self._client.series(q.BUILD_INFO, start, end):
            raise MetricsAbsent(
                f"no gpu-carbon-exporter metrics ({q.BUILD_INFO}) in {self._client.url} between "
                f"{iso(start)} and {iso(end)}: is the daemon scraped by this store?"
            )
        self._progress("checking the recording rules")
        wanted = q.required_rules(self._grouping)
        found = {
            s.get("__name__")
            for s in self._client.series(
                '{__name__=~"' + "|".join(name.replace(":", ":") for name in wanted) + '"}', start, end
            )
        }
        missing = [name for name in wanted if name not in found]
        if missing:
            raise RulesMissing(
                f"recording rules missing in {self._client.url}: {', '.join(missing)}; " + HOW_TO_INSTALL_RULES
            )

    # --- queries --------------------------------------------------------------

    def _vector(self, promql: str, labels: tuple[str, ...]) -> dict[tuple[str, ...], float]:
        out: dict[tuple[str, ...], float] = {}
        for item in self._client.query(promql, self._req.end):
            key = tuple(item["metric"].get(label, "") for label in labels)
            value = float(item["value"][1])
            if math.isfinite(value):
                out[key] = out.get(key, 0.0) + value
        return out

    def _scalar(self, promql: str) -> float | None:
        values = self._vector(promql, ())
        return values.get((), None)

    def _name(self, key: tuple[str, ...]) -> str:
        if self._req.by == "workload":
            namespace, workload, _team = key
            return f"{namespace or NO_TEAM}/{workload or NO_TEAM}"
        return key[0] or NO_TEAM

    def _groups(self) -> tuple[Group, ...]:
        g, w, labels = self._grouping, self._req.window, self._grouping.labels
        self._progress(f"energy per {g.name}")
        energy = self._vector(q.integral(g.energy, labels, w), labels)
        self._progress(f"emissions per {g.name}")
        grams = self._vector(q.integral(g.emissions, labels, w), labels)
        self._progress(f"GPU time per {g.name}")
        held = self._vector(q.integral(g.held, labels, w), labels)
        busy = self._vector(q.integral(g.busy, labels, w), labels)
        idle = self._idle_energy(labels)
        self._progress(f"cost and waste per {g.name}")
        cost = self._cost(labels)
        failed, repeated = self._waste(labels)
        per_token = self._energy_per_token(labels)
        groups = []
        for key in sorted(set(energy) | set(held), key=lambda k: -energy.get(k, 0.0)):
            held_h = held.get(key, 0.0) / 3600.0
            busy_h = busy.get(key, 0.0) / 3600.0
            name = self._name(key)
            groups.append(
                Group(
                    name=name,
                    labels=dict(zip(labels, key, strict=True)),
                    energy_kwh=energy.get(key, 0.0) / J_PER_KWH,
                    facility_energy_kwh=None,
                    emissions_kg=grams.get(key, 0.0) / 1000.0,
                    cost=cost.get(key) if cost is not None else None,
                    offset_cost=self._offset(grams.get(key, 0.0) / 1000.0),
                    gpu_hours_held=held_h,
                    gpu_hours_busy=busy_h,
                    busy_share=busy_h / held_h if held_h > 0 else None,
                    idle_energy_kwh=None if idle is None else idle.get(key, 0.0) / J_PER_KWH,
                    failed_energy_kwh=_pick(failed, key, name),
                    repeated_energy_kwh=_pick(repeated, key, name),
                    energy_per_token_j=per_token.get(key),
                )
            )
        return tuple(groups)

    def _energy_per_token(self, labels: tuple[str, ...]) -> dict[tuple[str, ...], float]:
        """J per generated token, for groups with inference servers that count tokens."""
        metric, w = self._req.tokens_metric, self._req.window
        tokens = self._vector(q.tokens(labels, metric, w), labels)
        if not any(v > 0 for v in tokens.values()):
            self._notes.append(f"no token counter ({metric}) with namespace and pod labels: energy per token is absent")
            return {}
        energy = self._vector(q.token_energy(labels, metric, w), labels)
        return {k: energy.get(k, 0.0) / v for k, v in tokens.items() if v > 0}

    def _idle_energy(self, labels: tuple[str, ...]) -> dict[tuple[str, ...], float] | None:
        """Estimated J drawn by held-but-idle GPUs, per group (None: no idle-power series)."""
        values = self._vector(q.integral(q.IDLE_DRAW, labels, self._req.window), labels)
        if not values:
            self._notes.append(f"{q.IDLE_POWER} absent: idle energy on allocated GPUs is not estimated")
            return None
        if not any("idle energy" in n for n in self._notes):
            self._notes.append(
                "idle energy on allocated GPUs is estimated: held-but-idle time x each GPU's idle power "
                f"({q.IDLE_POWER})"
            )
        return values

    def _cost(self, labels: tuple[str, ...]) -> dict[tuple[str, ...], float] | None:
        values = self._vector(
            q.integral(self._grouping.cost, labels + ("currency",), self._req.window), labels + ("currency",)
        )
        if not values:
            self._notes.append(
                f"no energy cost series ({self._grouping.cost}: carbon.cost.price_per_kwh not configured, "
                "or recording rules older than it): cost is absent"
            )
            return None
        currencies = {k[-1] for k in values}
        self._currencies = sorted(currencies)
        if len(currencies) > 1:
            self._notes.append(f"costs in several currencies ({', '.join(sorted(currencies))}) are summed as is")
        out: dict[tuple[str, ...], float] = {}
        for key, value in values.items():
            out[key[:-1]] = out.get(key[:-1], 0.0) + value
        return out

    def _waste(self, labels: tuple[str, ...]) -> tuple[dict[Any, float] | None, dict[Any, float] | None]:
        """Failed and repeated energy (kWh) per group key or name.

        Failed: the daemon's finished-run counters (every node's runs, per
        team) when the store has them, else the receipts. Repeated: the
        receipts when given (repeats found across nodes), else the counters
        (a repeat of a run on the same node only)."""
        counters_fit = self._req.by == "team"
        failed_c = self._vector(q.failed_energy(self._req.window), labels) if counters_fit else {}
        repeated_c = self._vector(q.repeated_energy(self._req.window), labels) if counters_fit else {}
        have_counters = bool(failed_c or repeated_c) or (counters_fit and self._has_waste_counters())
        receipts = self._req.receipts
        by_name = waste_by_group(receipts, self._req.by) if receipts is not None else None
        failed: dict[Any, float] | None = None  # None: not known
        repeated: dict[Any, float] | None = None
        if have_counters:
            failed = {k: v / J_PER_KWH for k, v in failed_c.items()}
            self._notes.append(f"failed energy: {q.FINISHED_ENERGY} with outcome {', '.join(q.FAILED_OUTCOMES)}")
        elif by_name is not None:
            failed = dict(by_name[0])
            self._notes.append(f"failed energy: the receipts' runs that ended {', '.join(q.FAILED_OUTCOMES)}")
        if by_name is not None:
            repeated = dict(by_name[1])
            self._notes.append("repeated energy: the receipts, repeats found across nodes")
        elif have_counters:
            repeated = {k: v / J_PER_KWH for k, v in repeated_c.items()}
            self._notes.append(f"repeated energy: {q.REPEATED_ENERGY} (repeats on the same node only)")
        if not have_counters and by_name is None:
            self._notes.append(
                f"no waste counters ({q.FINISHED_ENERGY}, {q.REPEATED_ENERGY}) for this grouping in the store "
                "and no --receipts: failed and repeated energy are absent"
            )
        return failed, repeated

    def _has_waste_counters(self) -> bool:
        """The daemon exports the finished-run counters (receipts enabled), even
        if no run in the range ended in waste."""
        return bool(
            self._client.series(
                '{__name__=~"gpucarbon_team_finished_runs_total|' + q.FINISHED_ENERGY + '"}',
                self._req.start,
                self._req.end,
            )
        )

    def _offset(self, kg: float | None) -> float | None:
        price = self._req.offset_price_per_tonne
        return None if price is None or kg is None else kg / 1000.0 * price

    def _totals(self, groups: tuple[Group, ...]) -> tuple[Figures, float]:
        self._progress("fleet totals")
        w = self._req.window
        energy = self._scalar(q.integral(q.TOTAL_ENERGY, (), w)) or 0.0
        unattributed = self._scalar(q.integral(q.TOTAL_UNATTRIBUTED, (), w)) or 0.0
        grams = self._scalar(q.integral(q.TOTAL_EMISSIONS, (), w)) or 0.0
        held = sum(g.gpu_hours_held for g in groups)
        busy = sum(g.gpu_hours_busy for g in groups)
        totals = Figures(
            energy_kwh=energy / J_PER_KWH,
            facility_energy_kwh=None,
            emissions_kg=grams / 1000.0,
            cost=_sum_known(g.cost for g in groups),
            offset_cost=self._offset(grams / 1000.0),
            gpu_hours_held=held,
            gpu_hours_busy=busy,
            busy_share=busy / held if held > 0 else None,
            idle_energy_kwh=_sum_known(g.idle_energy_kwh for g in groups),
            failed_energy_kwh=_sum_known(g.failed_energy_kwh for g in groups),
            repeated_energy_kwh=_sum_known(g.repeated_energy_kwh for g in groups),
        )
        return totals, unattributed / J_PER_KWH

    def _daily(self) -> tuple[Day, ...]:
        """24-hour buckets ending at --end (1-hour buckets for ranges under two days)."""
        span = self._req.end - self._req.start
        step, window = (86400, "1d") if span >= 2 * 86400 else (3600, "1h")
        buckets = max(1, math.ceil(span / step - 1e-9))
        first_end = self._req.end - (buckets - 1) * step
        labels = self._grouping.labels
        self._progress("energy per day")
        energy = self._matrix(q.integral(self._grouping.energy, labels, window), first_end, step)
        self._progress("emissions per day")
        grams = self._matrix(q.integral(self._grouping.emissions, labels, window), first_end, step)
        days = []
        for i in range(buckets):
            end = first_end + i * step
            days.append(
                Day(
                    start=end - step,
                    end=end,
                    energy_kwh={n: v.get(end, 0.0) / J_PER_KWH for n, v in energy.items()},
                    emissions_kg={n: v.get(end, 0.0) / 1000.0 for n, v in grams.items()},
                )
            )
        return tuple(days)

    def _matrix(self, promql: str, first_end: float, step: float) -> dict[str, dict[float, float]]:
        labels = self._grouping.labels
        out: dict[str, dict[float, float]] = {}
        for item in self._client.query_range(promql, first_end, self._req.end, step):
            name = self._name(tuple(item["metric"].get(label, "") for label in labels))
            series = out.setdefault(name, {})
            for ts, value in item["values"]:
                series[float(ts)] = series.get(float(ts), 0.0) + float(value)
        # Align the store's timestamps to ours (some stores round to the step).
        return {n: {first_end + round((t - first_end) / step) * step: v for t, v in s.items()} for n, s in out.items()}

    def _top_workloads(self) -> tuple[WorkloadUse, ...]:
        self._progress("top workloads")
        labels = ("namespace", "workload", "team")
        values = self._vector(q.top_workloads(self._req.window), labels)
        ranked = sorted(values.items(), key=lambda kv: -kv[1])[:10]
        return tuple(WorkloadUse(namespace=k[0], workload=k[1], team=k[2], energy_kwh=v / J_PER_KWH) for k, v in ranked)

    def _top_idle(self) -> tuple[WorkloadUse, ...]:
        self._progress("allocated-but-idle holders")
        labels = ("namespace", "workload", "team")
        values = self._vector(q.top_idle_holders(self._req.window), labels)
        ranked = [(k, v) for k, v in sorted(values.items(), key=lambda kv: -kv[1]) if v > 0][:10]
        idle = self._idle_energy(labels) if ranked else None
        return tuple(
            WorkloadUse(
                namespace=k[0],
                workload=k[1],
                team=k[2],
                gpu_hours_idle=v / 3600.0,
                idle_energy_kwh=None if idle is None else idle.get(k, 0.0) / J_PER_KWH,
            )
            for k, v in ranked
        )

    def _pue(self) -> float | None:
        pue = self._scalar(q.mean_gauge(q.PUE, self._req.window))
        if pue is None:
            self._notes.append(f"{q.PUE} absent: facility energy is not computed")
        return pue

    def _intensity_sources(self) -> tuple[IntensitySource, ...]:
        self._progress("grid intensity sources")
        labels = ("zone", "source", "signal")
        values = self._vector(q.mean_gauge(q.INTENSITY, self._req.window, labels), labels)
        return tuple(
            IntensitySource(zone=k[0], source=k[1], signal=k[2], mean_grams_per_kwh=v)
            for k, v in sorted(values.items())
        )

    def _currency(self) -> str | None:
        """The cost series' currency; the daemon's config's when the store has no costs."""
        configured = self._req.currency
        if configured and self._currencies and configured not in self._currencies:
            self._notes.append(
                f"the config's currency {configured} is not the cost series' ({', '.join(self._currencies)}): "
                "the offset price is taken as given"
            )
        return ", ".join(self._currencies) or configured

    @staticmethod
    def _with_facility(figures, pue: float | None):
        return replace(figures, facility_energy_kwh=None if pue is None else figures.energy_kwh * pue)


def _pick(values: dict | None, key: tuple[str, ...], name: str) -> float | None:
    """Waste values are keyed by label tuple (counters) or group name (receipts);
    None: not known; a group missing from known values wasted nothing."""
    if values is None:
        return None
    return values.get(key, values.get(name, 0.0))


def _sum_known(values) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) if known else None
