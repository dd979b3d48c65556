"""The W3C Push API for Python programs: a user agent that receives Web Push messages.

    async with UserAgent("ws://127.0.0.1:8080/", "state-dir") as ua:  # or "h2c://..."
        registration = await ua.register("my-app", on_push=handle)
        subscription = await registration.push_manager.subscribe(
            application_server_key=VAPID_PUBLIC_KEY
        )
        print(subscription.to_json())  # give this to the application server

See docs/useragent.md for the model and the design.
"""

from __future__ import annotations

from tidings.useragent.agent import Handlers, UserAgent
from tidings.useragent.api import (
    PermissionState,
    PushManager,
    PushSubscription,
    PushSubscriptionOptions,
    Registration,
)
from tidings.useragent.backoff import Backoff
from tidings.useragent.errors import (
    AbortError,
    InvalidStateError,
    NotConnectedError,
    NotSupportedError,
    SubscriptionRefused,
    UserAgentError,
)
from tidings.useragent.events import (
    ExtendableEvent,
    PushEvent,
    PushHandler,
    PushMessageData,
    PushSubscriptionChangeEvent,
    SubscriptionChangeHandler,
)
from tidings.useragent.rfc8030 import Http2Transport
from tidings.useragent.transport import Connection, Transport
from tidings.useragent.websocket import WebSocketTransport

__all__ = [
    "AbortError",
    "Backoff",
    "Connection",
    "ExtendableEvent",
    "Handlers",
    "Http2Transport",
    "InvalidStateError",
    "NotConnectedError",
    "NotSupportedError",
    "PermissionState",
    "PushEvent",
    "PushHandler",
    "PushManager",
    "PushMessageData",
    "PushSubscription",
    "PushSubscriptionChangeEvent",
    "PushSubscriptionOptions",
    "Registration",
    "SubscriptionChangeHandler",
    "SubscriptionRefused",
    "Transport",
    "UserAgent",
    "UserAgentError",
    "WebSocketTransport",
]
