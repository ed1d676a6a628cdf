"""A real grpc.aio server on a unix socket serving kubelet's `v1.PodResourcesLister`
from the same proto the daemon uses, with settable allocations and faults. Only
`List`, the one call the daemon makes; the others answer UNIMPLEMENTED.

    kubelet = FakeKubelet(tmp_path / "kubelet.sock")
    kubelet.pods = [pod("ml", "trainer-0", {"main": {"nvidia.com/gpu": ["GPU-..."]}})]
    await kubelet.start()
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from pathlib import Path

import grpc

from gpucarbon.identity.proto import api_pb2, api_pb2_grpc

# container name -> resource name -> device IDs
Containers = Mapping[str, Mapping[str, Sequence[str]]]


def pod(namespace: str, name: str, containers: Containers) -> api_pb2.PodResources:
    return api_pb2.PodResources(
        name=name,
        namespace=namespace,
        containers=[
            api_pb2.ContainerResources(
                name=container,
                devices=[
                    api_pb2.ContainerDevices(resource_name=resource, device_ids=list(ids))
                    for resource, ids in resources.items()
                ],
                cpu_ids=[0, 1],
            )
            for container, resources in containers.items()
        ],
    )


class FakeKubelet(api_pb2_grpc.PodResourcesListerServicer):
    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path
        self.pods: list[api_pb2.PodResources] = []
        self.delay_s = 0.0  # every answer waits this long (deadline tests)
        self.fail_with: grpc.StatusCode | None = None  # abort every call with this
        self.calls = 0
        self._server: grpc.aio.Server | None = None

    async def start(self) -> None:
        self._server = grpc.aio.server()
        api_pb2_grpc.add_PodResourcesListerServicer_to_server(self, self._server)
        self._server.add_insecure_port(f"unix://{self.socket_path}")
        await self._server.start()

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(grace=None)
            self._server = None
        self.socket_path.unlink(missing_ok=True)

    async def _answer(self, context: grpc.aio.ServicerContext) -> None:
        self.calls += 1
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.fail_with is not None:
            await context.abort(self.fail_with, "injected failure")

    async def List(self, request, context):  # noqa: N802 - gRPC method name
        await self._answer(context)
        return api_pb2.ListPodResourcesResponse(pod_resources=self.pods)
