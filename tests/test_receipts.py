"""The receipt machinery on its own: building, deciding a run ended, waste and
repeats, the file and ring, the dispatcher's failure handling."""

from __future__ import annotations

import asyncio
import errno
import json
from dataclasses import dataclass, replace

import pytest
from procs import eventually

from gpucarbon.receipts.builder import ReceiptContext, note
from gpucarbon.receipts.dispatcher import ReceiptDispatcher
from gpucarbon.receipts.model import Fingerprint, ReceiptSettings, RunFacts, parse_rfc3339, receipt_id
from gpucarbon.receipts.outbox import Outbox
from gpucarbon.receipts.store import FILE_NAME, ReceiptFile, ReceiptRing
from gpucarbon.receipts.tracker import STILL_RUNNING, RunTracker, run_of

CTX = ReceiptContext(
    node="node-a",
    pue=1.2,
    zone="DE",
    source="electricitymaps",
    signal="average",
    embodied_enabled=False,
    currency="USD",
    offset_currency="USD",
    offset_price_per_tonne=10.0,
)


@dataclass(frozen=True)
class Row:
    key: str
    uuid: str
    energy_j: float
    holding: bool
    namespace: str = "research"
    pod: str = "train-0"
    container: str = "trainer"
    workload: str = "Job/train"
    team: str = "nlp"
    idle_j: float = 0.0
    grams: float = 0.0
    held_s: float = 100.0
    busy_s: float = 50.0
    embodied_grams: float = 0.0
    cost: float = 0.0


class Status:
    def __init__(self) -> None:
        self.answers: dict[str, object] = {}

    def facts(self, run):
        return self.answers.get(run.run_id)


def tracker(status=None, **settings):
    return RunTracker(ReceiptSettings(**settings), status or Status(), node="node-a", unknown_after_s=300.0)


def rows(holding: bool, energy=(1000.123, 2000.456)):
    return [
        Row("pod/uid-1/trainer", "GPU-a", energy[0], holding, grams=energy[0] / 3600, idle_j=100.0),
        Row("pod/uid-1/trainer", "GPU-b", energy[1], holding, grams=energy[1] / 3600, idle_j=100.0),
    ]


def test_receipt_is_written_once_when_the_pod_ended_and_sums_the_series_exactly():
    status = Status()
    t = tracker(status)
    models = {"GPU-a": "H100", "GPU-b": "H100"}
    assert t.observe(rows(True), models, CTX, now=1000.0) == []
    assert t.observe(rows(False), models, CTX, now=1001.0) == []  # not holding, scheduler silent
    status.answers["uid-1"] = STILL_RUNNING
    assert t.observe(rows(False), models, CTX, now=2000.0) == []  # the scheduler says it runs
    status.answers["uid-1"] = RunFacts(outcome="failed", reason="OOMKilled", exit_code=137, pod_uid="uid-1")
    [receipt] = t.observe(rows(False), models, CTX, now=1002.0)
    assert round(receipt["energy_joules"] * 1000) == 1000123 + 2000456
    assert receipt["idle_energy_joules"] == 200.0
    assert receipt["active_energy_joules"] == pytest.approx(3000.579 - 200.0)
    assert receipt["outcome"] == "failed" and receipt["exit_code"] == 137 and receipt["reason"] == "OOMKilled"
    assert receipt["id"] == receipt_id("node-a", "pod", "uid-1")
    assert [g["uuid"] for g in receipt["gpus"]] == ["GPU-a", "GPU-b"]
    assert receipt["gpu_count"] == 2 and receipt["held_seconds"] == 200.0
    assert t.observe(rows(False), models, CTX, now=1003.0) == []  # never twice
    assert [(w.team, w.outcome, w.runs) for w in t.waste()] == [("nlp", "failed", 1)]


def test_unknown_outcome_after_the_grace_when_nobody_can_say():
    t = tracker()
    t.observe(rows(True), {}, CTX, now=0.0)
    assert t.observe(rows(False), {}, CTX, now=10.0) == []
    assert t.observe(rows(False), {}, CTX, now=309.0) == []
    [receipt] = t.observe(rows(False), {}, CTX, now=311.0)
    assert receipt["outcome"] == "unknown"


def test_repeat_of_an_earlier_success_within_the_window():
    status = Status()
    t = tracker(status, repeat_window_s=3600.0)
    fp = Fingerprint("f" * 64, ("image digest",))
    first = [replace(r, key="pod/uid-1/trainer") for r in rows(False)]
    second = [replace(r, key="pod/uid-2/trainer", team="nlp") for r in rows(False)]
    third = [replace(r, key="pod/uid-3/trainer") for r in rows(False)]
    status.answers = {
        "uid-1": RunFacts("succeeded", fingerprint=fp),
        "uid-2": RunFacts("failed", fingerprint=fp),
        "uid-3": RunFacts("succeeded", fingerprint=fp),
    }
    [a] = t.observe(first, {}, CTX, now=0.0)
    [b] = t.observe(second, {}, CTX, now=100.0)
    assert a["repeat_of"] is None and b["repeat_of"] == a["id"]
    assert t.repeated() == (("nlp", pytest.approx(3000.579)),)
    [c] = t.observe(third, {}, CTX, now=100000.0)  # the first success left the window
    assert c["repeat_of"] is None


def test_tracker_state_survives_a_checkpoint_round_trip():
    status = Status()
    t = tracker(status)
    t.observe(rows(True), {}, CTX, now=0.0)
    status.answers["uid-1"] = RunFacts("succeeded", fingerprint=Fingerprint("a" * 64, ()))
    t.observe(rows(False), {}, CTX, now=5.0)
    saved = json.loads(json.dumps(t.to_dict()))
    again = tracker(status)
    again.restore(saved)
    assert again.observe(rows(False), {}, CTX, now=6.0) == []  # already receipted
    assert again.waste() == t.waste()


def test_a_slurm_receipt_names_its_job_even_when_scontrol_could_not_say():
    t = tracker()
    job = [Row("slurm/4242", "GPU-a", 10.0, False, namespace="", pod="", container="", workload="slurm/4242")]
    t.observe(job, {}, CTX, now=0.0)
    [receipt] = t.observe(job, {}, CTX, now=400.0)
    assert (receipt["kind"], receipt["job_id"], receipt["outcome"]) == ("slurm", "4242", "unknown")


def test_runs_by_key():
    assert run_of("pod/uid-1/c", "p", False) == ("pod", "uid-1")
    assert run_of("slurm/42", "", False) == ("slurm", "42")
    assert run_of("process/alice/python", "", False) is None
    assert run_of("process/alice/python", "", True) == ("process", "process/alice/python")
    assert run_of("unresolved", "", True) is None and run_of("overflow", "", True) is None


def test_note_reads_like_the_issue():
    status = Status()
    t = tracker(status)
    status.answers["uid-1"] = RunFacts("succeeded")
    [receipt] = t.observe(rows(False, energy=(22_320_000.0, 22_320_000.0)), {}, CTX, now=11520.0)
    line = note(receipt)
    assert line.startswith("Used 12.4 kWh on 2 GPUs over ")
    assert "(busy 50%)" in line and "(electricitymaps DE, PUE 1.2)" in line
    assert "offset at 10 USD/t" in line and "outcome succeeded" in line


# --- file and ring ------------------------------------------------------------


def receipt(n: int, finished: str = "2026-11-30T10:00:00Z") -> dict:
    return {"id": f"id-{n}", "finished_at": finished, "energy_joules": float(n)}


def test_file_appends_rotates_and_reloads(tmp_path):
    store = ReceiptFile(tmp_path, max_bytes=200, keep=2)
    for n in range(20):
        store.append([receipt(n)])
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [FILE_NAME, FILE_NAME + ".1", FILE_NAME + ".2"]
    back = [r["id"] for r in store.read_all()]
    assert back == sorted(back, key=lambda i: int(i.split("-")[1])) and back[-1] == "id-19"
    assert all(p.stat().st_size <= 200 for p in tmp_path.iterdir())


def test_a_line_cut_short_is_skipped(tmp_path):
    (tmp_path / FILE_NAME).write_text(json.dumps(receipt(1)) + "\n" + '{"id": "id-2", "fini')
    assert [r["id"] for r in ReceiptFile(tmp_path, max_bytes=1 << 20, keep=1).read_all()] == ["id-1"]


def test_ring_since_and_limit():
    ring = ReceiptRing(3)
    for n, t in enumerate(["10:00", "11:00", "12:00", "13:00"]):
        ring.add(receipt(n, f"2026-11-30T{t}:00Z"))
    ring.add(receipt(3, "2026-11-30T13:00:00Z"))  # the same id again: kept once
    assert [r["id"] for r in ring.list()] == ["id-1", "id-2", "id-3"]
    assert [r["id"] for r in ring.list(since=parse_rfc3339("2026-11-30T12:00:00Z"))] == ["id-2", "id-3"]
    assert [r["id"] for r in ring.list(limit=1)] == ["id-3"]
    assert [r["id"] for r in ring.list(since=0.0, limit=1)] == ["id-1"]


# --- dispatcher ---------------------------------------------------------------


class Recorder:
    def __init__(self, name: str, fail: int = 0) -> None:
        self.name = name
        self.fail = fail
        self.got: list[str] = []

    async def send(self, r: dict) -> None:
        if self.fail:
            self.fail -= 1
            raise RuntimeError("down")
        self.got.append(r["id"])


@pytest.mark.asyncio
async def test_full_disk_is_counted_logged_and_retried_without_losing_the_record(tmp_path, caplog):
    failing = {"on": True}

    def write(fd, data):
        if failing["on"]:
            raise OSError(errno.ENOSPC, "No space left on device")
        import os

        os.write(fd, data)

    log_sink = Recorder("log")
    dispatcher = ReceiptDispatcher(
        file=ReceiptFile(tmp_path, max_bytes=1 << 20, keep=1, write=write),
        ring=ReceiptRing(10),
        sinks=(log_sink,),
        file_retry_s=0.05,
    )
    await dispatcher.start()
    dispatcher.submit([receipt(1)])

    def counts() -> dict:
        return {(sink, result): n for sink, result, n in dispatcher.counts()}

    await eventually(lambda: counts().get(("file", "error"), 0) >= 1 and log_sink.got)  # failed write attempts
    assert log_sink.got == ["id-1"]  # the other sinks are still told
    assert "ENOSPC" in caplog.text
    failing["on"] = False
    await eventually(lambda: counts().get(("file", "ok")) == 1)  # the retry timer writes it
    await dispatcher.close()
    assert [r["id"] for r in ReceiptFile(tmp_path, max_bytes=1 << 20, keep=1).read_all()] == ["id-1"]
    assert ("file", "ok", 1) in dispatcher.counts()
    assert (tmp_path / FILE_NAME).read_text().count("\n") == 1  # no half line from the failed write


@pytest.mark.asyncio
async def test_unwritable_directory_is_counted_not_fatal(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    dispatcher = ReceiptDispatcher(
        file=ReceiptFile(blocker / "state", max_bytes=1000, keep=1), ring=ReceiptRing(10), file_retry_s=10.0
    )
    await dispatcher.deliver([receipt(1)])
    assert ("file", "error", 1) in dispatcher.counts()
    assert dispatcher.written("id-1")  # the endpoint still has it


@pytest.mark.asyncio
async def test_webhook_down_then_up_gets_each_receipt_once_across_a_restart(tmp_path):
    hook = Recorder("webhook", fail=3)
    sleeps: list[float] = []

    async def sleep(s: float) -> None:  # records the backoff, waits a little (no hot loop)
        sleeps.append(s)
        await asyncio.sleep(0.005)

    first = ReceiptDispatcher(
        file=None,
        ring=ReceiptRing(10),
        outbox=Outbox(10, tmp_path),
        webhook=hook,
        sleep=sleep,
        retry_delay=lambda n: 2.0**n,
    )
    hook.fail = 10**6  # down for the whole first life
    await first.start()
    first.submit([receipt(1), receipt(2)])
    await eventually(lambda: len(sleeps) >= 3)
    await first.close()
    assert hook.got == [] and sleeps[:3] == [1.0, 2.0, 4.0]
    hook.fail = 2  # back after two more failures
    second = ReceiptDispatcher(file=None, ring=ReceiptRing(10), outbox=Outbox(10, tmp_path), webhook=hook, sleep=sleep)
    second.load()
    await second.start()
    second.submit([receipt(3)])
    await eventually(lambda: len(hook.got) == 3)
    await second.close()
    assert hook.got == ["id-1", "id-2", "id-3"]
    assert json.loads((tmp_path / "receipts-outbox.json").read_text()) == []


def test_outbox_is_bounded():
    box = Outbox(2)
    for n in range(3):
        box.put(receipt(n))
    assert len(box) == 2 and box.dropped == 1 and box.peek()["id"] == "id-1"


# --- the endpoint -------------------------------------------------------------


@pytest.mark.asyncio
async def test_endpoint_since_limit_and_bad_queries():
    from served import served

    from gpucarbon.exporter.http import json_handler
    from gpucarbon.exporter.server import HttpServer
    from gpucarbon.receipts.api import PATH, receipts_query

    ring = ReceiptRing(10)
    for n, t in enumerate(["10:00", "11:00", "12:00"]):
        ring.add(receipt(n, f"2026-11-30T{t}:00Z"))
    server = HttpServer({PATH: json_handler(receipts_query(ring))})
    async with served(server) as client:
        body = await (await client.get(PATH)).json()
        assert [r["id"] for r in body["receipts"]] == ["id-0", "id-1", "id-2"]
        body = await (await client.get(PATH, params={"since": "2026-11-30T11:00:00+00:00", "limit": "1"})).json()
        assert [r["id"] for r in body["receipts"]] == ["id-1"]
        for bad in ({"since": "yesterday"}, {"limit": "0"}, {"limit": "-1"}, {"since": "2026-11-30T11:00:00"}):
            answer = await client.get(PATH, params=bad)
            assert answer.status == 400 and "error" in await answer.json()


@pytest.mark.asyncio
async def test_endpoint_is_behind_the_same_basic_auth_as_metrics(tmp_path):
    import base64

    import bcrypt
    from served import served

    from gpucarbon.cli import PROBE_PATHS
    from gpucarbon.exporter.http import build_server, json_handler
    from gpucarbon.exporter.webconfig import auth_middleware, load_web_config
    from gpucarbon.receipts.api import PATH, receipts_query

    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()
    (tmp_path / "web.yml").write_text(f"basic_auth_users:\n  prometheus: '{hashed}'\n")
    config = load_web_config(str(tmp_path / "web.yml"))
    ring = ReceiptRing(10)
    ring.add(receipt(1))
    server = build_server(
        latest=lambda: None,  # type: ignore[arg-type,return-value]
        healthy=lambda: True,
        middlewares=(auth_middleware(config, exempt_paths=PROBE_PATHS),),
        routes=((PATH, json_handler(receipts_query(ring))),),
    )

    # The header by hand, as the other tests do: aiohttp's BasicAuth is
    # deprecated in 3.14 and encode_basic_auth() is missing before it.
    def basic(password: str) -> dict[str, str]:
        return {"Authorization": "Basic " + base64.b64encode(f"prometheus:{password}".encode()).decode()}

    async with served(server) as client:
        assert (await client.get(PATH)).status == 401
        assert (await client.get(PATH, headers=basic("wrong"))).status == 401
        answer = await client.get(PATH, headers=basic("s3cret"))
        assert answer.status == 200 and [r["id"] for r in (await answer.json())["receipts"]] == ["id-1"]
