"""The push element's decisions, without I/O: what a message is, how it is pushed.

- `classify(message, element)`: a runtime registration, an unregistration, a response
  travelling back to a caller, or a message for a hyperty to deliver.
- `parse_registration(message, domain)`: the runtime, its push subscription and hyperties;
  `check_endpoint(endpoint, origins)`: only push services the element trusts.
- `parse_allocation(message, limit)`: how many hyperty addresses a runtime asks for.
- `plan_push(message)`: the payload (the reTHINK message itself, slimmed when too big),
  `Urgency`, `TTL` and the `Topic` derived from the data object URL.
"""

from __future__ import annotations

import base64
import enum
import hashlib
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from tidings.hyperty.addresses import (
    AddressError,
    is_data_object,
    is_hyperty,
    is_runtime,
    object_url,
    parse_address,
)
from tidings.hyperty.message import Message, MessageError

__all__ = [
    "CONNECTION_SCHEMA",
    "DEFAULT_TTL",
    "MAX_PLAINTEXT",
    "MessageTooLarge",
    "PushPlan",
    "Registration",
    "Route",
    "check_endpoint",
    "classify",
    "is_cancel",
    "is_invitation",
    "parse_allocation",
    "parse_registration",
    "plan_push",
    "slim",
    "topic_for",
    "urgency_for",
]

#: The most plaintext one Web Push message carries (RFC 8291 in a 4096-byte body), as
#: `tidings.webpush.MAX_PLAINTEXT`; repeated here so a woken runtime need not load the
#: crypto modules.
MAX_PLAINTEXT = 3993
#: Seconds a pushed message is kept by the push service: a stale call is useless.
DEFAULT_TTL = 60
#: The schema name that marks a Connection data object (a call), whatever the catalogue.
CONNECTION_SCHEMA = "Connection"


class Route(enum.Enum):
    """What the push element does with a message it is handed."""

    ALLOCATE = "allocate"  # create from the runtime's address-allocation to the msg node's
    REGISTER = "register"  # create from hyperty-runtime://.../registry to the element
    UNREGISTER = "unregister"  # delete from the runtime's registry to the element
    RESPONSE = "response"  # an answer from a callee, back to the caller
    DELIVER = "deliver"  # a message for a hyperty: inbox if connected, else push


def classify(message: Message, element: str, allocation: str | None = None) -> Route:
    """Which `Route` a message takes at the element `domain://push.<domain>`.

    `allocation` is the message node's address allocation function the element serves
    (`domain://msg-node.<domain>/address-allocation`). MessageError when the element has
    nothing to do with the message.
    """
    if message.is_response:
        return Route.RESPONSE
    if allocation is not None and allocation in message.recipients:
        if message.type != "create":
            raise MessageError("type", f"address allocation takes create, not {message.type}")
        if not (is_runtime(message.from_) and message.from_.endswith("/address-allocation")):
            raise MessageError(
                "from",
                "allocation requests come from a runtime's address allocation function "
                f"(hyperty-runtime://<domain>/<id>/address-allocation), got {message.from_!r}",
            )
        return Route.ALLOCATE
    if element in message.recipients:
        if message.type not in ("create", "delete"):
            raise MessageError(
                "type",
                f"the push element takes create (register) and delete (unregister), "
                f"not {message.type}",
            )
        if not (is_runtime(message.from_) and message.from_.endswith("/registry")):
            raise MessageError(
                "from",
                f"registrations come from a runtime's registry "
                f"(hyperty-runtime://<domain>/<id>/registry), got {message.from_!r}",
            )
        return Route.REGISTER if message.type == "create" else Route.UNREGISTER
    if is_hyperty(message.target):
        return Route.DELIVER
    raise MessageError(
        "to",
        f"the push element delivers to hyperty:// addresses or takes registrations at "
        f"{element}, got {message.target!r}",
    )


@dataclass(frozen=True)
class Registration:
    """A runtime's registration: where to push, and which hyperties it hosts."""

    runtime: str
    subscription: dict[str, Any] | None
    """None: the runtime holds its message connection and is not pushed to."""
    hyperties: tuple[str, ...]
    user: str | None = None


def runtime_of(function: str) -> str:
    """`hyperty-runtime://d/id/registry` (or any function of it) -> `hyperty-runtime://d/id`."""
    address = parse_address(function)
    return f"{address.scheme}://{address.domain}/{address.segments[0]}"


def check_endpoint(endpoint: str, origins: Collection[str]) -> None:
    """MessageError unless the push endpoint is at one of the trusted push service origins.

    The element POSTs to the endpoint a runtime gives: without this check any runtime
    could make it send requests anywhere (server-side request forgery).
    """
    from tidings.webpush.vapid import vapid_audience

    try:
        origin = vapid_audience(endpoint)
    except ValueError:
        origin = None
    if origin is None or origin not in origins:
        raise MessageError(
            "body.value.subscription.endpoint",
            "is not at a push service this element trusts "
            f"(trusted: {', '.join(sorted(origins)) or 'none'})",
        )


def parse_allocation(message: Message, limit: int) -> int:
    """How many hyperty addresses an allocation request asks for (1 to `limit`)."""
    scheme = message.body.get("scheme", "hyperty")
    if scheme != "hyperty":
        raise MessageError(
            "body.scheme",
            f"this element allocates hyperty addresses only, not {scheme!r} (data object "
            "URLs belong to the runtime that first sends from them)",
        )
    value = message.value
    number = value.get("number") if isinstance(value, dict) else None
    if isinstance(number, bool) or not isinstance(number, int) or not 1 <= number <= limit:
        raise MessageError("body.value.number", f"must be an integer from 1 to {limit}")
    return number


def parse_registration(message: Message, domain: str) -> Registration:
    """The registration carried by a `create`; MessageError naming what is wrong."""
    value = message.value
    if not isinstance(value, dict):
        raise MessageError("body.value", "a registration carries {subscription, hyperties, user}")
    subscription = value.get("subscription")
    if subscription is not None:
        if not isinstance(subscription, dict):
            raise MessageError(
                "body.value.subscription", "must be the PushSubscription JSON {endpoint, keys}"
            )
        from tidings.webpush.errors import InvalidSubscription
        from tidings.webpush.subscription import Subscription

        try:
            Subscription.from_json(subscription)
        except InvalidSubscription as exc:
            raise MessageError("body.value.subscription", str(exc)) from None
    hyperties = value.get("hyperties")
    if not isinstance(hyperties, list) or not all(isinstance(h, str) for h in hyperties):
        raise MessageError("body.value.hyperties", "must be a list of hyperty:// addresses")
    for index, hyperty in enumerate(hyperties):
        if not is_hyperty(hyperty):
            raise MessageError(f"body.value.hyperties[{index}]", f"{hyperty!r} is not hyperty://")
        if parse_address(hyperty).domain != domain:
            raise MessageError(
                f"body.value.hyperties[{index}]",
                f"{hyperty!r} is not in this push element's domain {domain!r}",
            )
    user = value.get("user")
    if user is not None and not isinstance(user, str):
        raise MessageError("body.value.user", "must be a user:// address")
    runtime = runtime_of(message.from_)
    if parse_address(runtime).domain != domain:
        raise MessageError("from", f"the runtime {runtime!r} is not in the domain {domain!r}")
    return Registration(
        runtime,
        None if subscription is None else dict(subscription),
        tuple(dict.fromkeys(hyperties)),
        user,
    )


# Pushing ------------------------------------------------------------------------------------


def topic_for(url: str) -> str:
    """The `Topic` of every push about a data object: 32 base64url characters.

    Derived from the object URL (sub-resources such as `/subscription` stripped), so the
    invitation and the cancel of one call share it and the cancel replaces a queued
    invitation at the push service. A hash, so the URL itself is not exposed.
    """
    digest = hashlib.sha256(object_url(url).encode()).digest()[:24]
    return base64.urlsafe_b64encode(digest).decode("ascii")  # 24 bytes: 32 chars, no padding


def _object_of(message: Message) -> str | None:
    """The data object a message concerns: its `from` (or `to`, for responses)."""
    candidates: Sequence[str] = (message.from_, *message.recipients)
    for candidate in candidates:
        if is_data_object(candidate):
            try:
                return object_url(candidate)
            except AddressError:
                return None
    return None


def _is_connection(message: Message) -> bool:
    schema = message.schema or ""
    if schema.rstrip("/").rsplit("/", 1)[-1] == CONNECTION_SCHEMA:
        return True
    data_object = _object_of(message)
    return data_object is not None and data_object.startswith("connection://")


def is_invitation(message: Message) -> bool:
    """A call invitation: `create` of a Connection object to a hyperty."""
    return message.type == "create" and _is_connection(message)


def is_cancel(message: Message) -> bool:
    """The caller's `delete` of a data object sent to a hyperty (a call cancelled)."""
    return message.type == "delete" and is_data_object(message.from_)


def urgency_for(message: Message) -> str:
    """`high` for call invitations and their cancel, `normal` otherwise."""
    if is_invitation(message) or (is_cancel(message) and _is_connection(message)):
        return "high"
    return "normal"


class MessageTooLarge(MessageError):
    """The message does not fit in one push even slimmed."""

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(
            "message",
            f"{size} bytes of JSON even without the identity assertion, over the "
            f"{limit}-byte limit of one Web Push message (RFC 8291); keep bulky data "
            f"(SDP, pictures) out of the invitation and send it as updates",
        )


def slim(message: Message) -> Message | None:
    """The message without `body.identity.assertion`, or None when it has none.

    The identity provider and the user profile stay, so the woken runtime can still show
    who calls; it asks for a fresh assertion before trusting the caller.
    """
    identity = message.identity
    if identity is None or "assertion" not in identity:
        return None
    kept = {k: v for k, v in identity.items() if k != "assertion"}
    return message.with_body(identity=kept)


@dataclass(frozen=True)
class PushPlan:
    """How one message goes out as a Web Push."""

    message: Message
    payload: bytes
    ttl: int
    urgency: str
    topic: str | None
    slimmed: bool = False


def plan_push(message: Message, *, ttl: int = DEFAULT_TTL, limit: int = MAX_PLAINTEXT) -> PushPlan:
    """Payload and headers for `message`; MessageTooLarge when it cannot fit."""
    payload = message.encoded()
    slimmed = False
    if len(payload) > limit:
        smaller = slim(message)
        if smaller is None or len(smaller.encoded()) > limit:
            size = len((smaller or message).encoded())
            raise MessageTooLarge(size, limit)
        message, payload, slimmed = smaller, smaller.encoded(), True
    data_object = _object_of(message)
    topic = None if data_object is None else topic_for(data_object)
    return PushPlan(message, payload, ttl, urgency_for(message), topic, slimmed)
