"""A fake Prometheus HTTP API in a thread (the report's client is synchronous).

For what a real Prometheus cannot be made to do on demand: a bearer-token
gateway in front of it, an HTTP 5xx, a non-JSON answer, a store that has the
daemon's series and rules but no energy. Answer shapes follow the API docs
(https://prometheus.io/docs/prometheus/latest/querying/api/#format-overview):
{"status": "success", "data": ...} or
{"status": "error", "errorType": "bad_data", "error": "..."} with HTTP 400/422/503.
"""

from __future__ import annotations

import json
import threading
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Seen:
    path: str
    form: dict[str, str]
    headers: dict[str, str]


Answer = Callable[[str, dict[str, str]], tuple[int, Any]]  # (endpoint, form) -> (HTTP status, body)


def success(data: Any) -> tuple[int, Any]:
    return 200, {"status": "success", "data": data}


def vector(*samples: tuple[dict[str, str], float]) -> dict[str, Any]:
    return {"resultType": "vector", "result": [{"metric": m, "value": [0, str(v)]} for m, v in samples]}


def matrix(*series: tuple[dict[str, str], list[tuple[float, float]]]) -> dict[str, Any]:
    return {
        "resultType": "matrix",
        "result": [{"metric": m, "values": [[t, str(v)] for t, v in values]} for m, values in series],
    }


class FakePrometheus:
    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.seen: list[Seen] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                length = int(self.headers.get("Content-Length", 0))
                form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
                fake.seen.append(Seen(self.path, form, dict(self.headers)))
                status, body = fake.answer(self.path.removeprefix("/api/v1/"), form)
                raw = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *args: object) -> None:
                return None

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FakePrometheus:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
