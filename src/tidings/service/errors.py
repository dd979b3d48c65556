"""Errors the service answers with: an RFC status code and a stable JSON body.

Every rejected request gets `{"code", "errno", "error", "message"}`, written by
`tidings.webpush.errors.error_body` with a number from its `Errno` table (imported
here too, where the service has always found it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tidings.webpush.errors import Errno, error_body

__all__ = ["Errno", "ServiceError"]


@dataclass
class ServiceError(Exception):
    """A request the service refuses; rendered as the JSON error body."""

    status: int
    errno: Errno
    message: str
    headers: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.status} {self.message}"

    def body(self) -> bytes:
        """The JSON error document for this error."""
        return error_body(self.status, self.errno, self.message)
