"""Running totals: retention, the series cap and team totals keep every mJ."""

from gpucarbon.accounting import Prices, price_charge
from gpucarbon.attribution.energy import Interval
from gpucarbon.attribution.policy import split_interval
from gpucarbon.identity.model import Consumer
from gpucarbon.ledger import OVERFLOW_KEY, Ledger


def charge(uuid, energy, consumers, running=None, dt=1.0):
    running = running or {}
    split = split_interval(energy, 0, sorted(c.key for c in consumers), running)
    return price_charge(
        uuid,
        Interval(dt, energy, "counter"),
        split,
        {c.key: c for c in consumers},
        running,
        Prices(grams_per_mj=0.5 / 1e3),
    )


def per_gpu_sum(ledger, uuid):
    workloads = sum(e.energy_mj for (u, _), e in ledger.workloads.items() if u == uuid)
    gpu = ledger.gpus[uuid]
    return workloads + gpu.retired_mj + gpu.unattributed_mj, gpu.energy_mj


def test_finished_workload_expires_after_retention_and_totals_hold():
    ledger = Ledger(max_workload_series=100, default_team="unassigned")
    a = Consumer("a", workload="Job/a", team="t1")
    ledger.book(charge("G", 1000, [a]), now=0)
    ledger.book(charge("G", 500, []), now=1)  # a finished: not holding any more
    assert ledger.expire(now=100, retention_s=600) == 0
    assert ledger.expire(now=700, retention_s=600) == 1
    assert ledger.workloads == {}
    assert per_gpu_sum(ledger, "G") == (1500, 1500)
    assert ledger.gpus["G"].retired_mj == 1000
    assert ledger.teams["t1"].energy_mj == 1000  # the team keeps the total


def test_holding_workloads_never_expire():
    ledger = Ledger(100, "unassigned")
    a = Consumer("a", workload="Job/a")
    for t in range(5):
        ledger.book(charge("G", 10, [a]), now=t * 1000)
        assert ledger.expire(now=t * 1000, retention_s=1) == 0


def test_series_cap_folds_new_label_sets_into_overflow():
    ledger = Ledger(max_workload_series=2, default_team="unassigned")
    consumers = [Consumer(f"c{i}", workload=f"Job/{i}", team=f"team{i % 2}") for i in range(5)]
    for c in consumers:
        ledger.book(charge("G", 100, [c]), now=0)
    keys = {k for _, k in ledger.workloads}
    assert keys == {"c0", "c1", OVERFLOW_KEY}
    assert ledger.dropped_series == 3
    for c in consumers:  # the same label sets again: not new drops
        ledger.book(charge("G", 100, [c]), now=1)
    assert ledger.dropped_series == 3
    assert ledger.workloads[("G", OVERFLOW_KEY)].energy_mj == 600
    assert per_gpu_sum(ledger, "G") == (1000, 1000)
    assert ledger.teams["team0"].energy_mj == 600 and ledger.teams["team1"].energy_mj == 400


def test_labels_improve_without_a_new_series():
    ledger = Ledger(100, "unassigned")
    ledger.book(charge("G", 100, [Consumer("pod/u1/c", workload="Pod/uid-u1")]), now=0)
    ledger.book(charge("G", 100, [Consumer("pod/u1/c", namespace="ns", pod="p", workload="Job/x")]), now=1)
    (entry,) = ledger.workloads.values()
    assert entry.energy_mj == 200 and entry.consumer.workload == "Job/x"


def test_unknown_team_goes_to_default():
    ledger = Ledger(100, "nobody")
    ledger.book(charge("G", 100, [Consumer("x", workload="process/u/c")]), now=0)
    assert ledger.teams["nobody"].energy_mj == 100


def test_emissions_follow_the_energy_split():
    ledger = Ledger(100, "u")
    a, b = Consumer("a"), Consumer("b")
    ledger.book(charge("G", 3000, [a, b], running={"a": 1.0, "b": 0.5}), now=0)
    gpu = ledger.gpus["G"]
    parts = sum(e.grams for e in ledger.workloads.values())
    assert abs(parts + gpu.unattributed_grams - gpu.grams) < 1e-12
    assert abs(gpu.grams - 3000 * 0.5 / 1e3) < 1e-12


def test_provisional_series_fold_into_the_final_one():
    ledger = Ledger(100, "unassigned")
    provisional = Consumer("pod/u1/abcdef123456", workload="Pod/uid-u1")
    by_name = Consumer("pod-name/ns/p/c", namespace="ns", pod="p", container="c", workload="Pod/p")
    ledger.book(charge("G", 300, [provisional, by_name]), now=0)
    final = Consumer(
        "pod/u1/c",
        namespace="ns",
        pod="p",
        container="c",
        workload="Job/x",
        team="nlp",
        aliases=("pod/u1/abcdef123456", "pod-name/ns/p/c"),
    )
    ledger.book(charge("G", 100, [final]), now=1)
    (entry,) = ledger.workloads.values()
    assert entry.consumer.workload == "Job/x" and entry.energy_mj == 400
    assert per_gpu_sum(ledger, "G") == (400, 400)
    assert ledger.teams["unassigned"].energy_mj == 300 and ledger.teams["nlp"].energy_mj == 100


def test_a_pod_recreated_under_the_same_name_continues_one_monotonic_series():
    # Issue 11: a StatefulSet pod (or a retried Job pod with a fixed name) comes
    # back with a new UID inside retention.finished; the old and the new
    # consumer have the same labels and must never be two series.
    ledger = Ledger(100, "unassigned")
    old = Consumer(
        "uid-1/c", namespace="ml", pod="trainer-0", container="c", workload="StatefulSet/trainer", team="nlp"
    )
    new = Consumer(
        "uid-2/c", namespace="ml", pod="trainer-0", container="c", workload="StatefulSet/trainer", team="nlp"
    )
    ledger.book(charge("G", 3000, [old]), now=0)
    ledger.book(charge("G", 100, []), now=1)  # old pod gone, within retention
    seen = []
    for t, consumers in ((2, [new]), (3, [new]), (4, [old, new]), (5, [new])):  # even a lingering old process
        ledger.book(charge("G", 1000, consumers), now=t)
        labels = [e.consumer.labels() for (u, _), e in ledger.workloads.items() if u == "G"]
        assert len(labels) == len(set(labels)), "two series with one label set"
        [entry] = ledger.workloads.values()
        seen.append(entry.energy_mj)
    assert seen == sorted(seen) and seen[-1] == 3000 + 4 * 1000, seen  # monotonic, nothing lost
    assert per_gpu_sum(ledger, "G") == (7100, 7100)


def test_metadata_that_makes_two_series_equal_merges_them():
    ledger = Ledger(100, "unassigned")
    a = Consumer("pod-uid/c", namespace="ml", pod="p", container="c", workload="Pod/p", team="t")
    b_early = Consumer("container-id", workload="container/abc")  # before its metadata arrived
    ledger.book(charge("G", 500, [a, b_early]), now=0)
    b_late = Consumer("container-id", namespace="ml", pod="p", container="c", workload="Pod/p", team="t")
    ledger.book(charge("G", 500, [b_late]), now=1)
    assert len(ledger.workloads) == 1
    assert per_gpu_sum(ledger, "G") == (1000, 1000)


def holding(ledger):
    return {key: (e.holding, e.power_w) for key, e in ledger.workloads.items()}


def test_a_booking_releases_exactly_the_gpus_former_holders():
    """Holding and power follow the last interval of each GPU only: a series
    left out is released with power 0, one booked again keeps holding, other
    GPUs' series are untouched; a read gap and a restore release everyone."""
    ledger = Ledger(max_workload_series=3, default_team="unassigned")
    a, b, c, d = (Consumer(k, workload=f"Job/{k}") for k in "abcd")
    ledger.book(charge("G0", 2000, [a, b]), now=0)
    ledger.book(charge("G1", 3000, [a]), now=0)
    ledger.book(charge("G0", 1000, [b]), now=1)
    assert holding(ledger) == {("G0", "a"): (False, 0.0), ("G0", "b"): (True, 1.0), ("G1", "a"): (True, 3.0)}
    ledger.book(charge("G0", 4000, [c, d]), now=2)  # the cap: c and d go to overflow, on G0
    assert holding(ledger) == {
        ("G0", "a"): (False, 0.0),
        ("G0", "b"): (False, 0.0),
        ("G1", "a"): (True, 3.0),
        ("G0", OVERFLOW_KEY): (True, 2.0),
    }
    ledger.mark_gpu_gap("G1")
    assert holding(ledger)[("G1", "a")] == (False, 0.0)
    assert holding(ledger)[("G0", OVERFLOW_KEY)] == (True, 2.0)
    ledger.book(charge("G0", 500, []), now=3)
    assert not any(h for h, _ in holding(ledger).values())
    ledger.book(charge("G1", 700, [a]), now=4)
    ledger.restore(ledger.to_dict(), now=5)
    assert not any(h for h, _ in holding(ledger).values()), "restored series hold nothing"
    ledger.book(charge("G1", 900, [a]), now=6)
    ledger.book(charge("G0", 100, [b]), now=6)
    assert {k: v for k, v in holding(ledger).items() if v[0]} == {("G1", "a"): (True, 0.9), ("G0", "b"): (True, 0.1)}
    ledger.book(charge("G1", 100, []), now=7)
    assert holding(ledger)[("G1", "a")] == (False, 0.0), "released from the restored ledger's own entry"
