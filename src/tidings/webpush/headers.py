"""RFC 8030 push request headers: TTL (§5.2), Urgency (§5.3) and Topic (§5.4).

Each parser takes the raw field value (several field lines already joined with ", ")
and returns a typed value or raises HeaderError naming the header.
"""

from __future__ import annotations

import enum
import re

from tidings.webpush.errors import HeaderError

__all__ = [
    "MAX_TTL",
    "TOPIC_MAX_LENGTH",
    "URGENCIES",
    "Urgency",
    "parse_topic",
    "parse_ttl",
    "parse_urgency",
]

MAX_TTL = 2**31
"""RFC 8030 §5.2 with RFC 9110 §5.3 delta-seconds: larger values count as 2**31."""
TOPIC_MAX_LENGTH = 32

_OWS = " \t"
_DIGITS = re.compile(r"[0-9]+")
_TOPIC = re.compile(r"[A-Za-z0-9_-]{1,32}")


def parse_ttl(value: str | None) -> int:
    """The TTL in seconds from `1*DIGIT`; huge values saturate at 2**31."""
    if value is None or not value.strip(_OWS):
        raise HeaderError("TTL", "missing; a push request must say how many seconds to keep it")
    text = value.strip(_OWS)
    if "," in text:
        raise HeaderError("TTL", "must be a single value, got several")
    if _DIGITS.fullmatch(text) is None:
        raise HeaderError("TTL", f"must be whole seconds (digits 0-9 only), got {text!r}")
    significant = text.lstrip("0")
    if len(significant) > 10:  # more than 9,999,999,999: saturate without building a huge int
        return MAX_TTL
    return min(int(significant or "0"), MAX_TTL)


class Urgency(enum.StrEnum):
    """RFC 8030 §5.3 urgency of a push message, from very-low to high."""

    VERY_LOW = "very-low"
    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"

    @property
    def rank(self) -> int:
        """Order of the urgency: very-low 0, low 1, normal 2, high 3."""
        return _RANK[self]

    def admits(self, other: Urgency) -> bool:
        """Whether a user agent asking for `self` receives messages of urgency `other`."""
        return _RANK[other] >= _RANK[self]


_RANK = {Urgency.VERY_LOW: 0, Urgency.LOW: 1, Urgency.NORMAL: 2, Urgency.HIGH: 3}
_URGENCY_BY_NAME = {u.value: u for u in Urgency}
URGENCIES = tuple(_URGENCY_BY_NAME)
"""RFC 8030's urgencies as written in the header, lowest first."""


def parse_urgency(value: str | None) -> Urgency:
    """The urgency of a push; absent means normal; matched case-insensitively (RFC 5234 §2.3)."""
    if value is None:
        return Urgency.NORMAL
    text = value.strip(_OWS)
    if not text:
        return Urgency.NORMAL
    if "," in text:
        raise HeaderError("Urgency", "must be a single value, got several")
    urgency = _URGENCY_BY_NAME.get(text.lower()) if text.isascii() else None
    if urgency is None:
        raise HeaderError("Urgency", f"must be one of very-low, low, normal, high; got {text!r}")
    return urgency


def parse_topic(value: str | None) -> str | None:
    """The topic of a push: 1 to 32 characters of the base64url alphabet, or None."""
    if value is None:
        return None
    text = value.strip(_OWS)
    if "," in text:
        raise HeaderError("Topic", "must be a single value, got several")
    if not text:
        raise HeaderError("Topic", "is empty; it must be 1 to 32 base64url characters")
    if len(text) > TOPIC_MAX_LENGTH:
        raise HeaderError("Topic", f"is {len(text)} characters long; at most 32 are allowed")
    if _TOPIC.fullmatch(text) is None:
        raise HeaderError(
            "Topic", f"may hold only A-Z a-z 0-9 - and _ (the base64url alphabet), got {text!r}"
        )
    return text
