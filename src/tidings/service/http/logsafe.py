"""Client-chosen text made safe for a log line (the servers log what clients send).

`tidings.service.logs.escape` is this function, kept there for the service's modules.
"""

from __future__ import annotations

import re

__all__ = ["escape"]


def escape(value: object, limit: int = 200) -> str:
    """A client-supplied value made safe for a text log line: cut to `limit`, and every
    control or invisible separator character (CR, LF, ESC, NEL, U+2028...), backslash
    and quote written as a Python escape, so no client can end a line, forge another,
    close a quoted field or colour a terminal. Use it on everything a client chose."""
    text = value if isinstance(value, str) else str(value)
    cut = len(text) > limit
    if cut:
        text = text[:limit]
    if not _PLAIN.fullmatch(text):
        text = "".join(_escape_char(char) for char in text)
    return text + "..." if cut else text


_PLAIN = re.compile(r"[A-Za-z0-9 ._:/+=,;@()\[\]{}<>!?#$%&*^~|-]*")


def _escape_char(char: str) -> str:
    if char in "\\\"'":
        return "\\" + char
    if char.isprintable():
        return char
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"
