"""Receipts: joined across nodes, repeats found cluster-wide by fingerprint,
malformed lines counted and shown, never a crash (tests/fixtures/receipts)."""

from __future__ import annotations

import json

import pytest
from procs import ROOT

from gpucarbon.report.errors import UsageError
from gpucarbon.report.receipts import (
    RECEIPT_FIELDS,
    WASTE_OUTCOMES,
    Malformed,
    find_repeats,
    join_runs,
    parse_receipt,
    read_receipts,
    receipt_files,
    summarize,
    waste_by_group,
)

FIXTURES = ROOT / "tests" / "fixtures" / "receipts"


@pytest.fixture(scope="module")
def summary():
    return summarize([str(FIXTURES)])


def test_every_jsonl_file_under_a_directory_is_read(summary):
    assert summary.files == 3
    assert [p.parent.name for p in receipt_files([str(FIXTURES)])] == ["node-a", "node-b", "node-c"]


def test_malformed_lines_are_counted_with_file_and_line(summary):
    assert summary.lines == 23  # blank lines are not lines of receipts
    assert summary.malformed == 8
    examples = summary.malformed_examples
    assert len(examples) == 5  # at most five shown
    assert examples[0].endswith("node-b/receipts.jsonl:2: not JSON (Expecting value)")
    assert "receipts.jsonl:3: not a JSON object" in examples[1]
    assert "receipts.jsonl:4: id: missing" in examples[2]
    assert 'receipts.jsonl:6: energy_joules: "3600000" is not a number' in examples[3]


def by_workload(summary) -> dict[str, list]:
    out: dict[str, list] = {}
    for run in summary.runs:
        out.setdefault(run.workload, []).append(run)
    return out


def test_the_fixtures_are_what_the_daemon_writes():
    """Every well-formed fixture line has the daemon's receipt fields, in its order."""
    from gpucarbon.receipts.builder import GpuTally, ReceiptContext, RunTally, build_receipt
    from gpucarbon.receipts.model import RunFacts

    gpu = GpuTally("GPU-0", "H100", 1000, 100, 0.1, 1.0, 1.0, 0.0, 0.0)
    ctx = ReceiptContext("n", 1.0, "DE", "table", "average", False, "EUR", "EUR", 10.0)
    real = build_receipt(RunTally("pod", "u", "ns", "p", "Job/x", "t", 0.0, 1.0, (gpu,)), RunFacts(), ctx)
    for path in receipt_files([str(FIXTURES)]):
        for line in path.read_text().splitlines():
            try:
                receipt = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(receipt, dict) and receipt.get("schema") == 1:
                assert list(receipt) == list(real), path
                assert set(RECEIPT_FIELDS) <= set(real), "the report reads only fields the daemon writes"


def test_a_multi_node_pod_run_is_joined_by_its_owner(summary):
    [llama] = by_workload(summary)["PyTorchJob/llama-ft"]
    assert llama.nodes == ("node-a", "node-b")
    assert len(llama.receipt_ids) == 2, "the daemon's ids differ per node"
    assert llama.energy_kwh == pytest.approx(20.0)  # 36 MJ on each node
    assert llama.emissions_kg == pytest.approx(8.0)
    assert llama.gpus == 4
    assert llama.outcome == "failed", "one node's part failed: the run failed"
    assert llama.started_at < llama.finished_at
    assert summary.runs[0] is llama, "most energy first"


def test_a_multi_node_slurm_job_is_joined_by_its_job_id(summary):
    [job] = by_workload(summary)["slurm/4242"]
    assert job.nodes == ("node-b", "node-c") and job.gpus == 8 and job.outcome == "timeout"
    assert job.energy_kwh == pytest.approx(8.0)


def test_runs_of_one_owner_at_different_times_stay_apart(summary):
    nightly = by_workload(summary)["CronJob/embeddings-nightly"]
    assert len(nightly) == 2, "a CronJob's runs on two nights are two runs"
    replicas = by_workload(summary)["Deployment/chat"]
    assert len(replicas) == 2, "a Deployment's replicas are not one run"


def test_a_node_file_collected_twice_counts_once(summary):
    assert len(summary.runs) == 10
    assert by_workload(summary)["Job/resnet-sweep-1"][0].nodes == ("node-a",)
    assert by_workload(summary)["Job/bert-eval"][0].energy_kwh == pytest.approx(0.5)


def test_repeats_are_found_across_nodes_by_fingerprint(summary):
    assert len(summary.repeats) == 1, "llama's fingerprint is on two nodes but it is one run"
    group = summary.repeats[0]
    assert group.fingerprint == "sha256:" + "5" * 64
    ids = {r.id: r.workload for r in summary.runs}
    assert [ids[i] for i in group.runs] == ["Job/resnet-sweep-1", "Job/resnet-sweep-2", "Job/resnet-sweep-3"]
    assert group.repeated_energy_kwh == pytest.approx(1.9 + 2.1), "every run after the first"
    assert group.team == "vision"


def test_failed_preempted_evicted_and_timed_out_runs_are_waste(summary):
    assert {r.workload for r in summary.failed} == {"PyTorchJob/llama-ft", "Job/bert-eval", "slurm/4242"}
    assert "deleted" not in WASTE_OUTCOMES and set(WASTE_OUTCOMES) == {"failed", "preempted", "evicted", "timeout"}
    failed, repeated = waste_by_group(summary, "team")
    assert failed == pytest.approx({"nlp": 20.5, "physics": 8.0})
    assert repeated == pytest.approx({"vision": 4.0})
    failed, _ = waste_by_group(summary, "workload")
    assert failed == pytest.approx(
        {"research/PyTorchJob/llama-ft": 20.0, "research/Job/bert-eval": 0.5, "/slurm/4242": 8.0}
    )


def test_the_range_keeps_runs_that_finished_in_it():
    start = parse_receipt(
        json.dumps(
            {
                "id": "x",
                "node": "n",
                "started_at": "2026-11-12T00:00:00Z",
                "finished_at": "2026-11-12T00:00:00Z",
                "energy_joules": 0,
            }
        )
    ).started_at
    summary = summarize([str(FIXTURES)], start, start + 86400 * 1.5)
    assert {r.workload for r in summary.runs} == {"Job/resnet-sweep-2", "Job/resnet-sweep-3", "Job/bert-eval"}


@pytest.mark.parametrize(
    "line, problem",
    [
        ('{"id": 5, "node": "n", "started_at": 1, "finished_at": 2, "energy_joules": 1}', "id: 5 is not a string"),
        ('{"id": "x", "node": "n", "started_at": 1, "finished_at": 2, "energy_joules": NaN}', "energy_joules"),
        ('{"id": "x", "node": "n", "started_at": 1, "finished_at": 2, "energy_joules": true}', "is not a number"),
        ('{"id": "x", "node": "n", "started_at": 1, "finished_at": 2, "energy_joules": 1, "gpus": "0"}', "gpus"),
        ('{"id": "x", "started_at": 1, "finished_at": 2, "energy_joules": 1}', "node: missing"),
        ('{"id": "x", "node": "n", "started_at": 1, "finished_at": 2, "energy_joules": 1, "owner": "Job/x"}', "owner"),
        (
            '{"id": "x", "node": "n", "started_at": 1, "finished_at": 2, "energy_joules": 1, "owner": {"kind": "Job"}}',
            "owner.name",
        ),
    ],
)
def test_each_field_is_checked(line, problem):
    with pytest.raises(Malformed, match=problem):
        parse_receipt(line)


def test_optional_fields_may_be_absent_and_unknown_fields_are_ignored():
    receipt = parse_receipt(
        '{"id": "x", "node": "n", "started_at": 1, "finished_at": 2, "energy_joules": 3.5, "future": {"nested": 1}}'
    )
    assert receipt.team == "" and receipt.fingerprint is None and receipt.gpus == 0
    assert set(RECEIPT_FIELDS) >= {"id", "node", "energy_joules", "fingerprint", "repeat_of", "gpus"}


def test_binary_garbage_is_malformed_not_a_crash(tmp_path):
    path = tmp_path / "receipts.jsonl"
    path.write_bytes(b"\xff\xfe\x00garbage\n" + b"{" * 5000 + b"\n" + b"[" * 200_000 + b"\n")
    receipts, lines, malformed, _ = read_receipts([path])
    assert (receipts, lines, malformed) == ([], 3, 3)


def test_a_missing_path_is_bad_usage():
    with pytest.raises(UsageError, match="no-such-dir"):
        receipt_files(["/no-such-dir"])


def test_join_keeps_the_fingerprint_from_any_node():
    owner = (
        '"kind": "pod", "namespace": "ns", '
        '"owner": {"apiVersion": "jobset.x-k8s.io/v1alpha2", "kind": "JobSet", "name": "j", "uid": null}'
    )
    lines = [
        '{"id": "r1", "node": "a", "started_at": 1, "finished_at": 5, "energy_joules": 1, ' + owner + "}",
        '{"id": "r2", "node": "b", "started_at": 2, "finished_at": 9, "energy_joules": 2, "fingerprint": "f", '
        + owner
        + "}",
    ]
    [run] = join_runs(parse_receipt(line) for line in lines)
    assert (run.fingerprint, run.started_at, run.finished_at, run.nodes) == ("f", 1.0, 9.0, ("a", "b"))
    assert run.id == "r1" and run.receipt_ids == ("r1", "r2")


def test_without_an_owner_or_job_id_the_receipt_id_is_the_run():
    lines = [
        '{"id": "r1", "node": "a", "kind": "pod", "started_at": 1, "finished_at": 5, "energy_joules": 1}',
        '{"id": "r2", "node": "b", "kind": "pod", "started_at": 1, "finished_at": 5, "energy_joules": 1}',
        '{"id": "r2", "node": "b", "kind": "pod", "started_at": 1, "finished_at": 5, "energy_joules": 1}',
    ]
    assert sorted(r.id for r in join_runs(parse_receipt(line) for line in lines)) == ["r1", "r2"]


def _run_line(rid: str, node: str, finished: float, outcome: str) -> str:
    return json.dumps(
        {
            "id": rid,
            "node": node,
            "kind": "pod",
            "team": "vision",
            "outcome": outcome,
            "started_at": finished - 3600,
            "finished_at": finished,
            "energy_joules": 3.6e6,
            "fingerprint": "sha256:same",
        }
    )


def test_a_repeat_is_of_an_earlier_success_within_the_window_as_on_a_node():
    """The daemon's rule (docs/receipts.md, "Repeats"), applied across nodes."""
    day = 86400.0
    lines = [
        _run_line("failed-first", "a", 1 * day, "failed"),  # nothing succeeded yet: waste, not a repeat
        _run_line("retry-ok", "b", 2 * day, "succeeded"),  # the first success: not a repeat
        _run_line("again", "a", 3 * day, "succeeded"),  # repeats retry-ok
        _run_line("again-failed", "b", 4 * day, "failed"),  # repeats again, whatever its own outcome
        _run_line("much-later", "a", 20 * day, "succeeded"),  # 16 days after the last success: outside 7 days
    ]
    runs = join_runs(parse_receipt(line) for line in lines)
    [group] = find_repeats(runs)
    assert group.repeats == ("again", "again-failed")
    assert group.runs == ("failed-first", "retry-ok", "again", "again-failed", "much-later")
    assert group.repeated_energy_kwh == pytest.approx(2.0)
    [wide] = find_repeats(runs, window_s=30 * day)  # receipts.repeat_window: 30d in the daemon's config
    assert wide.repeats == ("again", "again-failed", "much-later")


def test_the_report_takes_the_repeat_window_from_the_daemons_config(tmp_path):
    from gpucarbon.report.cli import build_parser, daemon_config

    config = tmp_path / "gpucarbon.yaml"
    config.write_text("receipts:\n  repeat_window: 30d\n")
    args = build_parser().parse_args(["--prometheus.url=http://x", f"--config.file={config}"])
    assert daemon_config(args).receipts.repeat_window_s == 30 * 86400.0
