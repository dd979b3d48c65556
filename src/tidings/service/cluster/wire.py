"""The messages nodes send each other over the cluster bus, encoded and checked (no I/O).

Anyone who can publish on the Redis channels can put bytes in front of a node, so a
bus message is untrusted input: `decode_bus_message` checks every field against an
explicit type and range and raises `BadBusMessage` (with a short reason, never the
payload) for anything else. The kinds:

- `{"t": "m", ...}`: a stored (or TTL 0) message for a user agent connected here;
- `{"t": "p", "ua": <uaid>}`: stored messages of that user agent may be waiting;
- `{"t": "all"}`: stored messages of any user agent here may be waiting;
- `{"t": "b"}`: the Megaphone broadcasts changed; read them again from the store;
- `{"t": "s", "ua": <uaid>, "st": <stamp>}`: a newer connection of that user agent
  (said hello at `st`, milliseconds) is held by another node now: close yours;
- `{"t": "w", "ua": <uaid>, "id": <message id>}`: its sender deleted that message:
  a connection here that holds it unsent must not send it;
- `{"t": "o", <a message's fields>, "n": <node>, "w": <ms>}`: a live offer (a push not
  stored yet, no Topic, no receipt): write it to the user agent's quick connection here
  and answer node `n` within `w` milliseconds whether it was acknowledged (live_offers.py);
- `{"t": "a", "id": <message id>, "o": <0|1>, "c": <code or null>}`: the answer to a live
  offer: written to the connection or not (`o`), acknowledged with code `c` in time or not.

A node that does not know a kind drops it as a bad message: an offer's sender then
hears nothing, and stores the push once its wait is over.

A bus payload is one of these objects, or a JSON array of them (the messages a node
routed here in one round trip, in order; see `decode_bus_messages`).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from dataclasses import dataclass
from typing import Any

from tidings.service.store import StoredMessage
from tidings.webpush.headers import MAX_TTL, TOPIC_MAX_LENGTH, Urgency

__all__ = [
    "MAX_BUS_MESSAGE",
    "BadBusMessage",
    "BroadcastsChanged",
    "BusEvent",
    "Deliver",
    "LiveOffer",
    "OfferAnswer",
    "Poke",
    "PokeAll",
    "ReceiptsQueued",
    "Superseded",
    "Withdrawn",
    "decode_bus_message",
    "decode_bus_messages",
    "encode_broadcasts_changed",
    "encode_message",
    "encode_offer",
    "encode_offer_answer",
    "encode_poke",
    "encode_poke_all",
    "encode_receipts_queued",
    "encode_superseded",
    "encode_withdrawn",
]

MAX_BODY = 1 << 20  # the largest body the service accepts (config max_body's ceiling)
MAX_BUS_MESSAGE = 2 * MAX_BODY  # base64 of the body plus every other field, with room
MAX_BUS_BATCH = 1024  # objects in one array payload (a sender's batch is at most 256)
MAX_HEADERS = 8
MAX_HEADER_NAME = 64
MAX_HEADER_VALUE = 16 * 1024  # an HTTP/1.1 request head's limit (h1.MAX_HEADER_BYTES)
MAX_TIME = 1e11  # seconds since the epoch (year 5138): a bigger stamp is not a time
_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
_TOPIC = re.compile(rf"[A-Za-z0-9_-]{{1,{TOPIC_MAX_LENGTH}}}")
_HEADER_NAME = re.compile(rf"[a-z0-9_-]{{1,{MAX_HEADER_NAME}}}")
_URGENCIES = frozenset(u.value for u in Urgency)
_MESSAGE_FIELDS = frozenset({"t", "id", "ua", "ch", "b", "ttl", "c", "e", "u", "tp", "h", "r"})
_OPTIONAL_FIELDS = frozenset({"tr"})  # the W3C traceparent of a traced push
_OFFER_FIELDS = frozenset({"n", "w"})
MAX_OFFER_WAIT_MS = 10_000  # config live_ack_wait's ceiling, in milliseconds
MAX_ACK_CODE = 1 << 31  # a WebSocket ack's code is any JSON integer; answers carry small ones
_TRACEPARENT = re.compile(r"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")


class BadBusMessage(ValueError):
    """A bus message that does not follow the schema; the text says which rule failed."""


@dataclass(frozen=True)
class Deliver:
    """Offer this message to the user agent's connection here."""

    message: StoredMessage


@dataclass(frozen=True)
class Poke:
    """Offer the stored messages of one user agent again."""

    uaid: str


@dataclass(frozen=True)
class PokeAll:
    """Offer the stored messages of every user agent here again."""


@dataclass(frozen=True)
class ReceiptsQueued:
    """Node `node` queued a receipt for `receipt_id`: monitors of it here read now (their
    poll is slow when many are open)."""

    receipt_id: str
    node: str


@dataclass(frozen=True)
class BroadcastsChanged:
    """An operator changed a broadcast on another node: read them again."""


@dataclass(frozen=True)
class Superseded:
    """The user agent said hello on another node at `stamp` (ms): older connections of it
    here are stale (often dead on the user agent's side) and must not take its messages."""

    uaid: str
    stamp: int


@dataclass(frozen=True)
class Withdrawn:
    """The sender of message `message_id` of `uaid` deleted it (answered 204 elsewhere)."""

    uaid: str
    message_id: str


@dataclass(frozen=True)
class LiveOffer:
    """Write this push (not stored yet) to the user agent's quick connection here, wait
    at most `wait` seconds for its ack, and answer node `node` (`OfferAnswer`)."""

    message: StoredMessage
    node: str
    wait: float


@dataclass(frozen=True)
class OfferAnswer:
    """What became of this node's live offer of `message_id`: `offered` (written to the
    connection) and the ack's `code` if it came in time, else None."""

    message_id: str
    offered: bool
    code: int | None


BusEvent = (
    Deliver
    | Poke
    | PokeAll
    | BroadcastsChanged
    | Superseded
    | Withdrawn
    | ReceiptsQueued
    | LiveOffer
    | OfferAnswer
)


def encode_message(message: StoredMessage) -> str:
    """The bus form of a message (what `decode_bus_message` reads back)."""
    return json.dumps(_message_fields(message, "m"), separators=(",", ":"))


def encode_offer(message: StoredMessage, node: str, wait: float) -> str:
    """A live offer of `message` (no Topic, no receipt) from `node`, answered within
    `wait` seconds."""
    fields = _message_fields(message, "o")
    fields["n"] = node
    fields["w"] = round(wait * 1000)
    return json.dumps(fields, separators=(",", ":"))


def encode_offer_answer(message_id: str, offered: bool, code: int | None) -> str:
    return json.dumps(
        {"t": "a", "id": message_id, "o": int(offered), "c": code}, separators=(",", ":")
    )


def _message_fields(message: StoredMessage, kind: str) -> dict[str, Any]:
    return {
        "t": kind,
        "id": message.message_id,
        "ua": message.uaid,
        "ch": message.channel_id,
        "b": base64.b64encode(message.body).decode("ascii"),
        "ttl": message.ttl,
        "c": message.created_at,
        "e": message.expires_at,
        "u": message.urgency,
        "tp": message.topic,
        "h": message.headers,
        "r": message.receipt_id,
        **({"tr": message.traceparent} if message.traceparent else {}),
    }


def encode_poke(uaid: str) -> str:
    return json.dumps({"t": "p", "ua": uaid}, separators=(",", ":"))


def encode_poke_all() -> str:
    return json.dumps({"t": "all"}, separators=(",", ":"))


def encode_superseded(uaid: str, stamp: int) -> str:
    return json.dumps({"t": "s", "ua": uaid, "st": stamp}, separators=(",", ":"))


def encode_withdrawn(uaid: str, message_id: str) -> str:
    return json.dumps({"t": "w", "ua": uaid, "id": message_id}, separators=(",", ":"))


def encode_receipts_queued(receipt_id: str, node: str) -> str:
    return json.dumps({"t": "r", "r": receipt_id, "n": node}, separators=(",", ":"))


def encode_broadcasts_changed() -> str:
    return json.dumps({"t": "b"}, separators=(",", ":"))


def decode_bus_message(raw: bytes | str) -> BusEvent:
    """The event a bus payload stands for; `BadBusMessage` unless every field is valid."""
    return _event(_parse(raw))


def decode_bus_messages(raw: bytes | str) -> list[BusEvent | BadBusMessage]:
    """The events of a payload that is one object or an array of them, in order; each
    object that is not valid is its `BadBusMessage` in the list (the others still
    count). `BadBusMessage` for a payload that is neither, or an array of too many."""
    data = _parse(raw)
    if not isinstance(data, list):
        return [_event(data)]
    if len(data) > MAX_BUS_BATCH:
        raise BadBusMessage(f"an array of {len(data)} messages, over {MAX_BUS_BATCH}")
    events: list[BusEvent | BadBusMessage] = []
    for item in data:
        try:
            events.append(_event(item))
        except BadBusMessage as exc:
            events.append(exc)
    return events


def _parse(raw: bytes | str) -> Any:
    if len(raw) > MAX_BUS_MESSAGE:
        raise BadBusMessage(f"{len(raw)} bytes, over the {MAX_BUS_MESSAGE} byte limit")
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    except UnicodeDecodeError as exc:
        raise BadBusMessage(f"not UTF-8 (byte {exc.start})") from None
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:
        raise BadBusMessage(f"not JSON: {str(exc)[:80]}") from None


def _event(data: Any) -> BusEvent:
    if not isinstance(data, dict):
        raise BadBusMessage(f"a JSON {type(data).__name__}, not an object")
    kind = data.get("t")
    if kind == "m":
        return Deliver(_message(data))
    if kind == "p":
        _only(data, {"t", "ua"})
        return Poke(_id(data, "ua"))
    if kind == "all":
        _only(data, {"t"})
        return PokeAll()
    if kind == "b":
        _only(data, {"t"})
        return BroadcastsChanged()
    if kind == "s":
        _only(data, {"t", "ua", "st"})
        stamp = data.get("st")
        if type(stamp) is not int or not 0 <= stamp <= MAX_TIME * 1000:
            raise BadBusMessage("st: not a stamp in milliseconds since the epoch")
        return Superseded(_id(data, "ua"), stamp)
    if kind == "w":
        _only(data, {"t", "ua", "id"})
        return Withdrawn(_id(data, "ua"), _id(data, "id"))
    if kind == "r":
        _only(data, {"t", "r", "n"})
        return ReceiptsQueued(_id(data, "r"), _str(data, "n", 128))
    if kind == "o":
        return _offer(data)
    if kind == "a":
        _only(data, {"t", "id", "o", "c"})
        offered, code = data.get("o"), data.get("c")
        if offered not in (0, 1) or type(offered) is not int:
            raise BadBusMessage("o: not 0 or 1")
        if code is not None and (type(code) is not int or not abs(code) < MAX_ACK_CODE):
            raise BadBusMessage("c: not an acknowledgement's code")
        return OfferAnswer(_id(data, "id"), bool(offered), code)
    raise BadBusMessage(f"unknown kind {_short(kind)}")


def _refuse_constant(name: str) -> Any:
    raise BadBusMessage(f"{name} is not a JSON number")


def _offer(data: dict[str, Any]) -> LiveOffer:
    node = _str(data, "n", 128)
    wait = data.get("w")
    if type(wait) is not int or not 0 <= wait <= MAX_OFFER_WAIT_MS:
        raise BadBusMessage(f"w: not a wait in 0..{MAX_OFFER_WAIT_MS} milliseconds")
    message = _message(data, _OFFER_FIELDS)
    if message.topic is not None or message.receipt_id is not None or message.ttl == 0:
        raise BadBusMessage("an offer of a push with a Topic, a receipt or TTL 0")
    return LiveOffer(message, node, wait / 1000)


def _message(data: dict[str, Any], extra: frozenset[str] = frozenset()) -> StoredMessage:
    _only(data, _MESSAGE_FIELDS | _OPTIONAL_FIELDS | extra)
    missing = sorted(_MESSAGE_FIELDS - data.keys())
    if missing:
        raise BadBusMessage(f"missing fields {', '.join(missing)}")
    body_text = _str(data, "b", 4 * ((MAX_BODY + 2) // 3))
    try:
        body = base64.b64decode(body_text, validate=True)
    except (binascii.Error, ValueError):
        raise BadBusMessage("b: not base64") from None
    ttl = data["ttl"]
    if type(ttl) is not int or not 0 <= ttl <= MAX_TTL:
        raise BadBusMessage(f"ttl: not a whole number of seconds in 0..{MAX_TTL}")
    created_at, expires_at = _time(data, "c"), _time(data, "e")
    urgency = data["u"]
    if urgency not in _URGENCIES:
        raise BadBusMessage(f"u: unknown urgency {_short(urgency)}")
    topic = data["tp"]
    if topic is not None and (not isinstance(topic, str) or not _TOPIC.fullmatch(topic)):
        raise BadBusMessage("tp: not a topic")
    receipt_id = None if data["r"] is None else _id(data, "r")
    traceparent = data.get("tr")
    if traceparent is not None and (
        not isinstance(traceparent, str) or not _TRACEPARENT.fullmatch(traceparent)
    ):
        raise BadBusMessage("tr: not a traceparent")
    return StoredMessage(
        message_id=_id(data, "id"),
        uaid=_id(data, "ua"),
        channel_id=_id(data, "ch"),
        body=body,
        ttl=ttl,
        created_at=created_at,
        expires_at=expires_at,
        urgency=urgency,
        topic=topic,
        headers=_headers(data["h"]),
        receipt_id=receipt_id,
        traceparent=traceparent,
    )


def _only(data: dict[str, Any], allowed: frozenset[str] | set[str]) -> None:
    extra = data.keys() - allowed
    if extra:
        raise BadBusMessage(f"unknown fields {_short(sorted(extra)[:3])}")


def _str(data: dict[str, Any], name: str, limit: int) -> str:
    value = data.get(name)
    if not isinstance(value, str):
        raise BadBusMessage(f"{name}: a {type(value).__name__}, not a string")
    if len(value) > limit:
        raise BadBusMessage(f"{name}: {len(value)} characters, over {limit}")
    return value


def _id(data: dict[str, Any], name: str) -> str:
    value = _str(data, name, 128)
    if not _ID.fullmatch(value):
        raise BadBusMessage(f"{name}: not an id")
    return value


def _time(data: dict[str, Any], name: str) -> float:
    value = data[name]
    if type(value) not in (int, float) or not math.isfinite(value) or not 0 <= value <= MAX_TIME:
        raise BadBusMessage(f"{name}: not a time in seconds since the epoch")
    return float(value)


def _headers(value: object) -> dict[str, str]:
    if not isinstance(value, dict) or len(value) > MAX_HEADERS:
        raise BadBusMessage(f"h: not an object of at most {MAX_HEADERS} headers")
    headers: dict[str, str] = {}
    for name, text in value.items():
        if not _HEADER_NAME.fullmatch(name):
            raise BadBusMessage("h: a header name that is not a lower-case name")
        if not isinstance(text, str) or len(text) > MAX_HEADER_VALUE or not text.isprintable():
            raise BadBusMessage(f"h: the value of {name} is not a short printable string")
        headers[name] = text
    return headers


def _short(value: object) -> str:
    """A value for a reason: its repr, cut (repr escapes control characters)."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
