"""Reconnection delays: exponential backoff with jitter, without I/O or a clock."""

from __future__ import annotations

import random

__all__ = ["Backoff"]


class Backoff:
    """Delays that double from `initial` up to `maximum`, each scaled by a random factor.

    The factor is drawn from [1 - jitter, 1], so thousands of user agents cut off at
    once (a service restart) come back spread over time instead of all together.
    """

    def __init__(
        self,
        initial: float = 0.5,
        maximum: float = 60.0,
        *,
        factor: float = 2.0,
        jitter: float = 0.5,
        rng: random.Random | None = None,
    ) -> None:
        if initial <= 0 or maximum < initial or factor < 1 or not 0 <= jitter <= 1:
            raise ValueError("need 0 < initial <= maximum, factor >= 1 and 0 <= jitter <= 1")
        self.initial = initial
        self.maximum = maximum
        self.factor = factor
        self.jitter = jitter
        self.attempts = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        """The delay before the next attempt; each call counts one failed attempt."""
        ceiling = min(self.maximum, self.initial * self.factor ** min(self.attempts, 64))
        self.attempts += 1
        return ceiling * (1 - self.jitter * self._rng.random())

    def reset(self) -> None:
        """A connection succeeded: start again from `initial`."""
        self.attempts = 0
