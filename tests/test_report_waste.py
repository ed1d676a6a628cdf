"""Failed and repeated energy per group: from the daemon's finished-run
counters (gpucarbon_team_finished_energy_joules_total{team,outcome},
gpucarbon_team_repeated_energy_joules_total{team}; docs/metrics.md "Finished
runs") when the store has them, from the receipts otherwise, and repeats across
nodes from the receipts.

The fake store checks which figure comes from where; a real Prometheus over
backfilled counter samples checks that the PromQL counts stepped counters right,
a series born inside the range included."""

from __future__ import annotations

import time

import pytest
from backfill import BackfilledPrometheus
from fakes.prometheus_api import FakePrometheus, success, vector
from procs import ROOT, backfill_openmetrics

from gpucarbon.report import queries as q
from gpucarbon.report.client import HttpConfig, PromClient
from gpucarbon.report.gather import Gatherer, ReportRequest
from gpucarbon.report.receipts import summarize

FIXTURES = ROOT / "tests" / "fixtures" / "receipts"
MJ = 1e6
KWH = 3.6e6


def fake_store(failed: dict[str, float] | None, repeated: dict[str, float] | None):
    """A store with the daemon's series, rules and energy for nlp and vision;
    the waste counters only when given (J per team)."""

    def answer(endpoint, form):
        if endpoint == "series":
            match = form["match[]"]
            if "finished_runs" in match:
                return success([{"__name__": q.FINISHED_ENERGY, "team": "nlp"}] if failed is not None else [])
            if match == q.BUILD_INFO:
                return success([{"__name__": q.BUILD_INFO}])
            return success([{"__name__": n} for n in q.required_rules(q.GROUPINGS["team"])])
        if endpoint == "query_range":
            return success({"resultType": "matrix", "result": []})
        promql = form["query"]
        if q.FINISHED_ENERGY in promql:
            return success(vector(*(({"team": t}, j) for t, j in (failed or {}).items())))
        if q.REPEATED_ENERGY in promql:
            return success(vector(*(({"team": t}, j) for t, j in (repeated or {}).items())))
        if "by (team)" in promql and q.GROUPINGS["team"].energy in promql:
            return success(vector(({"team": "nlp"}, 100 * KWH), ({"team": "vision"}, 50 * KWH)))
        if q.TOTAL_ENERGY in promql:
            return success(vector(({}, 160 * KWH)))
        return success(vector())

    return answer


def gather(store, by: str = "team", receipts=None):
    request = ReportRequest(start=0.0, end=30 * 86400.0, by=by, receipts=receipts)
    report = Gatherer(PromClient(store.url, HttpConfig(), timeout_s=10), request).report()
    return {g.name: g for g in report.groups}, report


def test_failed_and_repeated_energy_come_from_the_waste_counters():
    with FakePrometheus(fake_store({"nlp": 18 * MJ}, {"vision": 7.2 * MJ})) as store:
        groups, report = gather(store)
    assert groups["nlp"].failed_energy_kwh == pytest.approx(5.0)
    assert groups["vision"].failed_energy_kwh == 0.0, "counters there, nothing failed: 0, not unknown"
    assert groups["vision"].repeated_energy_kwh == pytest.approx(2.0)
    assert report.totals.failed_energy_kwh == pytest.approx(5.0)
    [failed_query] = [s.form["query"] for s in store.seen if q.FINISHED_ENERGY in s.form.get("query", "")]
    assert 'outcome=~"failed|preempted|evicted|timeout"' in failed_query, "the daemon's waste outcomes"
    assert any("same node only" in n for n in report.notes)


def test_with_receipts_failed_stays_on_the_counters_and_repeats_go_cluster_wide():
    receipts = summarize([str(FIXTURES)])
    with FakePrometheus(fake_store({"nlp": 18 * MJ}, {"vision": 0.0})) as store:
        groups, report = gather(store, receipts=receipts)
    assert groups["nlp"].failed_energy_kwh == pytest.approx(5.0), "every node's failed runs, not only collected ones"
    assert groups["vision"].repeated_energy_kwh == pytest.approx(1.9 + 2.1), "repeats across node-a and node-b"
    assert any("across nodes" in n for n in report.notes)


def test_without_counters_the_receipts_give_failed_energy():
    receipts = summarize([str(FIXTURES)])
    with FakePrometheus(fake_store(None, None)) as store:
        groups, _ = gather(store, receipts=receipts)
    # nlp: the joined llama-ft run (one node failed: 20 kWh) and the preempted bert-eval (0.5 kWh)
    assert groups["nlp"].failed_energy_kwh == pytest.approx(20.5)
    assert groups["vision"].failed_energy_kwh == 0.0


def test_without_counters_or_receipts_waste_is_unknown():
    with FakePrometheus(fake_store(None, None)) as store:
        groups, report = gather(store)
    assert groups["nlp"].failed_energy_kwh is None and groups["nlp"].repeated_energy_kwh is None
    assert report.totals.failed_energy_kwh is None
    assert any("no waste counters" in n for n in report.notes)


# --- the PromQL, in a real Prometheus ------------------------------------------


def test_stepped_counters_count_a_series_born_in_the_range(tmp_path):
    """One day of 60 s samples of the counters as the daemon exports them: a
    series appears when its team's first run of that outcome ends, already at
    that run's energy. Only the range's last day counts."""
    step = 60
    start = (int(time.time()) // 3600 - 72) * 3600  # three days ago: old enough for blocks, within retention
    day = 86400
    end = start + 2 * day

    def counter(labels: str, steps: list[tuple[float, float]], born: float) -> list[str]:
        lines, value = [], 0.0
        for t in range(int(born), end + 1, step):
            value = sum(j for at, j in steps if at <= t)
            lines.append(f"{labels} {value} {t}")
        return lines

    finished = "gpucarbon_team_finished_energy_joules_total"
    mid = start + day  # the range is [mid, end]
    series = {
        # nlp failed 1 MJ before the range, 5 MJ in it
        f'{finished}{{team="nlp",outcome="failed"}}': ([(start, 1 * MJ), (mid + 9 * 3600, 5 * MJ)], start),
        # nlp's first timeout before the range: no change in it
        f'{finished}{{team="nlp",outcome="timeout"}}': ([(start, 4 * MJ)], start),
        # vision's first preempted run ends inside the range (7 MJ), then another (3 MJ)
        f'{finished}{{team="vision",outcome="preempted"}}': (
            [(mid + 6 * 3600, 7 * MJ), (mid + 18 * 3600, 3 * MJ)],
            mid + 6 * 3600,
        ),
        # an evicted run on another node, born in the range
        f'{finished}{{team="nlp",outcome="evicted",node="b"}}': ([(mid + 3 * 3600, 0.6 * MJ)], mid + 3 * 3600),
        # not waste
        f'{finished}{{team="vision",outcome="succeeded"}}': ([(mid + 3600, 99 * MJ)], mid + 3600),
        f'{finished}{{team="nlp",outcome="deleted"}}': ([(mid + 3600, 42 * MJ)], mid + 3600),
        # vision's first repeat, born in the range
        'gpucarbon_team_repeated_energy_joules_total{team="vision"}': ([(mid + 12 * 3600, 2 * MJ)], mid + 12 * 3600),
    }
    families: dict[str, list[str]] = {}
    for labels, (steps, born) in series.items():
        families.setdefault(labels.split("{")[0], []).extend(counter(labels, steps, born))
    text = []
    for name, lines in families.items():
        text.append(f"# TYPE {name.removesuffix('_total')} counter")
        text.extend(lines)
    (tmp_path / "waste.om").write_text("\n".join(text) + "\n# EOF\n")
    data = tmp_path / "data"
    data.mkdir()
    backfill_openmetrics(tmp_path / "waste.om", data)
    prom = BackfilledPrometheus(data, tmp_path)
    try:
        client = PromClient(prom.url, HttpConfig(), timeout_s=30)
        window = f"{day}s"

        def per_team(promql: str) -> dict[str, float]:
            return {item["metric"]["team"]: float(item["value"][1]) for item in client.query(promql, end)}

        failed = per_team(q.failed_energy(window))
        repeated = per_team(q.repeated_energy(window))
    finally:
        prom.stop()
    # increase() extrapolates by under a sample interval at each end: within 0.5%
    assert failed["nlp"] == pytest.approx(5.6 * MJ, rel=0.005), "5 MJ stepped + 0.6 MJ born in the range"
    assert failed["vision"] == pytest.approx(10 * MJ, rel=0.005), "born at 7 MJ, then +3 MJ"
    assert repeated == pytest.approx({"vision": 2 * MJ}, rel=0.005)
