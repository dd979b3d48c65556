"""The user agent's errors, named after the DOM exceptions a browser throws."""

from __future__ import annotations

__all__ = [
    "AbortError",
    "InvalidStateError",
    "NotConnectedError",
    "NotSupportedError",
    "SubscriptionRefused",
    "UserAgentError",
]


class UserAgentError(Exception):
    """Base of every error raised by `tidings.useragent`."""


class InvalidStateError(UserAgentError):
    """The call does not fit the current state, e.g. subscribing again with another key.

    A browser throws `InvalidStateError` when `subscribe()` is called with an
    application server key different from the existing subscription's; unsubscribe
    first, then subscribe with the new key.
    """


class SubscriptionRefused(UserAgentError):
    """The push service answered the subscribe request with an error `status`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class NotConnectedError(UserAgentError):
    """No connection to the push service could be made within the time allowed."""


class NotSupportedError(UserAgentError):
    """The push protocol in use cannot do this (e.g. an urgency filter over WebSocket)."""


class AbortError(UserAgentError):
    """The user agent was closed while the operation was waiting."""
