"""One GET returning JSON, with every failure mapped to a `FetchError` reason.

Error texts are composed here from the status code and the exception's type
only: neither headers (which carry tokens) nor response bodies are echoed.

Redirects are followed here, not by aiohttp: aiohttp drops only `Authorization`
on a cross-host redirect, and a provider's token travels in its own header
(`auth-token`). A hop keeps the request's headers only to a host the caller
trusts with them (by default the first URL's host) and never from https to
http; a redirect anywhere else, without a Location, or past MAX_REDIRECTS is a
client error, counted like any other.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import aiohttp
from yarl import URL

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
# Enough for a domain move plus an http->https hop; a loop ends here.
MAX_REDIRECTS = 5
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})


async def get_json(
    session: aiohttp.ClientSession,
    url: str,
    *,
    what: str,
    timeout: aiohttp.ClientTimeout,
    params: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
    trusted_hosts: Iterable[str] = (),
) -> Any:
    """GET `url` and decode its JSON. `trusted_hosts`: hosts besides the URL's own
    that a redirect may take the request's headers (credentials) to."""
    target = URL(url)
    trusted = {target.host, *trusted_hosts}
    try:
        for _hop in range(MAX_REDIRECTS + 1):
            async with session.get(
                target, params=params, headers=headers, timeout=timeout, allow_redirects=False
            ) as response:
                if response.status in REDIRECT_STATUSES:
                    target = _redirect_target(response, target, trusted, what)
                    params = None  # the Location carries the query
                    continue
                _raise_for_status(response, what)
                body = await response.content.read(MAX_BODY_BYTES + 1)
                break
        else:
            raise FetchError(REASON_CLIENT_ERROR, f"{what}: more than {MAX_REDIRECTS} redirects", retryable=False)
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


def _redirect_target(response: aiohttp.ClientResponse, current: URL, trusted: set[str | None], what: str) -> URL:
    location = response.headers.get("Location")
    if not location:
        raise FetchError(REASON_CLIENT_ERROR, f"{what}: HTTP {response.status} without a Location", retryable=False)
    target = response.url.join(URL(location))
    if target.host not in trusted:
        raise FetchError(
            REASON_CLIENT_ERROR,
            f"{what}: HTTP {response.status} redirect to host "
            f"{target.host!r}, not trusted with the credentials (set base_url)",
            retryable=False,
        )
    if current.scheme == "https" and target.scheme != "https":
        raise FetchError(
            REASON_CLIENT_ERROR,
            f"{what}: HTTP {response.status} redirect from https to plain http refused",
            retryable=False,
        )
    return target


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
