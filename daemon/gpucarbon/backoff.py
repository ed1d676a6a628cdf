"""The one backoff helper: exponential steps with "equal jitter".

Each delay is half the step fixed plus up to half again at random, so many
daemons restarting together spread out but never retry at once. With
`jitter=False` the delay is the step itself (deterministic retries of a local
library, where there is no thundering herd to spread).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

MAX_DOUBLINGS = 32  # 2**32 * any initial step is far past every cap


@dataclass
class Backoff:
    initial_s: float = 1.0
    max_s: float = 60.0
    rng: Callable[[], float] = random.random  # uniform in [0, 1)
    jitter: bool = True
    _attempt: int = 0

    def step(self, attempt: int) -> float:
        """The delay cap of the 0-based `attempt`, seconds."""
        return min(self.max_s, self.initial_s * 2 ** min(attempt, MAX_DOUBLINGS))

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number `attempt` (0-based)."""
        step = self.step(attempt)
        return step / 2 + self.rng() * step / 2 if self.jitter else step

    def next_delay(self) -> float:
        """The delay after one more failure in a row."""
        delay = self.delay(self._attempt)
        self._attempt = min(self._attempt + 1, MAX_DOUBLINGS)
        return delay

    def reset(self) -> None:
        """A success: the next failure waits the initial step again."""
        self._attempt = 0

    @property
    def failures(self) -> int:
        return self._attempt
