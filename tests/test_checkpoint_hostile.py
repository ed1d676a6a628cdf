"""Checkpoints are outside input too (issue 11): hostile strings, too many
series, files that are not files, links. The daemon must start, serve a valid
exposition, never echo the file's content into the log, and set the bad file
aside."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest
from procs import Daemon
from test_durability import counter_backend, procfs_with_boot_id, run_polls

from gpucarbon.app import RunOptions, build_daemon
from gpucarbon.clock import ManualClock
from gpucarbon.config import Config, LimitsConfig, StateConfig
from gpucarbon.exporter.http import render_text
from gpucarbon.state import CheckpointStore, LoadStatus

SECRET_FIELD = "do-not-echo-this-value-3f9a"


def checkpoint(ledger: dict, **extra) -> dict:
    return {
        "format": "gpucarbon-state",
        "version": 1,
        "saved_at": 1.0,
        "payload": {"ledger": ledger, "counters": {}, "idle_learned": {}, "boot_id": None, **extra},
    }


def workload(uuid: str, key: str, labels: list[str], mj: int) -> dict:
    return {
        "uuid": uuid,
        "key": key,
        "labels": labels,
        "energy_mj": mj,
        "grams": mj / 1e6,
        "held_s": 1.0,
        "busy_s": 0.5,
        "embodied_grams": 0.0,
        "cost": 0.0,
    }


def gpu_totals(mj: int, retired: int = 0) -> dict:
    return {
        "energy_mj": mj,
        "unattributed_mj": 0,
        "retired_mj": retired,
        "grams": 0.0,
        "unattributed_grams": 0.0,
        "retired_grams": 0.0,
        "resets": 0,
    }


def team_totals(mj: int) -> dict:
    return {"energy_mj": mj, "grams": mj / 1e6, "embodied_grams": 0.0, "cost": 0.0}


def start(tmp_path: Path, document: dict | bytes, max_series: int = 100):
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    data = document if isinstance(document, bytes) else json.dumps(document).encode()
    (state / "state.json").write_bytes(data)
    clock = ManualClock()
    backend = counter_backend(clock)
    config = Config(
        state=StateConfig(dir=str(state), interval=30.0), limits=LimitsConfig(max_workload_series=max_series)
    )
    d = build_daemon(config, RunOptions(procfs=procfs_with_boot_id(tmp_path)), backend=backend, base_clock=clock)
    return d, backend, clock, state


async def test_a_team_with_a_lone_surrogate_is_sanitised_rendered_and_saved_back_clean(tmp_path):
    # Issue 11: "evil\ud800team" broke /metrics and was saved back, surviving restarts.
    ledger = {
        "gpus": {"GPU-dur": gpu_totals(5000)},
        "workloads": [workload("GPU-dur", "k1", ["ns", "pod\ud800", "c", "Job/x\u200b", "evil\ud800team"], 5000)],
        "teams": {"evil\ud800team": team_totals(5000)},
        "dropped_series": 0,
    }
    d, backend, clock, state = start(tmp_path, checkpoint(ledger))
    await run_polls(d, backend, clock, 2)
    text = render_text(lambda: d.poller.snapshot)
    text.encode("utf-8")
    assert 'gpucarbon_team_energy_joules_total{team="evilteam"}' in text
    assert 'pod="pod"' in text and 'workload="Job/x"' in text
    await d.checkpointer.save()
    saved = (state / "state.json").read_text(encoding="utf-8")
    assert "\\ud800" not in saved and "evilteam" in saved


async def test_label_sets_that_become_equal_are_merged_into_one_series(tmp_path):
    labels_a = ["ns", "p", "c", "Job/x", "nlp"]
    labels_b = ["ns", "p", "c", "Job/x", "nlp\u200b"]  # same after sanitising
    ledger = {
        "gpus": {"GPU-dur": gpu_totals(3000)},
        "workloads": [workload("GPU-dur", "k1", labels_a, 1000), workload("GPU-dur", "k2", labels_b, 2000)],
        "teams": {"nlp": team_totals(1000), "nlp\x00": team_totals(2000)},
        "dropped_series": 0,
    }
    d, backend, clock, _ = start(tmp_path, checkpoint(ledger))
    await d.poller.poll()
    text = render_text(lambda: d.poller.snapshot)
    lines = [line for line in text.splitlines() if line.startswith("gpucarbon_workload_energy_joules_total{")]
    assert len(lines) == 1 and lines[0].endswith(" 3.0"), lines
    team = [line for line in text.splitlines() if line.startswith("gpucarbon_team_energy_joules_total{")]
    assert team == ['gpucarbon_team_energy_joules_total{team="nlp"} 3.0']


async def test_restored_series_are_capped_and_the_rest_is_retired_not_lost(tmp_path):
    n = 50
    ledger = {
        "gpus": {"GPU-dur": gpu_totals(n * 100)},
        "workloads": [workload("GPU-dur", f"k{i}", ["ns", f"p{i}", "c", f"Job/{i}", "t"], 100) for i in range(n)],
        "teams": {"t": team_totals(n * 100)},
        "dropped_series": 0,
    }
    d, _, _, _ = start(tmp_path, checkpoint(ledger), max_series=10)
    ledger_now = d.ledger
    assert len(ledger_now.workloads) == 10
    gpu = ledger_now.gpus["GPU-dur"]
    booked = sum(e.energy_mj for e in ledger_now.workloads.values())
    assert booked + gpu.retired_mj + gpu.unattributed_mj == gpu.energy_mj == n * 100


@pytest.mark.parametrize(
    "ledger",
    [
        {"gpus": {}, "workloads": [{"uuid": "GPU-dur", "labels": ["only", "two"]}], "teams": {}},
        {"gpus": {}, "workloads": "not a list", "teams": {}},
        {"gpus": {f"GPU-{i}": gpu_totals(1) for i in range(2000)}, "workloads": [], "teams": {}},
        {"gpus": {}, "workloads": [], "teams": {"t": {"energy_mj": SECRET_FIELD}}},
    ],
    ids=["short-labels", "workloads-not-a-list", "too-many-gpus", "string-energy"],
)
def test_a_payload_that_fails_validation_is_set_aside_and_not_echoed(tmp_path, ledger, caplog):
    d, _, _, state = start(tmp_path, checkpoint(ledger))
    assert d.checkpointer.restore_failures == 1
    assert not (state / "state.json").exists(), "set aside, like a corrupt file"
    assert list(state.glob("state.json.corrupt-*"))
    assert SECRET_FIELD not in caplog.text


# ------------------------------------------------------------- not a regular file


def load_with_timeout(store: CheckpointStore, seconds: float = 5.0):
    result: list = []
    thread = threading.Thread(target=lambda: result.append(store.load()), daemon=True)
    thread.start()
    thread.join(seconds)
    assert result, f"load() still blocked after {seconds}s"
    return result[0]


def test_a_fifo_at_the_checkpoint_path_does_not_hang(tmp_path):
    os.mkfifo(tmp_path / "state.json")
    result = load_with_timeout(CheckpointStore(tmp_path, clock=ManualClock()))
    assert result.status is LoadStatus.SET_ASIDE and "not a regular file" in result.reason


def test_a_symlink_to_dev_zero_is_refused_without_reading(tmp_path):
    os.symlink("/dev/zero", tmp_path / "state.json")
    start_s = time.monotonic()
    result = load_with_timeout(CheckpointStore(tmp_path, clock=ManualClock()))
    assert time.monotonic() - start_s < 1.0, "64 MiB of zeros were read"
    assert result.status is LoadStatus.SET_ASIDE and "symbolic link" in result.reason
    assert os.path.islink(result.set_aside_path), "the link itself is moved aside, not its target"


def test_a_symlinked_json_file_is_not_followed_and_its_fields_not_echoed(tmp_path):
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text(json.dumps({"format": SECRET_FIELD, "version": 1}))
    (tmp_path / "state").mkdir()
    os.symlink(elsewhere, tmp_path / "state" / "state.json")
    result = CheckpointStore(tmp_path / "state", clock=ManualClock()).load()
    assert result.status is LoadStatus.SET_ASIDE
    assert SECRET_FIELD not in (result.reason or "")
    assert elsewhere.exists(), "the target is untouched"


def test_a_foreign_format_field_is_not_echoed(tmp_path):
    (tmp_path / "state.json").write_text(json.dumps({"format": SECRET_FIELD, "version": 1}))
    result = CheckpointStore(tmp_path, clock=ManualClock()).load()
    assert result.status is LoadStatus.SET_ASIDE and SECRET_FIELD not in (result.reason or "")


@pytest.mark.e2e
def test_the_daemon_starts_with_a_fifo_at_state_json(tmp_path):
    """Issue 11: a FIFO at state.json hung start-up forever."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    os.mkfifo(state / "state.json")
    d = Daemon(tmp_path, "--simulate", "--poll.interval=200ms", f"--state.dir={state}")
    try:
        d.wait_ready(timeout=30)
        assert "not a regular file" in d.log.read_text()
        assert "gpucarbon_state_restore_failures_total 1.0" in d.metrics()
    finally:
        d.stop()
