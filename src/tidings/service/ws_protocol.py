"""Firefox's WebSocket push protocol, without I/O: frames in, typed messages out.

The browser and the service exchange JSON text frames keyed by `messageType`
(`hello`, `register`, `unregister`, `ack`, `nack`, `broadcast_subscribe`, and the
literal `{}` as a ping). `parse_client_frame` turns one frame into a message or raises
`FrameError` carrying the WebSocket close code to use; the `*_reply` functions build
the service's frames. Nothing here touches a socket, a store or a clock.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

# The close codes (RFC 6455 section 7.4.1) and FrameError are the WebSocket codec's.
from tidings.service.http.websocket_frames import CLOSE_GOING_AWAY as CLOSE_GOING_AWAY
from tidings.service.http.websocket_frames import CLOSE_INVALID_PAYLOAD as CLOSE_INVALID_PAYLOAD
from tidings.service.http.websocket_frames import CLOSE_POLICY_VIOLATION as CLOSE_POLICY_VIOLATION
from tidings.service.http.websocket_frames import CLOSE_TOO_BIG as CLOSE_TOO_BIG
from tidings.service.http.websocket_frames import CLOSE_TRY_AGAIN_LATER as CLOSE_TRY_AGAIN_LATER
from tidings.service.http.websocket_frames import CLOSE_UNSUPPORTED_DATA as CLOSE_UNSUPPORTED_DATA
from tidings.service.http.websocket_frames import FrameError as FrameError
from tidings.service.records import record
from tidings.webpush import b64url_encode

CLOSE_REPLACED = 4001  # another connection took over this user agent id

_UAID = re.compile(r"^[0-9a-fA-F]{32}$")
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_MAX_UPDATES = 1000


@dataclass(frozen=True, slots=True)
class Hello:
    """The first frame of a connection; `uaid` is None for a new user agent."""

    uaid: str | None
    broadcasts: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Register:
    """Create a subscription. `error` is set (and answered 400) when a field is bad."""

    channel_id: str
    key: str | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Unregister:
    """Delete a subscription."""

    channel_id: str
    code: int | None = None
    error: str | None = None


@record
class AckUpdate:
    """One acknowledged message: 100 delivered, 101 decryption failed, 102 other error."""

    channel_id: str
    version: str
    code: int


@record
class Ack:
    """Acknowledgements of delivered messages."""

    updates: tuple[AckUpdate, ...]


@dataclass(frozen=True, slots=True)
class Nack:
    """The user agent could not process a message (codes 301 to 303)."""

    version: str
    code: int | None


@dataclass(frozen=True, slots=True)
class Ping:
    """The literal `{}`; answered with `{}`."""


@dataclass(frozen=True, slots=True)
class BroadcastSubscribe:
    """The client asks to follow broadcast ids (remote settings and the like)."""

    broadcasts: dict[str, Any]


ClientMessage = Hello | Register | Unregister | Ack | Nack | Ping | BroadcastSubscribe


def canonical_channel_id(value: object) -> str | None:
    """The lowercase UUID form of a channel id, or None when it is not a UUID."""
    if isinstance(value, str) and _UUID.match(value):
        return value.lower()
    return None


def _string(message: dict[str, Any], name: str) -> str | None:
    value = message.get(name)
    return value if isinstance(value, str) else None


def _broadcasts(message: dict[str, Any]) -> dict[str, Any]:
    value = message.get("broadcasts")
    return value if isinstance(value, dict) else {}


# The ack frame a user agent sends most (Firefox's form, compact, one update): read
# without the JSON decoder. Only characters that stand for themselves in a JSON string
# (no escape, no control character) and a code of 100, 101 or 102 are taken here, so a
# match means exactly what `json.loads` and `_parse_ack` would make of it; any other
# frame takes that path.
_COMPACT_ACK = re.compile(
    r'\{"messageType":"ack","updates":\[\{"channelID":"('
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
    r')","version":"([0-9A-Za-z_.~-]{1,128})","code":(10[012])\}\]\}'
)


def parse_client_frame(text: str) -> ClientMessage:
    """Parse one text frame from the user agent."""
    compact = _COMPACT_ACK.fullmatch(text)
    if compact is not None:
        channel_id, version, code = compact.groups()
        return Ack((AckUpdate(channel_id.lower(), version, int(code)),))
    try:
        message = json.loads(text)
    except (ValueError, RecursionError):
        raise FrameError(CLOSE_INVALID_PAYLOAD, "frame is not JSON") from None
    if not isinstance(message, dict):
        raise FrameError(CLOSE_INVALID_PAYLOAD, "frame is not a JSON object")
    if not message:
        return Ping()
    kind = message.get("messageType")
    if not isinstance(kind, str):
        raise FrameError(CLOSE_POLICY_VIOLATION, "frame has no messageType")
    kind = kind.lower()
    if kind == "hello":
        return _parse_hello(message)
    if kind == "register":
        return _parse_register(message)
    if kind == "unregister":
        return _parse_unregister(message)
    if kind == "ack":
        return _parse_ack(message)
    if kind == "nack":
        return _parse_nack(message)
    if kind == "ping":
        return Ping()
    if kind == "broadcast_subscribe":
        return BroadcastSubscribe(_broadcasts(message))
    raise FrameError(CLOSE_POLICY_VIOLATION, f"unknown messageType {kind[:32]!r}")


def _parse_hello(message: dict[str, Any]) -> Hello:
    uaid = _string(message, "uaid")
    # An id we could not have issued is treated as absent: the client gets a new one.
    if uaid is not None and not _UAID.match(uaid):
        uaid = None
    return Hello(uaid.lower() if uaid else None, _broadcasts(message))


def _parse_register(message: dict[str, Any]) -> Register:
    raw_channel = message.get("channelID")
    channel_id = canonical_channel_id(raw_channel)
    if channel_id is None:
        echo = raw_channel if isinstance(raw_channel, str) else ""
        return Register(echo[:64], error="channelID must be a UUID")
    key = message.get("key")
    if key is not None and (not isinstance(key, str) or not key):
        return Register(channel_id, error="key must be a base64url string")
    return Register(channel_id, key)


def _parse_unregister(message: dict[str, Any]) -> Unregister:
    raw_channel = message.get("channelID")
    channel_id = canonical_channel_id(raw_channel)
    code = message.get("code")
    code = code if isinstance(code, int) and not isinstance(code, bool) else None
    if channel_id is None:
        echo = raw_channel if isinstance(raw_channel, str) else ""
        return Unregister(echo[:64], code, error="channelID must be a UUID")
    return Unregister(channel_id, code)


def _parse_ack(message: dict[str, Any]) -> Ack:
    updates = message.get("updates")
    if not isinstance(updates, list):
        raise FrameError(CLOSE_POLICY_VIOLATION, "ack needs an updates list")
    parsed: list[AckUpdate] = []
    for update in updates[:_MAX_UPDATES]:
        if not isinstance(update, dict):
            continue
        channel_id = canonical_channel_id(update.get("channelID"))
        version = update.get("version")
        code = update.get("code", 100)
        if channel_id is None or not isinstance(version, str) or not version:
            continue
        if not isinstance(code, int) or isinstance(code, bool):
            code = 100
        parsed.append(AckUpdate(channel_id, version[:128], code))
    return Ack(tuple(parsed))


def _parse_nack(message: dict[str, Any]) -> Nack:
    version = _string(message, "version") or ""
    code = message.get("code")
    return Nack(version[:128], code if isinstance(code, int) else None)


# Frames the service sends ---------------------------------------------------------------


def _frame(payload: dict[str, Any]) -> str:
    return json.dumps(payload, separators=(",", ":"))


def hello_reply(uaid: str, broadcasts: dict[str, Any] | None = None) -> str:
    """The answer to `hello`: the user agent's id and the broadcasts on offer."""
    return _frame(
        {
            "messageType": "hello",
            "uaid": uaid,
            "status": 200,
            "use_webpush": True,
            "broadcasts": broadcasts or {},
        }
    )


def register_reply(channel_id: str, endpoint: str | None, status: int = 200) -> str:
    """The answer to `register`: the push endpoint, or an error status."""
    payload: dict[str, Any] = {"messageType": "register", "channelID": channel_id}
    payload["status"] = status
    if endpoint is not None:
        payload["pushEndpoint"] = endpoint
    return _frame(payload)


def unregister_reply(channel_id: str, status: int = 200) -> str:
    """The answer to `unregister`."""
    return _frame({"messageType": "unregister", "channelID": channel_id, "status": status})


def broadcast_reply(broadcasts: dict[str, Any]) -> str:
    """Broadcast versions for ids a client follows (and `errors` for unknown ids)."""
    return _frame({"messageType": "broadcast", "broadcasts": broadcasts})


_PLAIN = re.compile(r"[0-9a-f-]+")  # what canonical channel ids and message ids are made of
_AES128GCM_HEADERS = _frame({"encoding": "aes128gcm"})


def notification_frame(channel_id: str, version: str, body: bytes, headers: dict[str, str]) -> str:
    """A push message for the user agent. Carries no TTL, Topic, Urgency or VAPID data."""
    if not _PLAIN.fullmatch(channel_id + version):
        payload: dict[str, Any] = {
            "messageType": "notification",
            "channelID": channel_id,
            "version": version,
        }
        if body:
            payload["data"] = b64url_encode(body)
            payload["headers"] = headers
        return _frame(payload)
    # The frame sent most: its ids and base64url data need no escaping, so it is
    # assembled directly (the JSON encoder was 5 % of the service's time under load).
    head = f'{{"messageType":"notification","channelID":"{channel_id}","version":"{version}"'
    if not body:
        return head + "}"
    encoded = _AES128GCM_HEADERS if headers == {"encoding": "aes128gcm"} else _frame(headers)
    return f'{head},"data":"{b64url_encode(body)}","headers":{encoded}}}'


PING_REPLY = "{}"
