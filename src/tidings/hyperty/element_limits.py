"""What the push element lets one client or runtime do, and how it says no.

`ElementLimits` bounds what one client or runtime may make the element hold or do;
`Refused` is a request the element will not act on (an HTTP status and the JSON error
body the endpoint sends, with the element's stable error numbers).
"""

from __future__ import annotations

from dataclasses import dataclass

from tidings.hyperty.mailboxes import MAILBOX_BYTES, MAILBOX_LIMIT
from tidings.service.limits import Rule

__all__ = [
    "ERRNO_FORBIDDEN",
    "ERRNO_POLLS",
    "ERRNO_RATE",
    "ERRNO_UNAUTHORIZED",
    "ElementLimits",
    "Refused",
    "forbidden",
    "unauthorized",
]

#: Stable error numbers of the element's refusals (the HTTP endpoint's space, 301-319).
ERRNO_UNAUTHORIZED = 306
ERRNO_FORBIDDEN = 307
ERRNO_RATE = 308
ERRNO_POLLS = 309


@dataclass(frozen=True)
class ElementLimits:
    """What one client or runtime may make the element hold or do."""

    registrations_per_client: Rule | None = Rule(0.5, 30)  # noqa: RUF009 - frozen, shared
    """Registrations (and unregistrations) per client IP address: 30/min, bursts of 30."""
    messages_per_runtime: Rule | None = Rule(10.0, 100)  # noqa: RUF009 - frozen, shared
    """Messages (requests, answers, allocations) per runtime: 10/s, bursts of 100."""
    hyperties_per_runtime: int = 32
    """Hyperty addresses allocated to one runtime (and so registered by it)."""
    allocation_batch: int = 8
    """Addresses one allocation request may ask for."""
    objects_per_runtime: int = 1024
    """Data object URLs bound to one runtime; binding more releases its oldest."""
    inbox_messages: int = MAILBOX_LIMIT
    inbox_bytes: int = MAILBOX_BYTES
    polls_per_runtime: int = 4
    """Inbox long-polls one runtime may hold open at once."""
    max_runtimes: int = 100_000
    buckets: int = 100_000
    """Rate limit buckets kept (an LRU: an evicted bucket comes back full)."""


class Refused(Exception):
    """A request the element will not act on: an HTTP status and the JSON error body."""

    def __init__(
        self, status: int, errno: int, error: str, message: str, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.errno = errno
        self.error = error
        self.message = message
        self.retry_after = retry_after


def unauthorized(message: str) -> Refused:
    """401: no credential, or one the element does not know."""
    return Refused(401, ERRNO_UNAUTHORIZED, "unauthorized", message)


def forbidden(message: str) -> Refused:
    """403: a credential that may not do this."""
    return Refused(403, ERRNO_FORBIDDEN, "forbidden", message)
