"""The listening socket and what it lets in, before any handler or credential
check runs.

The daemon listens on every GPU node, so any pod that can reach the node can
connect without credentials. Everything a connection can make the daemon hold
is bounded here, because basic auth only runs once a request's headers are
complete:

- connections: at most `max_per_address` from one client address (more are
  closed at accept) and `max_connections` in all (at the cap, the oldest
  connection still waiting for a request is closed to make room);
- request heads: at most `max_head_bytes` received per request (a Prometheus
  scrape's head is ~300 bytes), at most `max_headers` header lines of at most
  `max_field_bytes` each; larger heads are answered 431 and the connection
  closed;
- time: a request's head must be complete within `request_timeout_s` of the
  connection opening or the previous response; an idle keep-alive connection
  is closed after the same time. A TLS handshake gets the same bound.

The server's own refusals (400 for a malformed head, 431 for an over-long
line, too many header lines or too large a head) get the configured security
headers and a fixed body: the offending header value is not echoed. Every
response says `Server: gpu-carbon-exporter`, without versions. The connection itself is exporter/server.py's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

SERVER_HEADER = "gpu-carbon-exporter"


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """What one listener lets a client hold. Defaults fit a Prometheus scrape
    (one connection, a few hundred bytes of headers, every 15-60 s) with room
    for kubelet probes, a second Prometheus replica and a person with curl."""

    max_connections: int = 128
    # Not lower: bench/load.py's 50 concurrent scrapers come from one address.
    # Eviction at the global cap, not this, is what keeps a slowloris from one
    # address from locking others out.
    max_per_address: int = 64
    max_head_bytes: int = 16 * 1024
    max_headers: int = 32
    max_field_bytes: int = 4096  # one header line, and the request line
    request_timeout_s: float = 10.0


class Guarded(Protocol):
    """What the counts need of a connection (exporter/server.py's)."""

    @property
    def address(self) -> str: ...

    @property
    def busy(self) -> bool: ...  # a complete request is being handled

    def force_close(self) -> None: ...


class ConnectionCounts:
    """Open connections by client address, and the ones the listener closed, by
    why (rendered as gpucarbon_web_connections_closed_total).

    At the global cap a new connection is not refused outright: the oldest
    connection that is waiting for a request (idle, or still sending its head)
    on the address holding the most connections is closed to make room, so a
    slowloris spread over a few addresses cannot lock a scraper out. Only when
    every open connection is busy with a request is the new one refused."""

    def __init__(self, limits: ConnectionLimits = ConnectionLimits()) -> None:
        self.limits = limits
        self._open: dict[str, dict[Guarded, None]] = {}  # address -> handlers, oldest first
        self.total = 0
        self.refused = 0
        self.evicted = 0
        self.timed_out = 0
        self.oversized = 0

    def admit(self, handler: Guarded, address: str) -> bool:
        mine = self._open.get(address, {})
        if len(mine) >= self.limits.max_per_address:
            self.refused += 1
            return False
        if self.total >= self.limits.max_connections:
            victim = self._idle_victim()
            if victim is None:
                self.refused += 1
                return False
            self.evicted += 1
            self.release(victim)
            victim.force_close()
        self._open.setdefault(address, {})[handler] = None
        self.total += 1
        return True

    def _idle_victim(self) -> Guarded | None:
        for address in sorted(self._open, key=lambda a: len(self._open[a]), reverse=True):
            for handler in self._open[address]:
                if not handler.busy:
                    return handler
        return None

    def release(self, handler: Guarded) -> None:
        """Forget a connection (idempotent: an evicted one is released twice)."""
        mine = self._open.get(handler.address)
        if mine is None or handler not in mine:
            return
        del mine[handler]
        self.total -= 1
        if not mine:
            del self._open[handler.address]

    def counts(self) -> tuple[tuple[str, int], ...]:
        """Connections closed before a response, by reason (rendered by the collector)."""
        return (
            ("refused", self.refused),
            ("evicted", self.evicted),
            ("timed_out", self.timed_out),
            ("oversized", self.oversized),
        )
