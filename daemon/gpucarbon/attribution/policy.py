"""How one GPU's energy in one interval is divided. Pure functions, integer mJ.

Policy (docs/attribution.md states it for users):
  * no holders: all of E is unattributed;
  * idle part = min(E, idle_watts * dt), split equally among holders
    ("who holds the GPU pays for its idle draw");
  * active part = E - idle, split among consumers in proportion to their SM
    utilization in the interval; no utilization: equally among consumers with
    processes; no processes: equally among holders;
  * every split uses largest-remainder rounding, so the parts sum to E exactly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


def split_exact(total: int, weights: Sequence[float]) -> list[int]:
    """Split `total` into integers proportional to `weights` that sum to `total`.

    Largest remainder (Hamilton) method; ties go to the earlier index, so the
    result is deterministic. All-zero weights split equally.
    """
    if total < 0:
        raise ValueError(f"cannot split a negative total: {total}")
    count = len(weights)
    if count == 0:
        raise ValueError("cannot split among nobody")
    if any(w < 0 for w in weights):
        raise ValueError("weights must be non-negative")
    first = weights[0]
    if total <= EQUAL_FAST_MAX and all(w == first for w in weights):
        return _equal_parts(total, count)
    return largest_remainder(total, weights)


def split_equal(total: int, count: int) -> list[int]:
    """split_exact(total, [1.0] * count), without building and checking the
    weights (every idle split and embodied split, each GPU each poll)."""
    if total < 0:
        raise ValueError(f"cannot split a negative total: {total}")
    if count <= 0:
        raise ValueError("cannot split among nobody")
    if total <= EQUAL_FAST_MAX:
        return _equal_parts(total, count)
    return largest_remainder(total, [1.0] * count)


def _equal_parts(total: int, count: int) -> list[int]:
    # Equal weights: the largest remainder gives each total // count and the
    # first total % count one more, which divmod says without floats (tests
    # compare both paths).
    each, extra = divmod(total, count)
    return [each + 1] * extra + [each] * (count - extra)


# Below this the float arithmetic of largest_remainder is exact to far better
# than one part in `count`, so its equal-weight result is the divmod one.
EQUAL_FAST_MAX = 2**50


def largest_remainder(total: int, weights: Sequence[float]) -> list[int]:
    """split_exact's general path (validated inputs)."""
    count = len(weights)
    weight_sum = float(sum(weights))
    if weight_sum <= 0.0:
        weights, weight_sum = [1.0] * count, float(count)
    exact = [total * w / weight_sum for w in weights]
    parts = [int(x) for x in exact]
    # Float error can push a floor one over; clamp so the remainder stays >= 0.
    while sum(parts) > total:
        largest = max(range(count), key=lambda i: parts[i])
        parts[largest] -= 1
    short = total - sum(parts)
    if short:
        # Largest remainder first, ties to the earlier index: a stable sort
        # keeps equal keys in index order, also with reverse=True.
        remainders = [x - p for x, p in zip(exact, parts, strict=True)]
        for i in sorted(range(count), key=remainders.__getitem__, reverse=True)[:short]:
            parts[i] += 1
    return parts


@dataclass(frozen=True, slots=True)
class Split:
    """The division of one interval's energy E (mJ)."""

    parts: Mapping[str, int]  # consumer key -> mJ
    unattributed_mj: int
    idle_mj: int
    active_mj: int
    idle_parts: Mapping[str, int] = field(default_factory=dict)  # key -> its share of idle_mj (in parts)


def split_interval(
    energy_mj: int,
    idle_cap_mj: int,
    holders: Sequence[str],
    running: Mapping[str, float],
) -> Split:
    """Divide `energy_mj` among consumers.

    holders: every consumer holding the GPU (by process or by allocation),
             sorted for determinism; must include every key of `running`.
    running: consumers with a process on the GPU -> SM utilization (0..1, may
             be 0 when no samples arrived).
    idle_cap_mj: idle_watts * dt in mJ, the most the idle part can be.
    """
    if energy_mj < 0 or idle_cap_mj < 0:
        raise ValueError("energy and idle cap must be non-negative")
    if not holders:
        return Split({}, energy_mj, 0, 0)
    idle = min(energy_mj, idle_cap_mj)
    active = energy_mj - idle
    idle_parts = dict(zip(holders, split_equal(idle, len(holders)), strict=True))
    parts = dict(idle_parts)
    payers, weights = _active_payers(holders, running)
    for key, mj in zip(payers, split_exact(active, weights), strict=True):
        parts[key] += mj
    return Split(parts, 0, idle, active, idle_parts)


def _active_payers(holders: Sequence[str], running: Mapping[str, float]) -> tuple[list[str], list[float]]:
    runners = [key for key in holders if key in running]
    if not runners:
        return list(holders), [1.0] * len(holders)
    weights = [max(0.0, running[key]) for key in runners]
    if sum(weights) <= 0.0:
        return runners, [1.0] * len(runners)
    return runners, weights
