"""Open a page in a real headless Chromium (Debian's `chromium`) and report what
a person would see: console errors, network requests, the drawn size of the
charts, and a full-page screenshot. Talks the DevTools protocol over a
websocket (aiohttp), so nothing but the browser itself is needed."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-port=0",
    "--window-size=1400,1000",
)
LOCAL_SCHEMES = ("file:", "data:", "about:", "blob:")


@dataclass
class PageSeen:
    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    charts: list[dict] = field(default_factory=list)


def chromium_binary() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    raise AssertionError("the chromium binary is required (apt-get install chromium); scripts/test installs it")


def open_page(page: Path, screenshot: Path, chart_selector: str, timeout: float = 60.0) -> PageSeen:
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        proc = subprocess.Popen(
            [chromium_binary(), *FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            port = _devtools_port(Path(profile), proc, timeout)
            return asyncio.run(asyncio.wait_for(_visit(port, page, screenshot, chart_selector), timeout))
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _devtools_port(profile: Path, proc: subprocess.Popen, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    marker = profile / "DevToolsActivePort"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"chromium exited {proc.returncode}: {proc.stderr.read().decode()[-2000:]}")
        if marker.exists() and marker.read_text().strip():
            return int(marker.read_text().splitlines()[0])
        time.sleep(0.1)
    raise AssertionError("chromium did not open its DevTools port")


class _Session:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._next = 0
        self._pending: dict[int, asyncio.Future] = {}
        self.events: list[dict] = []
        self._waiters: list[tuple[str, asyncio.Future]] = []
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        async for message in self._ws:
            data = json.loads(message.data)
            if "id" in data and data["id"] in self._pending:
                self._pending.pop(data["id"]).set_result(data)
            elif "method" in data:
                self.events.append(data)
                for method, future in list(self._waiters):
                    if method == data["method"] and not future.done():
                        future.set_result(data)

    async def call(self, method: str, **params) -> dict:
        self._next += 1
        future = asyncio.get_running_loop().create_future()
        self._pending[self._next] = future
        await self._ws.send_str(json.dumps({"id": self._next, "method": method, "params": params}))
        answer = await future
        if "error" in answer:
            raise AssertionError(f"{method}: {answer['error']}")
        return answer.get("result", {})

    def waiter(self, method: str) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        self._waiters.append((method, future))
        return future

    def close(self) -> None:
        self._reader.cancel()


_CHARTS_JS = """
(() => [...document.querySelectorAll(%s)].map(el => {
  const r = el.getBoundingClientRect();
  return {id: el.id, width: r.width, height: r.height,
          svgs: el.querySelectorAll('svg.main-svg').length,
          bars: el.querySelectorAll('g.point path').length};
}))()
"""


async def _visit(port: int, page: Path, screenshot: Path, selector: str) -> PageSeen:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port}/json/list") as resp:
            targets = await resp.json()
        target = next(t for t in targets if t["type"] == "page")
        async with http.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as ws:
            session = _Session(ws)
            try:
                for domain in ("Runtime", "Log", "Network", "Page"):
                    await session.call(f"{domain}.enable")
                loaded = session.waiter("Page.loadEventFired")
                await session.call("Page.navigate", url=page.resolve().as_uri())
                await loaded
                charts = await _charts(session, selector)
                metrics = await session.call("Page.getLayoutMetrics")
                height = int(metrics["cssContentSize"]["height"])
                await session.call(
                    "Emulation.setDeviceMetricsOverride", width=1400, height=height, deviceScaleFactor=1, mobile=False
                )
                await asyncio.sleep(0.5)  # plotly's responsive layout reacts to the resize
                shot = await session.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
                screenshot.write_bytes(base64.b64decode(shot["data"]))
                return PageSeen(errors=_errors(session.events), requests=_requests(session.events), charts=charts)
            finally:
                session.close()


async def _charts(session: _Session, selector: str) -> list[dict]:
    """The charts once drawn (plotly draws after load), or as they are after 10 s."""
    charts: list[dict] = []
    for _ in range(50):
        result = await session.call(
            "Runtime.evaluate", expression=_CHARTS_JS % json.dumps(selector), returnByValue=True
        )
        charts = result["result"].get("value", [])
        if charts and all(c["svgs"] > 0 for c in charts):
            break
        await asyncio.sleep(0.2)
    return charts


def _errors(events: list[dict]) -> list[str]:
    errors = []
    for e in events:
        p = e.get("params", {})
        if e["method"] == "Runtime.exceptionThrown":
            errors.append(
                p["exceptionDetails"].get("text", "exception")
                + " "
                + str(p["exceptionDetails"].get("exception", {}).get("description", ""))
            )
        elif e["method"] == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            errors.append(" ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", [])))
        elif e["method"] == "Log.entryAdded" and p["entry"].get("level") == "error":
            errors.append(p["entry"].get("text", ""))
    return errors


def _requests(events: list[dict]) -> list[str]:
    return [
        e["params"]["request"]["url"]
        for e in events
        if e["method"] == "Network.requestWillBeSent" and not e["params"]["request"]["url"].startswith(LOCAL_SCHEMES)
    ]
