"""RFC 8030 over HTTP/2 as a `Transport`: subscribe, monitor by server push, DELETE to ack.

The user agent keeps one subscription set (the service's name for one user agent):
the first subscribe creates it, later ones name it in a `Link` with rel
`urn:ietf:params:push:set`, and one long-lived `GET <set>` carries the messages of every
subscription as PUSH_PROMISEs. The set URL is the session id the user agent stores; a
subscription's handle is its push message subscription URL (the `Location` of the
subscribe). Each pushed message becomes a `Delivery` whose `message_id` is the URL of
the push message resource, and acknowledging it is a DELETE of that URL.

Connecting first asks for the set with `Prefer: wait=0`: the service pushes what is
pending and answers 204 while the set exists, 404 (or 410) once it is gone. A gone set
makes the session id empty, so the user agent renews every subscription into a new set
and fires `pushsubscriptionchange`, as for a forgotten uaid over the WebSocket. Then the
long GET is opened; a message pushed twice on one connection (the long GET pushes again
what is not acknowledged yet) is handed over once. `set_urgency` opens the GET again
with an `Urgency` header (RFC 8030 section 5.3). 307 and 308 answers are followed on
every request, and HTTP/2 PINGs find dead connections.

The connection is `tidings.useragent.rfc8030_connection`; the URL helpers and header
mapping are plain functions in `tidings.useragent.rfc8030_wire`
(re-exported here), tested without I/O.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Sequence

from tidings.useragent.rfc8030_connection import Http2Connection
from tidings.useragent.rfc8030_wire import (
    URGENCY_LEVELS,
    check_urgency,
    delivery_headers,
    is_rfc8030_url,
    rfc8030_url,
    subscribe_url,
)
from tidings.webpush.links import REL_PUSH, REL_SET, link_target

__all__ = [
    "REL_PUSH",
    "REL_SET",
    "URGENCY_LEVELS",
    "Http2Connection",
    "Http2Transport",
    "check_urgency",
    "delivery_headers",
    "is_rfc8030_url",
    "link_target",
    "rfc8030_url",
    "subscribe_url",
]


class Http2Transport:
    """Opens RFC 8030 connections to one push service (h2 over TLS, or cleartext h2c).

    `url` is the service (`https://host/`, `h2://host/`, `http://host:port`,
    `h2c://host:port`); its `/subscribe` is the subscribe resource unless the URL has a
    path of its own. `ssl_context` (or `cafile`) says which certificates to trust.
    """

    def __init__(
        self,
        url: str,
        *,
        ssl_context: ssl.SSLContext | None = None,
        cafile: str | os.PathLike[str] | None = None,
        urgency: str | None = None,
        ping_interval: float = 300.0,
        ping_timeout: float = 10.0,
        open_timeout: float = 10.0,
        request_timeout: float = 10.0,
        max_redirects: int = 5,
    ) -> None:
        self.url = rfc8030_url(url)
        self.subscribe_url = subscribe_url(url)
        if ssl_context is None and cafile is not None:
            ssl_context = ssl.create_default_context(cafile=os.fspath(cafile))
        self.ssl_context = ssl_context
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.open_timeout = open_timeout
        self.request_timeout = request_timeout
        self.max_redirects = max_redirects
        self._urgency = check_urgency(urgency)
        self._live: set[Http2Connection] = set()

    @property
    def urgency(self) -> str | None:
        """The lowest urgency asked for (None: every message)."""
        return self._urgency

    async def set_urgency(self, level: str | None) -> None:
        """Ask for messages of at least `level` from now on (None: all of them again).

        Open connections re-issue their GET with the new `Urgency` header; messages held
        back meanwhile stay stored at the service and arrive once the level allows.
        """
        level = check_urgency(level)
        if level == self._urgency:
            return
        self._urgency = level
        for connection in list(self._live):
            await connection.reopen_monitor()

    async def connect(self, session_id: str | None, handles: Sequence[str]) -> Http2Connection:
        """Connect, check the set `session_id` (pushing what is pending), and monitor it."""
        connection = Http2Connection(self)
        try:
            await connection.open(session_id or None)
        except BaseException:
            await connection.close()
            raise
        self._live.add(connection)
        return connection

    def forget(self, connection: Http2Connection) -> None:
        """A connection that closed leaves the ones `set_urgency` re-opens."""
        self._live.discard(connection)
