"""What a push service answered, classified into the few kinds an application acts on."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from tidings.webpush import Subscription
from tidings.webpush.errors import ErrorBody, parse_error_body

__all__ = [
    "FanoutSummary",
    "ResultKind",
    "SendResult",
    "ServiceError",
    "classify_status",
    "parse_error_body",
]


class ResultKind(enum.StrEnum):
    """The outcome of one push, as the application should act on it."""

    ACCEPTED = "accepted"
    """2xx: the push service took the message (201, or 202 when a receipt was asked for)."""
    GONE = "gone"
    """404 or 410: the subscription no longer exists; delete it."""
    REJECTED = "rejected"
    """Another 4xx (400, 401, 403, 413...): the request is wrong; retrying will not help."""
    RETRY_LATER = "retry_later"
    """429 or 5xx still answered after the last retry: try again later."""
    FAILED = "failed"
    """No HTTP answer after the last retry (connection refused, reset, TLS error, timeout)."""
    INVALID = "invalid"
    """Nothing was sent: the subscription or the personalised payload could not be used."""


ServiceError = ErrorBody
"""The parsed JSON error body; the class lives in `tidings.webpush.errors` as `ErrorBody`."""


def classify_status(status: int) -> ResultKind:
    """The kind of a final HTTP status (before any retry decision)."""
    if 200 <= status < 300:
        return ResultKind.ACCEPTED
    if status in (404, 410):
        return ResultKind.GONE
    if status == 429 or status >= 500:
        return ResultKind.RETRY_LATER
    return ResultKind.REJECTED


@dataclass(slots=True)
class SendResult:
    """The outcome of sending one message to one subscription."""

    subscription: Subscription
    kind: ResultKind
    status: int | None = None
    """The last HTTP status, or None when no answer came (kinds failed and invalid)."""
    location: str | None = None
    """The push message resource (`Location`): DELETE it to cancel an undelivered message."""
    ttl: int | None = None
    """The TTL the service says it kept (its `TTL` answer header), possibly lower than asked."""
    reason: str | None = None
    """Why it was not accepted: the service's message, or the network / input error."""
    error: ServiceError | None = None
    """The service's parsed JSON error body, when it sent one."""
    attempts: int = 1
    """How many requests were made (1 + retries); 0 when nothing was sent."""
    retry_after: float | None = None
    """Seconds the service asked to wait (`Retry-After`) on its last 429/5xx."""
    http_version: str | None = None
    """"HTTP/1.1" or "HTTP/2": the protocol that carried the last request."""
    receipt: str | None = None
    """The receipt subscription (`Link rel=urn:ietf:params:push:receipt`) of a 202."""
    original: object = field(default=None, repr=False, compare=False)
    """What the caller passed as the subscription (e.g. its dict with extra fields)."""

    @property
    def ok(self) -> bool:
        """True when the push service accepted the message."""
        return self.kind is ResultKind.ACCEPTED

    @property
    def status_code(self) -> int | None:
        """The HTTP status under the name requests and pywebpush users know."""
        return self.status

    def __str__(self) -> str:
        status = f" {self.status}" if self.status is not None else ""
        reason = f": {self.reason}" if self.reason else ""
        return f"{self.kind.value}{status}{reason} ({self.subscription.endpoint})"


@dataclass(slots=True)
class FanoutSummary:
    """What `Sender.send_many` did: counts per kind, time taken, and what to act on."""

    counts: dict[ResultKind, int] = field(default_factory=lambda: dict.fromkeys(ResultKind, 0))
    elapsed: float = 0.0
    gone: list[SendResult] = field(default_factory=list)
    """The results for subscriptions to delete (404/410); `.original` is what you passed."""
    problems: list[SendResult] = field(default_factory=list)
    """Every result that is neither accepted nor gone (rejected, retry_later, failed, invalid)."""

    @property
    def total(self) -> int:
        """How many subscriptions were handled."""
        return sum(self.counts.values())

    @property
    def accepted(self) -> int:
        """How many messages the services accepted."""
        return self.counts[ResultKind.ACCEPTED]

    @property
    def messages_per_second(self) -> float:
        """Handled subscriptions per second of wall time."""
        return self.total / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def all_accepted(self) -> bool:
        """True when every message was accepted."""
        return self.accepted == self.total

    def add(self, result: SendResult) -> None:
        """Count one result."""
        self.counts[result.kind] += 1
        if result.kind is ResultKind.GONE:
            self.gone.append(result)
        elif result.kind is not ResultKind.ACCEPTED:
            self.problems.append(result)

    def as_dict(self) -> dict[str, float | int]:
        """Counts, elapsed and rate as plain JSON-friendly values."""
        out: dict[str, float | int] = {kind.value: n for kind, n in self.counts.items()}
        out["total"] = self.total
        out["elapsed"] = round(self.elapsed, 3)
        out["messages_per_second"] = round(self.messages_per_second, 1)
        return out
