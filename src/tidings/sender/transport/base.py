"""The seam between `Sender` and the network: what a transport is and answers."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, Literal, NoReturn, Protocol, TypeVar, runtime_checkable

VerifyOption = bool | str | ssl.SSLContext
ProtocolT = TypeVar("ProtocolT", bound=asyncio.Protocol)
# A push service answers with a short head and body: more is refused, never buffered.
MAX_HEAD = 64 * 1024
MAX_BODY = 1024 * 1024


@dataclass(slots=True)
class Response:
    """A push service's answer: status, headers (lower-case names), body, protocol."""

    status: int
    headers: dict[str, str]
    body: bytes
    http_version: str


class FrozenHeaders(dict[str, str]):
    """Request headers that no one changes once made, shared by many requests (a fan-out's
    requests to one origin): a transport may encode them once and keep the bytes
    (`h1_block`, the HTTP/1.1 header lines) instead of encoding them per request.

    Changing them raises TypeError; `dict(headers)` is a changeable copy.
    """

    __slots__ = ("h1_block",)

    def __init__(self, headers: Mapping[str, str]) -> None:
        super().__init__(headers)
        self.h1_block: bytes | None = None

    def _refuse(self, *args: object, **kwargs: object) -> NoReturn:
        raise TypeError("FrozenHeaders cannot be changed: change a copy, dict(headers)")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = _refuse
    __ior__ = _refuse

    def __reduce__(self) -> tuple[type[FrozenHeaders], tuple[dict[str, str]]]:
        return FrozenHeaders, (dict(self),)  # copy and pickle without item assignment


class TransportError(Exception):
    """No usable HTTP answer: connect, TLS, reset, protocol error or timeout."""

    def __init__(self, message: str, *, safe_to_retry: bool = True) -> None:
        super().__init__(message)
        self.safe_to_retry = safe_to_retry
        """False when the request may have reached the service (a retry may duplicate it)."""


class Transport(Protocol):
    """What `Sender` needs from HTTP: one request, and closing."""

    async def request(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes
    ) -> Response:
        """Send one request and return the complete answer, or raise TransportError."""
        ...

    async def aclose(self) -> None:
        """Close every connection."""
        ...


@runtime_checkable
class DeadlineTransport(Transport, Protocol):
    """A transport that bounds each exchange itself, given `timeout`.

    `Sender` otherwise wraps every request in `asyncio.timeout`, a timer armed and
    cancelled per request; a transport that keeps deadlines its own cheaper way (one
    timer per origin) says so with `keeps_deadlines`.
    """

    keeps_deadlines: ClassVar[Literal[True]]

    async def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes,
        *,
        timeout: float | None = None,
    ) -> Response:
        """Like `Transport.request`; TimeoutError once `timeout` seconds have passed."""
        ...


def make_ssl_context(verify: VerifyOption = True, *, http2: bool = True) -> ssl.SSLContext:
    """A client TLS context: system CAs (True), none (False), a CA file path, or yours."""
    if isinstance(verify, ssl.SSLContext):
        ctx = verify
    elif verify is False:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    elif verify is True:
        ctx = ssl.create_default_context()
    elif isinstance(verify, str):
        ctx = ssl.create_default_context(cafile=verify)
    else:
        raise TypeError(f"verify must be a bool, a CA file path or an SSLContext, not {verify!r}")
    ctx.set_alpn_protocols(["h2", "http/1.1"] if http2 else ["http/1.1"])
    return ctx
