"""Where a receipt goes besides the file: a Kubernetes Event, a log line, a webhook.

Each `send` raises SinkError (or any exception) on failure; the dispatcher
counts it. None of them runs on the poll loop.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gpucarbon.receipts.builder import note
from gpucarbon.receipts.model import Owner, WebhookSettings

log = logging.getLogger(__name__)
receipt_log = logging.getLogger("gpucarbon.receipt")  # one line per receipt, for log pipelines

EVENT_REASON = "GPUEnergyReceipt"
EVENT_ACTION = "Finished"
REPORTING_CONTROLLER = "gpu-carbon-exporter"
NOTE_MAX = 1024  # events.k8s.io/v1 rejects longer notes
LOG_FIELDS = (
    "id",
    "kind",
    "namespace",
    "pod",
    "workload",
    "team",
    "job_id",
    "outcome",
    "reason",
    "exit_code",
    "started_at",
    "finished_at",
    "energy_joules",
    "emissions_grams",
    "gpu_count",
    "repeat_of",
)


class SinkError(Exception):
    """One sink could not take a receipt; str() says why in one line."""


class LogSink:
    name = "log"

    async def send(self, receipt: dict) -> None:
        fields = {k: receipt.get(k) for k in LOG_FIELDS if receipt.get(k) is not None}
        receipt_log.info("receipt", extra={"fields": fields, "receipt": receipt})


class EventSink:
    """events.k8s.io/v1 Events regarding the pod, and its top-level owner when
    known, in the pod's namespace. `create` is the lightkube client's."""

    name = "event"

    def __init__(self, client: Any, node: str, owner_of: Callable[[dict], Owner | None] = lambda _r: None) -> None:
        self._client = client
        self._node = node
        self._owner_of = owner_of

    async def send(self, receipt: dict) -> None:
        if receipt.get("kind") != "pod" or not receipt.get("namespace") or not receipt.get("pod"):
            return
        from lightkube.resources.events_v1 import Event

        from gpucarbon.identity.kubernetes import status_code

        regarding = {"apiVersion": "v1", "kind": "Pod", "namespace": receipt["namespace"], "name": receipt["pod"]}
        if receipt.get("pod_uid"):
            regarding["uid"] = receipt["pod_uid"]
        targets = [regarding]
        owner = self._owner_of(receipt)
        if owner is not None:
            ref = {
                "apiVersion": owner.api_version,
                "kind": owner.kind,
                "namespace": receipt["namespace"],
                "name": owner.name,
            }
            if owner.uid:
                ref["uid"] = owner.uid
            targets.append(ref)
        for target in targets:
            event = Event.from_dict(self.event_body(receipt, target))
            try:
                await self._client.create(event, namespace=receipt["namespace"])
            except Exception as err:  # noqa: BLE001 - every API failure is this sink's failure
                if status_code(err) == 409:
                    continue  # already created (a resend after a restart): fine
                raise SinkError(
                    f"event for {target['kind']} {receipt['namespace']}/{target['name']}: {type(err).__name__}: {err}"
                ) from None

    def event_body(self, receipt: dict, regarding: dict) -> dict:
        now = datetime.now(UTC)
        # The API server parses eventTime as RFC 3339 with exactly six fraction
        # digits; the client drops a zero fraction, so never send one.
        now = now.replace(microsecond=now.microsecond or 1)
        digest = hashlib.sha256(f"{receipt['id']}/{regarding['kind']}".encode()).hexdigest()[:10]
        return {
            "apiVersion": "events.k8s.io/v1",
            "kind": "Event",
            "metadata": {"name": f"{regarding['name'][:200]}.gpu-receipt.{digest}", "namespace": receipt["namespace"]},
            "eventTime": now.isoformat().replace("+00:00", "Z"),
            "type": "Normal",
            "reason": EVENT_REASON,
            "action": EVENT_ACTION,
            "reportingController": REPORTING_CONTROLLER,
            "reportingInstance": self._node,
            "regarding": regarding,
            "note": note(receipt)[:NOTE_MAX],
        }


class WebhookSink:
    """POSTs one receipt as JSON; 2xx is delivery. The token (bearer) is read at
    each send from its file or variable, so a rotated secret is picked up."""

    name = "webhook"

    def __init__(self, settings: WebhookSettings, session_factory: Callable[[], Any] | None = None) -> None:
        self._settings = settings
        self._session_factory = session_factory
        self._session: Any = None

    def _token(self) -> str | None:
        if self._settings.token_file:
            try:
                return Path(self._settings.token_file).read_text(encoding="utf-8").strip() or None
            except OSError as err:
                raise SinkError(
                    f"receipts.webhook.token_file {self._settings.token_file}: {err.strerror or err}"
                ) from None
        if self._settings.token_env:
            return os.environ.get(self._settings.token_env) or None
        return None

    async def send(self, receipt: dict) -> None:
        import aiohttp

        if self._session is None:
            self._session = (
                self._session_factory()
                if self._session_factory
                else aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self._settings.timeout_s))
            )
        headers = {"Content-Type": "application/json", "Idempotency-Key": receipt["id"]}
        token = self._token()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        try:
            async with self._session.post(self._settings.url, data=json.dumps(receipt), headers=headers) as answer:
                if not 200 <= answer.status < 300:
                    raise SinkError(f"webhook answered HTTP {answer.status}")
        except (TimeoutError, aiohttp.ClientError, OSError) as err:
            raise SinkError(f"webhook: {type(err).__name__}: {err}") from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
