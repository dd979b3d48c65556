"""When to try a push again: exponential backoff with jitter, honouring `Retry-After`."""

from __future__ import annotations

import email.utils
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["RetryPolicy", "parse_retry_after"]


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` value (delta-seconds or an HTTP date), or None."""
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if text.isdigit():
        return float(int(text[-12:]))  # absurdly long values saturate rather than overflow
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT
        return None
    delay = when.timestamp() - (time.time() if now is None else now)
    return max(0.0, delay)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How many times and how long to wait before retrying 429, 5xx and network errors.

    The n-th retry waits `base_delay * 2**(n-1)` seconds capped at `max_delay`, with
    "equal jitter" (between half and all of it), so many senders do not retry in step.
    A `Retry-After` from the service replaces the computed delay (never shortened; a
    little jitter is added on top). A `Retry-After` longer than `max_retry_after` ends the
    retries at once: the result is `retry_later` with `retry_after` set, for the
    application to schedule.
    """

    max_attempts: int = 4
    """Requests per message in all, the first included; 1 disables retries."""
    base_delay: float = 0.5
    max_delay: float = 20.0
    max_retry_after: float = 60.0
    jitter: bool = True

    def __post_init__(self) -> None:
        if type(self.max_attempts) is not int or self.max_attempts < 1:
            raise ValueError(f"max_attempts must be an int >= 1, got {self.max_attempts!r}")
        for name in ("base_delay", "max_delay", "max_retry_after"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")

    @classmethod
    def none(cls) -> RetryPolicy:
        """A policy that never retries."""
        return cls(max_attempts=1)

    def next_delay(
        self, attempt: int, retry_after: float | None, *, rng: random.Random | None = None
    ) -> float | None:
        """Seconds to wait after failed attempt number `attempt` (1-based), or None to stop."""
        if attempt >= self.max_attempts:
            return None
        uniform: Callable[[float, float], float] = (rng or random).uniform
        if retry_after is not None:
            if retry_after > self.max_retry_after:
                return None
            extra = uniform(0.0, min(1.0, 0.1 * retry_after + 0.05)) if self.jitter else 0.0
            return retry_after + extra
        delay = min(self.max_delay, self.base_delay * float(2 ** (attempt - 1)))
        if self.jitter:
            delay = uniform(delay / 2, delay)
        return delay
