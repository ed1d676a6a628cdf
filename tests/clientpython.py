"""client_python's view of the daemon's families: the reference the fast
TextWriter is compared with, byte for byte (the daemon itself never imports
prometheus_client)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric

from gpucarbon.exporter.exposition import Family


def to_metric(family: Family) -> Metric:
    """The client_python object for one of the daemon's families."""
    metric = Metric(family.base, family.help, family.kind, family.unit)
    for sample_name, names, values, value in family.rows:
        metric.add_sample(sample_name, dict(zip(names, values, strict=True)), value)
    return metric


class FamiliesCollector:
    """A client_python custom collector over a function returning families."""

    def __init__(self, families: Callable[[], Iterable[Family]]) -> None:
        self._families = families

    def describe(self) -> list[Metric]:
        return []  # families vary with the snapshot; skip describe-time collection

    def collect(self) -> list[Metric]:
        return [to_metric(family) for family in self._families()]


def registry_of(families: Callable[[], Iterable[Family]]) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FamiliesCollector(families))
    return registry


def reference_bytes(families: Callable[[], Iterable[Family]]) -> bytes:
    """generate_latest over these families."""
    return generate_latest(registry_of(families))


class SanitisedCollector(FamiliesCollector):
    """As FamiliesCollector, every label value through the daemon's one
    sanitiser after collection, on client_python's samples: the reference for
    what /metrics serves when a dirty value slipped through a source."""

    def collect(self) -> list[Metric]:
        from gpucarbon.labels import ANY_LABEL_MAX_LEN, sanitise_label_value

        metrics = super().collect()
        for metric in metrics:
            metric.samples = [
                sample._replace(
                    labels={k: sanitise_label_value(v, ANY_LABEL_MAX_LEN) for k, v in sample.labels.items()}
                )
                for sample in metric.samples
            ]
        return metrics
