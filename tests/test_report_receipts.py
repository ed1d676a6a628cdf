"""Receipts: joined across nodes, repeats found cluster-wide by fingerprint,
malformed lines counted and shown, never a crash (tests/fixtures/receipts)."""

from __future__ import annotations

import json

import pytest
from procs import ROOT

from gpucarbon.report.errors import UsageError
from gpucarbon.report.receipts import (
    RECEIPT_FIELDS,
    Malformed,
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
    assert summary.lines == 18  # blank lines are not lines of receipts
    assert summary.malformed == 8
    examples = summary.malformed_examples
    assert len(examples) == 5  # at most five shown
    assert examples[0].endswith("node-b/receipts.jsonl:2: not JSON (Expecting value)")
    assert "receipts.jsonl:3: not a JSON object" in examples[1]
    assert "receipts.jsonl:4: id: missing" in examples[2]
    assert 'receipts.jsonl:6: energy_joules: "3600000" is not a number' in examples[3]


def test_a_multi_node_run_is_one_run(summary):
    runs = {r.id: r for r in summary.runs}
    llama = runs["llama-ft-7d2"]
    assert llama.nodes == ("node-a", "node-b")
    assert llama.energy_kwh == pytest.approx(20.0)  # 36 MJ on each node
    assert llama.emissions_kg == pytest.approx(8.0)
    assert llama.gpus == 4
    assert llama.outcome == "failed", "one node's part failed: the run failed"
    assert llama.started_at < llama.finished_at
    assert summary.runs[0].id == "llama-ft-7d2", "most energy first"


def test_a_node_file_collected_twice_counts_once(summary):
    assert len(summary.runs) == 6
    assert {r.id: r.nodes for r in summary.runs}["resnet-sweep-1"] == ("node-a",)
    assert {r.id: r.energy_kwh for r in summary.runs}["bert-eval-1"] == pytest.approx(0.5)


def test_repeats_are_found_across_nodes_by_fingerprint(summary):
    assert len(summary.repeats) == 1, "llama's fingerprint is on two nodes but it is one run"
    group = summary.repeats[0]
    assert group.fingerprint == "sha256:5b1e77"
    assert group.runs == ("resnet-sweep-1", "resnet-sweep-2", "resnet-sweep-3"), "first run first"
    assert group.repeated_energy_kwh == pytest.approx(1.9 + 2.1), "every run after the first"
    assert group.team == "vision"


def test_failed_and_preempted_runs_are_waste(summary):
    assert {r.id for r in summary.failed} == {"llama-ft-7d2", "bert-eval-1"}
    failed, repeated = waste_by_group(summary, "team")
    assert failed == pytest.approx({"nlp": 20.5})
    assert repeated == pytest.approx({"vision": 4.0})
    failed, _ = waste_by_group(summary, "workload")
    assert failed == pytest.approx({"research/PyTorchJob/llama-ft": 20.0, "research/Job/bert-eval": 0.5})


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
    assert {r.id for r in summary.runs} == {"resnet-sweep-2", "resnet-sweep-3"}


@pytest.mark.parametrize(
    "line, problem",
    [
        ('{"id": 5, "node": "n", "started_at": 1, "finished_at": 2, "energy_joules": 1}', "id: 5 is not a string"),
        ('{"id": "x", "node": "n", "started_at": 1, "finished_at": 2, "energy_joules": NaN}', "energy_joules"),
        ('{"id": "x", "node": "n", "started_at": 1, "finished_at": 2, "energy_joules": true}', "is not a number"),
        ('{"id": "x", "node": "n", "started_at": 1, "finished_at": 2, "energy_joules": 1, "gpus": "0"}', "gpus"),
        ('{"id": "x", "started_at": 1, "finished_at": 2, "energy_joules": 1}', "node: missing"),
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
    lines = [
        '{"id": "r", "node": "a", "started_at": 1, "finished_at": 5, "energy_joules": 1}',
        '{"id": "r", "node": "b", "started_at": 2, "finished_at": 9, "energy_joules": 2, "fingerprint": "f"}',
    ]
    [run] = join_runs(parse_receipt(line) for line in lines)
    assert (run.fingerprint, run.started_at, run.finished_at, run.nodes) == ("f", 1.0, 9.0, ("a", "b"))
