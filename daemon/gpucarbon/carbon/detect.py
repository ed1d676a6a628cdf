"""`zone: auto` on Kubernetes: read this node's labels and providerID once at
start, resolve the grid zone, then build the configured provider for it.

Until the node is read (or if reading fails) readings come from the bundled
table's WORLD figure, flagged as a fallback, so emissions never stop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping

from gpucarbon.carbon.model import IntensityReading, ProviderHealth
from gpucarbon.carbon.providers import CarbonProvider
from gpucarbon.carbon.zone import resolve_zone

log = logging.getLogger(__name__)

NodeFacts = tuple[Mapping[str, str], str | None]  # (labels, spec.providerID)
NODE_READ_TIMEOUT_S = 10.0


class ZoneDetectingProvider:
    """A CarbonProvider whose zone comes from the node; delegates once built."""

    def __init__(
        self,
        read_node: Callable[[], Awaitable[NodeFacts]],
        build: Callable[[str], CarbonProvider],
        provisional: CarbonProvider,
    ) -> None:
        self._read_node = read_node
        self._build = build
        self._provider = provisional

    @property
    def source(self) -> str:
        return self._provider.source

    def current(self) -> IntensityReading:
        return self._provider.current()

    def health(self) -> ProviderHealth:
        return self._provider.health()

    async def start(self) -> None:
        labels: Mapping[str, str] = {}
        provider_id = None
        try:
            labels, provider_id = await asyncio.wait_for(self._read_node(), NODE_READ_TIMEOUT_S)
        except Exception as err:  # no RBAC, API down: keep WORLD and say so
            log.warning("zone auto: cannot read this node (%s); using the WORLD average", type(err).__name__)
        zone = resolve_zone("auto", labels, provider_id)
        log.info("carbon intensity zone: %s", zone)
        provisional, self._provider = self._provider, self._build(zone)
        await provisional.close()  # a no-op for the usual table provider, but not for every one
        await self._provider.start()

    async def close(self) -> None:
        await self._provider.close()


def lightkube_node_reader(client, node_name: str) -> Callable[[], Awaitable[NodeFacts]]:
    """Read (labels, providerID) of `node_name` with a lightkube AsyncClient."""
    from lightkube.resources.core_v1 import Node

    async def read() -> NodeFacts:
        node = await client.get(Node, name=node_name)
        labels = dict(node.metadata.labels or {}) if node.metadata else {}
        provider_id = node.spec.providerID if node.spec else None
        return labels, provider_id

    return read
