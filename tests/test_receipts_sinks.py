"""Receipt sinks against real protocols: the Event reaches the (fake) API
server as events.k8s.io/v1; the webhook is a real HTTP receiver on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from aiohttp import web
from fakes.apiserver import FakeApiServer, Fault

from gpucarbon.identity.kubernetes import make_client
from gpucarbon.receipts.dispatcher import ReceiptDispatcher
from gpucarbon.receipts.model import Owner, WebhookSettings
from gpucarbon.receipts.outbox import Outbox
from gpucarbon.receipts.sinks import EventSink, LogSink, SinkError, WebhookSink
from gpucarbon.receipts.store import ReceiptRing

RECEIPT = {
    "id": "5d0c7d59-0000-5000-8000-000000000001",
    "kind": "pod",
    "namespace": "research",
    "pod": "train-0",
    "pod_uid": "uid-1",
    "workload": "PyTorchJob/llama-ft",
    "team": "nlp",
    "outcome": "failed",
    "energy_joules": 44_640_000.0,
    "gpu_count": 8,
    "duration": 11520.0,
    "held_seconds": 92160.0,
    "busy_seconds": 65433.6,
    "emissions_grams": 4900.0,
    "pue": 1.2,
    "intensity": {"zone": "DE", "source": "electricitymaps", "signal": "average", "grams_per_kwh": 395.0},
    "cost": {"amount": 2.48, "currency": "USD"},
    "offset": {"price_per_tonne": 10.0, "currency": "USD", "cost": 0.049},
    "repeat_of": None,
}


@pytest.fixture
async def apiserver():
    server = FakeApiServer()
    await server.start()
    yield server
    await server.stop()


@pytest.mark.asyncio
async def test_event_regarding_the_pod_and_its_owner_reaches_the_api_server(apiserver):
    client = make_client(server=apiserver.url)
    owner = Owner("kubeflow.org/v1", "PyTorchJob", "llama-ft", "uid-ptj")
    sink = EventSink(client, "node-a", owner_of=lambda r: owner)
    try:
        await sink.send(RECEIPT)
        await sink.send(RECEIPT)  # a resend after a restart: 409, not a failure
    finally:
        await client.close()
    assert len(apiserver.events) == 2
    pod_event, owner_event = apiserver.events
    assert pod_event["regarding"] == {
        "apiVersion": "v1",
        "kind": "Pod",
        "namespace": "research",
        "name": "train-0",
        "uid": "uid-1",
    }
    assert owner_event["regarding"]["kind"] == "PyTorchJob" and owner_event["regarding"]["uid"] == "uid-ptj"
    for event in apiserver.events:
        assert event["type"] == "Normal" and event["reason"] == "GPUEnergyReceipt"
        assert event["reportingController"] == "gpu-carbon-exporter" and event["reportingInstance"] == "node-a"
        assert event["note"] == (
            "Used 12.4 kWh on 8 GPUs over 3h12m (busy 71%): 4.9 kg CO2e at 395 g/kWh "
            "(electricitymaps DE, PUE 1.2), cost 2.48 USD, offset at 10 USD/t 0.05 USD; "
            "outcome failed"
        )


@pytest.mark.asyncio
async def test_event_failure_is_a_sink_error(apiserver):
    apiserver.faults[("post", "events")] = [Fault("status", status=500)]
    client = make_client(server=apiserver.url)
    try:
        with pytest.raises(SinkError, match="research/train-0"):
            await EventSink(client, "node-a").send(RECEIPT)
    finally:
        await client.close()


@pytest.mark.asyncio
async def test_non_pod_runs_get_no_event(apiserver):
    client = make_client(server=apiserver.url)
    try:
        await EventSink(client, "node-a").send({**RECEIPT, "kind": "slurm", "namespace": None, "pod": None})
    finally:
        await client.close()
    assert apiserver.events == []


@pytest.mark.asyncio
async def test_log_line_carries_the_receipt(caplog):
    caplog.set_level(logging.INFO, logger="gpucarbon.receipt")
    await LogSink().send(RECEIPT)
    [record] = caplog.records
    assert record.getMessage() == "receipt" and record.fields["id"] == RECEIPT["id"]
    assert record.fields["energy_joules"] == 44_640_000.0


class Receiver:
    """A webhook receiver that answers 503 while `down`, records ids and tokens."""

    def __init__(self) -> None:
        self.down = True
        self.ids: list[str] = []
        self.tokens: list[str | None] = []
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/hook"  # type: ignore[union-attr]

    async def _hook(self, request: web.Request) -> web.Response:
        self.tokens.append(request.headers.get("Authorization"))
        if self.down:
            return web.Response(status=503)
        self.ids.append(json.loads(await request.read())["id"])
        return web.Response(status=204)

    async def stop(self) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


@pytest.mark.asyncio
async def test_webhook_down_then_back_gets_each_receipt_once(tmp_path, monkeypatch):
    receiver = Receiver()
    await receiver.start()
    monkeypatch.setenv("HOOK_TOKEN", "s3cret")
    settings = WebhookSettings(url=receiver.url, token_env="HOOK_TOKEN", timeout_s=2.0)
    sink = WebhookSink(settings)
    dispatcher = ReceiptDispatcher(
        file=None, ring=ReceiptRing(10), outbox=Outbox(100, tmp_path), webhook=sink, retry_delay=lambda n: 0.02
    )
    await dispatcher.start()
    dispatcher.submit([{**RECEIPT, "id": f"r{n}"} for n in range(5)])
    await asyncio.sleep(0.2)
    assert receiver.ids == [] and len(receiver.tokens) >= 2  # retried while down
    receiver.down = False
    for _ in range(200):
        if len(receiver.ids) == 5:
            break
        await asyncio.sleep(0.01)
    await dispatcher.close()
    await receiver.stop()
    assert receiver.ids == [f"r{n}" for n in range(5)]
    assert set(receiver.tokens) == {"Bearer s3cret"}
    counts = {(s, r): n for s, r, n in dispatcher.counts()}
    assert counts[("webhook", "ok")] == 5 and counts[("webhook", "error")] >= 2


@pytest.mark.parametrize("fmt", ["logfmt", "json"])
def test_receipt_log_line_is_structured_in_both_log_formats(fmt):
    from gpucarbon.cli import _JsonFormatter, _LogfmtFormatter

    record = logging.LogRecord("gpucarbon.receipt", logging.INFO, __file__, 1, "receipt", None, None)
    record.fields = {"id": RECEIPT["id"], "pod": "train 0", "reason": 'say "x"', "energy_joules": 1.5}
    record.receipt = RECEIPT
    line = (_JsonFormatter() if fmt == "json" else _LogfmtFormatter()).format(record)
    assert "\n" not in line
    if fmt == "json":
        assert json.loads(line)["receipt"] == RECEIPT
    else:
        assert f"id={RECEIPT['id']}" in line and 'pod="train 0"' in line and 'reason="say \\"x\\""' in line
        assert "energy_joules=1.5" in line
