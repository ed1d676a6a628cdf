"""The idle draw of each GPU (watts): what holders pay for simply holding it."""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping

# Typical idle draw by model family, watts. T4/V100/A100/A10G from Cloud Carbon
# Footprint's coefficients; H100/H200 from the H100 SXM's observed idle (~60-75 W).
# Matched as a whole token of the NVML name, first match wins: "GH200" (a Grace
# superchip, whose counter includes the CPU) is not an "H200".
DEFAULT_IDLE_WATTS: tuple[tuple[str, float], ...] = (
    ("H200", 75.0),
    ("H100", 70.0),
    ("A100", 46.0),
    ("A10G", 18.0),
    ("V100", 35.0),
    ("T4", 8.0),
)
UNKNOWN_MODEL_IDLE_FRACTION = 0.1  # of the power limit, when nothing better is known
UNKNOWN_MODEL_IDLE_WATTS = 30.0  # when the power limit is unknown too


class IdleModel:
    """Resolves idle watts per GPU: configured (by UUID, then model, then one
    number for all), else learned as the lowest average power seen over an
    interval with no process running, else a per-model default."""

    def __init__(self, configured: float | None, by_gpu: Mapping[str, float]) -> None:
        self._configured = configured
        self._by_gpu = dict(by_gpu)
        self._learned: dict[str, float] = {}

    def observe(self, uuid: str, average_power_w: float, processes_running: bool) -> None:
        if processes_running or average_power_w <= 0:
            return
        previous = self._learned.get(uuid)
        if previous is None or average_power_w < previous:
            self._learned[uuid] = average_power_w

    def learned(self) -> Mapping[str, float]:
        return dict(self._learned)

    def restore(self, learned: Mapping[str, float]) -> None:
        self._learned.update(learned)

    def watts(self, uuid: str, model: str, power_limit_w: float | None) -> float:
        if uuid in self._by_gpu:
            return self._by_gpu[uuid]
        if model in self._by_gpu:
            return self._by_gpu[model]
        if self._configured is not None:
            return self._configured
        if uuid in self._learned:
            return self._learned[uuid]
        return default_idle_watts(model, power_limit_w)


@functools.lru_cache(maxsize=256)  # pure; asked for every GPU every poll
def default_idle_watts(model: str, power_limit_w: float | None) -> float:
    for family, watts in DEFAULT_IDLE_WATTS:
        if re.search(rf"(?<![A-Za-z0-9]){family}(?![0-9])", model):
            return watts
    if power_limit_w:
        return power_limit_w * UNKNOWN_MODEL_IDLE_FRACTION
    return UNKNOWN_MODEL_IDLE_WATTS
