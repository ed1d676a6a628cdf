"""The poll pipeline wired by hand, as app.py wires it, with test-sized knobs:
reader -> accountant -> ledger -> snapshot, driven by the poller."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from gpucarbon.accounting import Accountant, Rates
from gpucarbon.attribution.energy import EnergyMeters
from gpucarbon.attribution.idle import IdleModel
from gpucarbon.carbon.model import IntensityReading, ProviderHealth
from gpucarbon.device.reader import GpuReader
from gpucarbon.identity.resolver import Resolver
from gpucarbon.ledger import Ledger
from gpucarbon.poller import Poller
from gpucarbon.simulation import SimulatedNode
from gpucarbon.snapshot import Snapshot


class MutableIntensity:
    """A carbon provider whose intensity a test changes between polls."""

    def __init__(self, grams: float) -> None:
        self.grams = grams

    def current(self) -> IntensityReading:
        return IntensityReading(self.grams, "ZZ", "static")

    def health(self) -> ProviderHealth:
        return ProviderHealth("static", True, None)


@dataclass
class Pipeline:
    poller: Poller
    ledger: Ledger
    reader: GpuReader

    async def poll(self) -> Snapshot:
        return await self.poller.poll()

    @property
    def snapshot(self) -> Snapshot:
        return self.poller.snapshot


def make_poller(
    source,
    clock,
    *,
    allocations=None,
    idle_watts=None,
    intensity=None,
    retention=600.0,
    timeout=5.0,
    cap=2000,
    pue=1.0,
    resolver=None,
    **rates,
) -> Pipeline:
    """`source` is a SimulatedNode (its scheduler allocates and owns synthetic
    PIDs) or any GpuBackend."""
    node = source if isinstance(source, SimulatedNode) else None
    backend = node.gpus if node is not None else source
    if allocations is None and node is not None:
        allocations = node.scheduler
    synthetic = node.scheduler.consumer_for_pid if node is not None else None
    resolver = resolver or Resolver(lookup_process=lambda pid: None, synthetic=synthetic)
    intensity = intensity or MutableIntensity(400.0)
    ledger = Ledger(cap, "unassigned")
    rates_ = Rates(pue=pue, intensity=intensity, **rates)
    reader = GpuReader(backend, clock, timeout)
    accountant = Accountant(
        resolver=resolver,
        allocations=allocations,
        idle=IdleModel(idle_watts, {}),
        meters=EnergyMeters(),
        rates=rates_,
        ledger=ledger,
        clock=clock,
        retention_s=retention,
    )
    poller = Poller(
        reader=reader,
        accountant=accountant,
        ledger=ledger,
        rates=rates_,
        carbon=intensity,
        resolver=resolver,
        wall=clock.wall,
    )
    return Pipeline(poller, ledger, reader)


def assert_conserved(pipeline: Pipeline) -> None:
    """Per GPU: workloads + retired + unattributed == measured (mJ exactly, grams to rounding)."""
    ledger = pipeline.ledger
    total_unattributed = 0
    for uuid, gpu in ledger.gpus.items():
        parts = sum(e.energy_mj for (u, _), e in ledger.workloads.items() if u == uuid)
        assert parts + gpu.unattributed_mj + gpu.retired_mj == gpu.energy_mj, uuid
        grams = sum(e.grams for (u, _), e in ledger.workloads.items() if u == uuid)
        assert grams + gpu.unattributed_grams + gpu.retired_grams == pytest.approx(gpu.grams, rel=1e-9, abs=1e-9)
        total_unattributed += gpu.unattributed_mj
    teams = sum(t.energy_mj for t in ledger.teams.values())
    assert teams + total_unattributed == sum(g.energy_mj for g in ledger.gpus.values())
