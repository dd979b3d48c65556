"""The client side of Firefox's WebSocket push protocol, without I/O.

The user agent sends JSON text frames (`hello`, `register`, `unregister`, `ack`, and the
literal `{}` as a ping) and receives frames keyed by `messageType`. The `*_frame`
functions build what the user agent sends, exactly as Firefox spells it;
`parse_server_frame` turns one received frame into a typed message. Nothing here touches
a socket or a clock, so every rule is tested with plain strings.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from tidings.webpush import b64url_decode

__all__ = [
    "PING",
    "AckCode",
    "AckUpdate",
    "Broadcast",
    "HelloReply",
    "Notification",
    "Pong",
    "ProtocolError",
    "RegisterReply",
    "ServerMessage",
    "Unknown",
    "UnregisterReply",
    "ack_frame",
    "broadcast_subscribe_frame",
    "hello_frame",
    "parse_server_frame",
    "register_frame",
    "unregister_frame",
]

PING = "{}"
"""A ping, in both directions: the literal empty JSON object."""


class AckCode:
    """Ack codes of Firefox's protocol."""

    DELIVERED = 100
    DECRYPTION_FAILED = 101
    OTHER_ERROR = 102


class ProtocolError(Exception):
    """A frame from the service that breaks the protocol (not JSON, missing fields)."""


@dataclass(frozen=True, slots=True)
class AckUpdate:
    """One acknowledgement: message `version` of channel `channel_id`, with `code`."""

    channel_id: str
    version: str
    code: int = AckCode.DELIVERED


@dataclass(frozen=True, slots=True)
class HelloReply:
    """The service's answer to hello: the user agent id it will use from now on."""

    uaid: str
    status: int
    broadcasts: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RegisterReply:
    """The answer to register: the endpoint when `status` is 200."""

    channel_id: str
    status: int
    endpoint: str | None


@dataclass(frozen=True, slots=True)
class UnregisterReply:
    """The answer to unregister."""

    channel_id: str
    status: int


@dataclass(frozen=True, slots=True)
class Notification:
    """A push message: still encrypted; `headers` say how to decrypt it."""

    channel_id: str
    version: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Pong:
    """The service's `{}`: the connection is alive."""


@dataclass(frozen=True, slots=True)
class Broadcast:
    """New broadcast versions ({id: version}); unknown ids under `errors`."""

    broadcasts: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Unknown:
    """A well-formed frame of a type this user agent does not know (ignored)."""

    message_type: str


ServerMessage = (
    HelloReply | RegisterReply | UnregisterReply | Notification | Pong | Broadcast | Unknown
)


def _frame(payload: dict[str, Any]) -> str:
    return json.dumps(payload, separators=(",", ":"))


def hello_frame(uaid: str | None, broadcasts: dict[str, str] | None = None) -> str:
    """The first frame of a connection; carries the uaid once the user agent has one,
    and the versions of the broadcasts it follows ({id: version})."""
    payload: dict[str, Any] = {
        "messageType": "hello",
        "broadcasts": broadcasts or {},
        "use_webpush": True,
    }
    if uaid:
        payload["uaid"] = uaid
    return _frame(payload)


def broadcast_subscribe_frame(broadcasts: dict[str, str]) -> str:
    """Follow more broadcasts ({id: the version known}) on an open connection."""
    return _frame({"messageType": "broadcast_subscribe", "broadcasts": broadcasts})


def register_frame(channel_id: str, application_server_key: str | None) -> str:
    """Ask for a subscription; `application_server_key` is base64url (a VAPID key)."""
    payload: dict[str, Any] = {"channelID": channel_id, "messageType": "register"}
    if application_server_key:
        payload["key"] = application_server_key
    return _frame(payload)


def unregister_frame(channel_id: str, code: int = 200) -> str:
    """Drop a subscription (code 200: the user unsubscribed)."""
    return _frame({"messageType": "unregister", "channelID": channel_id, "code": code})


def ack_frame(updates: list[AckUpdate]) -> str:
    """Acknowledge messages: 100 delivered, 101 decryption failed, 102 other error."""
    return _frame(
        {
            "messageType": "ack",
            "updates": [
                {"channelID": u.channel_id, "version": u.version, "code": u.code} for u in updates
            ],
        }
    )


def _str(message: dict[str, Any], name: str) -> str:
    value = message.get(name)
    if not isinstance(value, str):
        raise ProtocolError(f"{message.get('messageType')} frame has no string {name!r}")
    return value


def _status(message: dict[str, Any]) -> int:
    value = message.get("status", 200)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ProtocolError(f"{message.get('messageType')} frame has a non-integer status")
    return value


def parse_server_frame(text: str | bytes) -> ServerMessage:
    """Parse one text frame from the service; raise ProtocolError when it is malformed."""
    try:
        message = json.loads(text)
    except (ValueError, RecursionError):
        raise ProtocolError("frame is not JSON") from None
    if not isinstance(message, dict):
        raise ProtocolError("frame is not a JSON object")
    if not message:
        return Pong()
    kind = message.get("messageType")
    if not isinstance(kind, str):
        raise ProtocolError("frame has no messageType")
    kind = kind.lower()
    if kind == "hello":
        broadcasts = message.get("broadcasts")
        return HelloReply(
            _str(message, "uaid"),
            _status(message),
            broadcasts if isinstance(broadcasts, dict) else {},
        )
    if kind == "register":
        endpoint = message.get("pushEndpoint")
        return RegisterReply(
            _str(message, "channelID").lower(),
            _status(message),
            endpoint if isinstance(endpoint, str) and endpoint else None,
        )
    if kind == "unregister":
        return UnregisterReply(_str(message, "channelID").lower(), _status(message))
    if kind == "notification":
        return _notification(message)
    if kind == "ping":
        return Pong()
    if kind == "broadcast":
        broadcasts = message.get("broadcasts")
        return Broadcast(broadcasts if isinstance(broadcasts, dict) else {})
    return Unknown(kind)


def _notification(message: dict[str, Any]) -> Notification:
    channel_id = _str(message, "channelID").lower()
    version = _str(message, "version")
    data = message.get("data")
    body = b""
    if data is not None:
        if not isinstance(data, str):
            raise ProtocolError("notification data is not a string")
        try:
            # Firefox accepts padded and unpadded base64url; so do we.
            body = b64url_decode(data.strip())
        except ValueError:
            raise ProtocolError("notification data is not base64url") from None
    raw_headers = message.get("headers")
    headers: dict[str, str] = {}
    if isinstance(raw_headers, dict):
        headers = {str(k).lower(): v for k, v in raw_headers.items() if isinstance(v, str) and v}
    return Notification(channel_id, version, body, headers)
