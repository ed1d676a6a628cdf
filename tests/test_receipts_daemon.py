"""Receipts from the daemon as it is built (app.build_daemon): the receipt adds
up exactly to the final workload counters, a restart mid-run gives one receipt
with the whole energy, bad receipt config is one line and exit 2."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpucarbon.app import RunOptions, build_daemon
from gpucarbon.clock import ManualClock
from gpucarbon.config import parse_config
from gpucarbon.receipts.store import FILE_NAME, ReceiptFile
from gpucarbon.simulation.scenario import parse_scenario

ROOT = Path(__file__).resolve().parent.parent
SECONDS = 200.0  # simulated time each example runs
CONFIG = parse_config("retention: {finished: 2h}\nslurm: {enabled: false}\ncarbon: {pue: 1.3}\n")


def daemon_for(scenario_text: str, clock: ManualClock, state_dir: Path | None = None, config=CONFIG):
    options = RunOptions(
        scenario=parse_scenario(scenario_text), state_dir=str(state_dir) if state_dir else None, procfs="/nonexistent"
    )
    return build_daemon(config, options, base_clock=clock)


def capture(daemon) -> list[dict]:
    """Receipts as the poll loop hands them over (the dispatcher task is not needed)."""
    got: list[dict] = []
    daemon.receipts.dispatcher.submit = got.extend
    return got


async def run_for(daemon, clock: ManualClock, seconds: float, step: float) -> None:
    elapsed = 0.0
    while elapsed < seconds:
        await daemon.poller.poll()  # hands the snapshot to the receipts
        if daemon.checkpointer is not None:
            await daemon.checkpointer.maybe_save()
        clock.advance(step)
        elapsed += step


def series_by_run(snapshot) -> dict[str, tuple[int, float]]:
    totals: dict[str, list] = defaultdict(lambda: [0, 0.0])
    for w in snapshot.workloads:
        totals[w.key][0] += round(w.energy_j * 1000)
        totals[w.key][1] += w.grams
    return {key: (mj, grams) for key, (mj, grams) in totals.items()}


workload = st.fixed_dictionaries(
    {
        "gpus": st.lists(st.integers(0, 2), min_size=1, max_size=3, unique=True),
        "start": st.integers(0, 50),
        "length": st.integers(3, 100),
        "sm_util": st.floats(0, 1),
        "allocated_only": st.booleans(),
        "outcome": st.sampled_from(["succeeded", "failed", "preempted", "evicted", "timeout"]),
    }
)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(workloads=st.lists(workload, min_size=1, max_size=4), step=st.sampled_from([2.0, 5.0, 7.0]))
def test_receipt_energy_is_the_final_workload_counters_to_the_millijoule(workloads, step):
    lines = [
        "seed: 3",
        "gpus: [{model: NVIDIA H100 80GB HBM3, count: 3, idle_watts: 70, max_watts: 700}]",
        "workloads:",
    ]
    for i, w in enumerate(workloads):
        lines.append(
            f"  - {{namespace: ns, pod: run-{i}, container: c, workload: Job/run-{i}, team: t{i % 2}, "
            f"gpus: {w['gpus']}, start: {w['start']}, end: {w['start'] + w['length']}, "
            f"sm_util: {w['sm_util']:.3f}, allocated_only: {str(w['allocated_only']).lower()}, "
            f"outcome: {w['outcome']}}}"
        )
    clock = ManualClock()
    daemon = daemon_for("\n".join(lines), clock)
    receipts = capture(daemon)
    asyncio.run(run_for(daemon, clock, SECONDS, step))
    final = series_by_run(daemon.poller.snapshot)
    assert len(receipts) == len({r["pod"] for r in receipts})  # one per run, never twice
    for receipt in receipts:
        key = "sim/" + receipt["pod"].removeprefix("run-")
        mj, grams = final[key]
        assert round(receipt["energy_joules"] * 1000) == mj  # exact, to the millijoule
        assert sum(round(g["energy_joules"] * 1000) for g in receipt["gpus"]) == mj
        assert receipt["emissions_grams"] == pytest.approx(grams, rel=1e-12, abs=1e-12)
        assert receipt["outcome"] == workloads[int(receipt["pod"].removeprefix("run-"))]["outcome"]
        assert receipt["idle_energy_joules"] + receipt["active_energy_joules"] == pytest.approx(
            receipt["energy_joules"]
        )
    # Every run that was seen (has a series; a run shorter than one poll may
    # never be) and ended in time got its receipt.
    ended = {
        f"run-{i}"
        for i, w in enumerate(workloads)
        if w["start"] + w["length"] + 2 * step < SECONDS and f"sim/{i}" in final
    }
    assert ended <= {r["pod"] for r in receipts}


RESTART = """
seed: 4
gpus: [{model: NVIDIA H100 80GB HBM3, count: 1, idle_watts: 70, max_watts: 700}]
workloads:
  - {namespace: research, pod: long-0, container: c, workload: Job/long, team: nlp, gpus: [0],
     start: 0, end: 100, sm_util: 0.8, outcome: succeeded}
"""


@pytest.mark.asyncio
async def test_restart_mid_run_gives_one_receipt_with_the_whole_energy(tmp_path):
    clock = ManualClock()
    first = daemon_for(RESTART, clock, tmp_path)
    await first.receipts.start()
    await run_for(first, clock, 50.0, 5.0)  # half the run
    before = series_by_run(first.poller.snapshot)["sim/0"][0]
    await first.checkpointer.save()
    await first.receipts.close()
    assert ReceiptFile(tmp_path, max_bytes=1 << 20, keep=1).read_all() == []

    # A new process. The simulation's clock starts over, so this life runs the
    # job for 100 s; its energy adds to what the checkpoint carried.
    clock.advance(30.0)
    second = daemon_for(RESTART, clock, tmp_path)
    await second.receipts.start()
    await run_for(second, clock, 130.0, 5.0)
    await second.receipts.dispatcher.flush()
    final = series_by_run(second.poller.snapshot)["sim/0"][0]
    await second.checkpointer.save()
    await second.receipts.close()
    [receipt] = ReceiptFile(tmp_path, max_bytes=1 << 20, keep=1).read_all()
    assert round(receipt["energy_joules"] * 1000) == final
    assert final > before + 100 * 500 * 1000 * 0.9  # both lives: the first 50 s and the second 100 s

    # A third start from the checkpoint taken before the run ended in the
    # second life would see the run end again: the file says it has a receipt.
    third = daemon_for(RESTART, clock, tmp_path)
    await third.receipts.start()
    await run_for(third, clock, 130.0, 5.0)
    await third.receipts.dispatcher.flush()
    await third.receipts.close()
    assert len(ReceiptFile(tmp_path, max_bytes=1 << 20, keep=1).read_all()) == 1


@pytest.mark.asyncio
async def test_waste_counters_and_repeats_survive_a_restart(tmp_path):
    scenario = """
seed: 5
gpus: [{model: G, count: 1, idle_watts: 70, max_watts: 700}]
workloads:
  - {namespace: v, pod: a, workload: Job/a, team: vision, gpus: [0], start: 0, end: 10, sm_util: 0.5,
     image: "reg/x@sha256:1", command: [train]}
  - {namespace: v, pod: b, workload: Job/b, team: vision, gpus: [0], start: 12, end: 20, sm_util: 0.5,
     image: "reg/x@sha256:1", command: [train], outcome: failed}
"""
    clock = ManualClock()
    first = daemon_for(scenario, clock, tmp_path)
    got = capture(first)
    await run_for(first, clock, 30.0, 1.0)
    assert [r["outcome"] for r in got] == ["succeeded", "failed"] and got[1]["repeat_of"] == got[0]["id"]
    view = first.receipts.view()
    await first.checkpointer.save()
    second = daemon_for(scenario, clock, tmp_path)
    assert second.receipts.view().finished == view.finished and second.receipts.view().repeated == view.repeated
    assert dict(view.repeated)["vision"] == pytest.approx(got[1]["energy_joules"])


def run_cli(*args: str, timeout: float = 60):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "daemon")}
    return subprocess.run(
        [sys.executable, "-m", "gpucarbon", *args], capture_output=True, text=True, timeout=timeout, env=env
    )


@pytest.mark.parametrize(
    "text, line",
    [
        ("receipts:\n  offset_price_per_tonne: -5\n", "receipts.offset_price_per_tonne: -5: must be at least 0.0"),
        (
            "receipts:\n  webhook: {url: 'ftp://x'}\n",
            "receipts.webhook.url: 'ftp://x': must be an http:// or https:// URL",
        ),
        (
            "receipts:\n  webhook: {url: 'https://h/x', token: abc}\n",
            "receipts.webhook.token: tokens are never read from the config file; use token_env or token_file",
        ),
        (
            "receipts:\n  repeat_window: forever\n",
            "receipts.repeat_window: 'forever': not a duration (examples: 500ms, 1s, 10m, 1h30m)",
        ),
    ],
)
def test_bad_receipt_config_is_one_line_exit_two(tmp_path, text, line):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    result = run_cli(f"--config.file={path}", "--simulate", "--once")
    assert result.returncode == 2
    assert result.stderr.strip() == f"gpu-carbon-exporter: {path}: {line}"


@pytest.mark.asyncio
async def test_unwritable_state_dir_is_counted_and_the_daemon_keeps_polling(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("")
    clock = ManualClock()
    daemon = daemon_for(RESTART.replace("end: 100", "end: 10"), clock)
    daemon.receipts.dispatcher._file = ReceiptFile(blocker / "state", max_bytes=1 << 20, keep=1)
    await daemon.receipts.start()
    await run_for(daemon, clock, 30.0, 2.0)
    await daemon.receipts.dispatcher.flush()
    counts = {(s, r): n for s, r, n in daemon.poller.snapshot.receipts.sinks}
    assert counts[("file", "error")] >= 1 and counts[("memory", "ok")] == 1
    assert "receipt(s) not written" in caplog.text
    await run_for(daemon, clock, 4.0, 2.0)  # still polling
    assert daemon.poller.snapshot.ready
    await daemon.receipts.close()


@pytest.mark.asyncio
async def test_a_fault_in_the_receipt_stage_costs_receipts_never_a_poll(caplog):
    clock = ManualClock()
    daemon = daemon_for(RESTART, clock)

    def broken(*args, **kwargs):
        raise RuntimeError("bug")

    daemon.receipts._tracker.observe = broken
    await run_for(daemon, clock, 6.0, 2.0)
    snapshot = daemon.poller.snapshot
    assert snapshot.ready  # three polls, each published
    # Each fault shows in the next snapshot (the receipt stage reads the one just published).
    assert ("tracker", "error", 2) in snapshot.receipts.sinks
    assert daemon.receipts.failures == 3
    assert "could not be read for finished runs" in caplog.text


def test_receipt_file_settings_without_a_state_dir_are_an_error(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("receipts:\n  file: {keep: 2}\n")
    result = run_cli(f"--config.file={path}", "--simulate", "--once")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (  # after the start-up log lines
        "gpu-carbon-exporter: receipts.file: does nothing without state.dir or --state.dir (receipts.jsonl lives there)"
    )
    assert "Traceback" not in result.stderr
    ok = run_cli(f"--config.file={path}", "--simulate", "--once", f"--state.dir={tmp_path / 'state'}")
    assert ok.returncode == 0, ok.stderr


@pytest.mark.asyncio
async def test_the_report_reads_the_receipts_the_daemon_writes(tmp_path):
    """The cluster report (gpucarbon.report) parses receipts.jsonl as the daemon
    writes it: no line is malformed, and energy, outcome and fingerprint agree."""
    from gpucarbon.report.receipts import parse_receipt

    scenario = """
seed: 6
gpus: [{model: G, count: 1, idle_watts: 70, max_watts: 700}]
workloads:
  - {namespace: v, pod: a, workload: Job/a, team: vision, gpus: [0], start: 0, end: 6, sm_util: 0.5,
     image: "reg/x@sha256:1", command: [train]}
  - {namespace: v, pod: b, workload: Job/b, team: vision, gpus: [0], start: 8, end: 14, sm_util: 0.5,
     image: "reg/x@sha256:1", command: [train], outcome: failed}
"""
    clock = ManualClock()
    daemon = daemon_for(scenario, clock, tmp_path)
    await daemon.receipts.start()
    await run_for(daemon, clock, 20.0, 1.0)
    await daemon.receipts.dispatcher.flush()
    await daemon.receipts.close()
    lines = (tmp_path / FILE_NAME).read_text().splitlines()
    assert len(lines) == 2
    for line in lines:
        written = json.loads(line)
        parsed = parse_receipt(line)
        assert (parsed.id, parsed.outcome, parsed.fingerprint) == (
            written["id"],
            written["outcome"],
            written["fingerprint"],
        )
        assert parsed.energy_joules == written["energy_joules"] and parsed.gpus == 1
    assert json.loads(lines[1])["fingerprint"] == json.loads(lines[0])["fingerprint"]
