"""The reTHINK message: `{"id", "type", "from", "to", "body"}`, read, checked and written.

    invite = Message.from_json(text)          # MessageError says which field is wrong
    answer = invite.response(486, "Busy Here")
    check_response(invite, answer)            # same id, from and to swapped
    answer.to_json()

`to` may be one URL (what implementations send) or a list (what the spec says): both are
read and written back as they came. The body stays a plain dict, since reTHINK bodies are
open; the fields in common use (`code`, `description`, `source`, `schema`, `value`,
`identity`, `resource`, `attribute`, `p2p`) are checked when present. No I/O.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal, cast, get_args

from tidings.hyperty.addresses import AddressError, parse_address

_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")

__all__ = [
    "MESSAGE_TYPES",
    "Message",
    "MessageError",
    "MessageType",
    "check_response",
]

MessageType = Literal[
    "create",
    "update",
    "delete",
    "read",
    "subscribe",
    "unsubscribe",
    "response",
    "forward",
    "execute",
]
MESSAGE_TYPES: tuple[str, ...] = get_args(MessageType)

#: Status texts for the codes this project sends (HTTP names; 486 from SIP, as reTHINK uses).
REASONS = {
    100: "Trying",
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    408: "Request Timeout",
    410: "Gone",
    409: "Conflict",
    413: "Payload Too Large",
    429: "Too Many Requests",
    480: "Temporarily Unavailable",
    486: "Busy Here",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


class MessageError(ValueError):
    """A message that does not follow the reTHINK model. `field` names the culprit."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}")


def _check_url(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise MessageError(where, f"must be an address string, got {type(value).__name__}")
    try:
        parse_address(value)
    except AddressError as exc:
        raise MessageError(where, str(exc)) from None
    return value


def _check_to(value: object) -> str | tuple[str, ...]:
    if isinstance(value, str):
        return _check_url(value, "to")
    if isinstance(value, list | tuple):
        if not value:
            raise MessageError("to", "the list of recipients is empty")
        return tuple(_check_url(item, f"to[{index}]") for index, item in enumerate(value))
    raise MessageError("to", f"must be an address or a list of addresses, got {_kind(value)}")


def _kind(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _check_body(body: object, message_type: str) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise MessageError("body", f"must be an object, got {_kind(body)}")
    code = body.get("code")
    if message_type == "response":
        if code is None:
            raise MessageError("body.code", "a response needs a status code (e.g. 200)")
    elif code is not None:
        raise MessageError(
            "body.code", f"only a response carries a status code, not a {message_type}"
        )
    if code is not None and (
        isinstance(code, bool) or not isinstance(code, int) or not 100 <= code <= 699
    ):
        raise MessageError("body.code", f"must be an integer status from 100 to 699, got {code!r}")
    for name in ("description", "schema", "attribute"):
        if name in body and not isinstance(body[name], str):
            raise MessageError(f"body.{name}", f"must be a string, got {_kind(body[name])}")
    for name in ("source", "resource"):
        if name in body:
            _check_url(body[name], f"body.{name}")
    if "p2p" in body and not isinstance(body["p2p"], bool):
        raise MessageError("body.p2p", f"must be true or false, got {_kind(body['p2p'])}")
    if "identity" in body:
        _check_identity(body["identity"])
    return body


def _check_identity(identity: object) -> None:
    if not isinstance(identity, dict):
        raise MessageError("body.identity", f"must be an object, got {_kind(identity)}")
    for name in ("idp", "assertion"):
        if name in identity and not isinstance(identity[name], str):
            raise MessageError(
                f"body.identity.{name}", f"must be a string, got {_kind(identity[name])}"
            )
    profile = identity.get("userProfile")
    if profile is None:
        return
    if not isinstance(profile, dict):
        raise MessageError("body.identity.userProfile", f"must be an object, got {_kind(profile)}")
    for name in ("username", "name", "picture"):
        if name in profile and not isinstance(profile[name], str):
            raise MessageError(
                f"body.identity.userProfile.{name}", f"must be a string, got {_kind(profile[name])}"
            )
    if "userURL" in profile:
        _check_url(profile["userURL"], "body.identity.userProfile.userURL")


@dataclass(frozen=True)
class Message:
    """One reTHINK message. Build with keywords; `from_` stands for the JSON `from`."""

    id: int
    type: MessageType
    from_: str
    to: str | tuple[str, ...]
    body: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict, compare=False)
    """Top-level fields beyond the five (kept so a message passes through unchanged)."""

    def __post_init__(self) -> None:
        if isinstance(self.id, bool) or not isinstance(self.id, int) or self.id < 0:
            raise MessageError("id", f"must be a non-negative integer, got {self.id!r}")
        if self.type not in MESSAGE_TYPES:
            raise MessageError(
                "type",
                f"{self.type!r} is not a reTHINK message type (one of {', '.join(MESSAGE_TYPES)})",
            )
        _check_url(self.from_, "from")
        object.__setattr__(self, "to", _check_to(self.to))
        _check_body(self.body, self.type)

    # Reading and writing ------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: object) -> Message:
        """A message from its JSON object; MessageError naming the first bad field."""
        if not isinstance(data, Mapping):
            raise MessageError("message", f"must be a JSON object, got {_kind(data)}")
        for name in ("id", "type", "from", "to"):
            if name not in data:
                raise MessageError(name, "is required")
        extra = {k: v for k, v in data.items() if k not in ("id", "type", "from", "to", "body")}
        message_type = data["type"]
        if not isinstance(message_type, str):
            raise MessageError("type", f"must be a string, got {_kind(message_type)}")
        to = data["to"]
        return cls(
            id=data["id"],
            type=cast(MessageType, message_type),
            from_=data["from"],
            to=tuple(to) if isinstance(to, list) else to,
            body=dict(data["body"]) if isinstance(data.get("body"), dict) else data.get("body", {}),
            extra=dict(extra),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> Message:
        """A message from JSON text (UTF-8 bytes accepted)."""
        try:
            data = json.loads(text)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise MessageError("message", f"is not JSON: {exc}") from None
        # JSON may escape a lone UTF-16 surrogate (\ud800): such a message could never be
        # written out as UTF-8 again (`encoded()`, the push payload), so it is refused here.
        if isinstance(text, str) or _SURROGATE_ESCAPE.search(text):
            try:
                json.dumps(data, ensure_ascii=False).encode()
            except UnicodeEncodeError:
                raise MessageError("message", "holds a lone UTF-16 surrogate") from None
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object: `to` as one string or a list, as it was built."""
        return {
            **self.extra,
            "id": self.id,
            "type": self.type,
            "from": self.from_,
            "to": list(self.to) if isinstance(self.to, tuple) else self.to,
            "body": self.body,
        }

    def to_json(self) -> str:
        """Compact JSON text (no spaces: what travels in a push counts every byte)."""
        return json.dumps(self.to_dict(), separators=(",", ":"), ensure_ascii=False)

    def encoded(self) -> bytes:
        """`to_json()` as UTF-8 bytes."""
        return self.to_json().encode()

    # The fields in common use -------------------------------------------------------------

    @property
    def recipients(self) -> tuple[str, ...]:
        """`to` as a tuple, whichever form it came in."""
        return self.to if isinstance(self.to, tuple) else (self.to,)

    @property
    def target(self) -> str:
        """The first (usually the only) recipient."""
        return self.recipients[0]

    @property
    def code(self) -> int | None:
        """`body.code` of a response."""
        code = self.body.get("code")
        return code if isinstance(code, int) else None

    @property
    def description(self) -> str | None:
        value = self.body.get("description")
        return value if isinstance(value, str) else None

    @property
    def source(self) -> str | None:
        """`body.source`: the hyperty that originally sent a message relayed by an object."""
        value = self.body.get("source")
        return value if isinstance(value, str) else None

    @property
    def schema(self) -> str | None:
        value = self.body.get("schema")
        return value if isinstance(value, str) else None

    @property
    def value(self) -> Any:
        return self.body.get("value")

    @property
    def identity(self) -> dict[str, Any] | None:
        value = self.body.get("identity")
        return value if isinstance(value, dict) else None

    @property
    def caller_name(self) -> str | None:
        """The display name in `body.identity.userProfile` (or its username)."""
        profile = (self.identity or {}).get("userProfile") or {}
        name = profile.get("name") or profile.get("username")
        return name if isinstance(name, str) else None

    @property
    def is_response(self) -> bool:
        return self.type == "response"

    @property
    def is_final(self) -> bool:
        """A response with a code of 200 or more (1xx are provisional, as in SIP)."""
        return self.is_response and (self.code or 0) >= 200

    # Making related messages --------------------------------------------------------------

    def response(
        self, code: int, description: str | None = None, value: Any = None, **fields: Any
    ) -> Message:
        """The response to this message: same id, `from` and `to` swapped, `body.code`.

        For a message sent to several recipients pass `from_=` the one answering.
        """
        if self.is_response:
            raise MessageError("type", "a response is not answered")
        answering = fields.pop("from_", self.target)
        body: dict[str, Any] = {"code": code}
        text = description if description is not None else REASONS.get(code)
        if text is not None:
            body["description"] = text
        if value is not None:
            body["value"] = value
        body.update(fields)
        return Message(self.id, "response", answering, self.from_, body)

    def with_body(self, **changes: Any) -> Message:
        """A copy with body fields replaced (a value of None removes the field)."""
        body = {**self.body, **changes}
        return replace(self, body={k: v for k, v in body.items() if v is not None})


def check_response(request: Message, response: Message) -> None:
    """MessageError unless `response` answers `request` (same id, from/to swapped, a code)."""
    if not response.is_response:
        raise MessageError("type", f"expected a response, got {response.type}")
    if response.id != request.id:
        raise MessageError(
            "id", f"a response keeps the request's id {request.id}, got {response.id}"
        )
    if response.to != request.from_ and request.from_ not in response.recipients:
        raise MessageError(
            "to",
            f"a response goes back to the request's sender {request.from_!r}, got {response.to!r}",
        )
    if response.from_ not in request.recipients:
        raise MessageError(
            "from",
            f"a response comes from the request's recipient {request.target!r}, "
            f"got {response.from_!r}",
        )
