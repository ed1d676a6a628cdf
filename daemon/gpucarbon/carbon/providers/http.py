"""One GET returning JSON, with every failure mapped to a `FetchError` reason.

Error texts are composed here from the status code and the exception's type
only: neither headers (which carry tokens) nor response bodies are echoed.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import aiohttp

from gpucarbon.carbon.refresh import (
    REASON_AUTH,
    REASON_CLIENT_ERROR,
    REASON_CONNECTION,
    REASON_MALFORMED,
    REASON_RATE_LIMITED,
    REASON_SERVER_ERROR,
    REASON_TIMEOUT,
    FetchError,
)

# A latest-value response is a few hundred bytes; refuse to buffer a runaway body.
MAX_BODY_BYTES = 1 << 20


async def get_json(
    session: aiohttp.ClientSession,
    url: str,
    *,
    what: str,
    timeout: aiohttp.ClientTimeout,
    params: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
) -> Any:
    try:
        async with session.get(url, params=params, headers=headers, timeout=timeout, allow_redirects=False) as response:
            _raise_for_status(response, what)
            body = await response.content.read(MAX_BODY_BYTES + 1)
    except FetchError:
        raise
    except TimeoutError:
        raise FetchError(REASON_TIMEOUT, f"{what}: no answer within {timeout.total:g} s") from None
    except aiohttp.ClientError as error:
        raise FetchError(REASON_CONNECTION, f"{what}: {type(error).__name__}") from None
    if len(body) > MAX_BODY_BYTES:
        raise FetchError(REASON_MALFORMED, f"{what}: response larger than {MAX_BODY_BYTES} bytes", retryable=False)
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise FetchError(REASON_MALFORMED, f"{what}: response is not JSON", retryable=False) from None


def _raise_for_status(response: aiohttp.ClientResponse, what: str) -> None:
    status = response.status
    if status < 300:
        return
    if status in (401, 403):
        raise FetchError(REASON_AUTH, f"{what}: HTTP {status} (check the credentials)", retryable=False)
    if status == 429:
        raise FetchError(
            REASON_RATE_LIMITED, f"{what}: HTTP 429 (rate limited)", retry_after=response.headers.get("Retry-After")
        )
    if status >= 500:
        raise FetchError(REASON_SERVER_ERROR, f"{what}: HTTP {status}")
    raise FetchError(REASON_CLIENT_ERROR, f"{what}: HTTP {status}", retryable=False)


def basic_auth_header(user: str, password: str) -> str:
    """RFC 7617 Basic credentials (built here: aiohttp's BasicAuth is deprecated in 3.14)."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


def require(condition: bool, what: str, problem: str) -> None:
    """Raise a malformed-response error unless `condition` holds."""
    if not condition:
        raise FetchError(REASON_MALFORMED, f"{what}: {problem}", retryable=False)


def parse_timestamp(value: Any) -> float | None:
    """Unix seconds from an ISO 8601 string such as 2024-05-01T10:00:00.000Z."""
    if not isinstance(value, str) or not value:
        return None
    text = value.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        return None
    return parsed.timestamp()
