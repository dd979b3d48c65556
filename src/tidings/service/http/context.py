"""What every connection of one server shares: the app, the settings, the open connections.

`h1` and `h2` both take a `ConnectionContext`; the server (`server.py`) makes it and
says how a connection changes protocol (`make_http2`, `make_websocket`), so neither
protocol module imports the other or the server.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import time
from typing import Protocol

from tidings.service.http.admission import ConnectionAdmission, Slot
from tidings.service.http.app import HttpApp
from tidings.service.http.logsafe import escape
from tidings.service.http.messages import Request, Response

__all__ = ["WRITE_BUFFER_LIMIT", "ConnectionContext", "Drainable", "Slot", "peer_of"]

access_log = logging.getLogger("tidings.access")
log = logging.getLogger("tidings.http")

WRITE_BUFFER_LIMIT = 1 << 20  # answers piling up unread: the client is not reading
REFUSAL_LOG_INTERVAL = 60.0  # seconds between two log lines about refused connections
REFUSAL_RETRY_AFTER = "10"  # seconds a client refused for its address is told to wait


def peer_of(transport: asyncio.BaseTransport) -> str:
    """The client's `address:port`, for logs and limits ("-" when the socket has none)."""
    peer = transport.get_extra_info("peername")
    return f"{peer[0]}:{peer[1]}" if peer else "-"


class Drainable(Protocol):
    def close_if_idle(self) -> None: ...


class ConnectionContext:
    """What every connection of one server shares."""

    def __init__(self, app: HttpApp, *, scheme: str) -> None:
        self.app = app
        self.scheme = scheme
        self.connections: set[Drainable] = set()
        self.busy_websockets: set[object] = set()  # handling frames right now
        settings = app.settings
        # To send a whole request (slow clients are cut off), and to send the next one.
        self.request_timeout = settings.request_timeout
        self.keepalive_timeout = settings.keepalive_timeout
        self.max_websocket_message = settings.max_websocket_message
        self.admission = ConnectionAdmission(
            per_address=settings.max_connections_per_address,
            max_connections=settings.max_connections,
            key_of=settings.connection_key or (lambda address: address),
            handshakes_per_address=settings.max_tls_handshakes_per_address,
        )
        # The admission's refusal counts (address, node, handshake) at the last log line.
        self._refusals_logged = (0, 0, 0)
        self._refusal_logged_at = -REFUSAL_LOG_INTERVAL
        self._date_second = 0
        self._date_line = b""

    def admit(self, transport: asyncio.BaseTransport, *, handshake: bool = False) -> Slot | None:
        """Count a new connection (`handshake`: a TLS one, just accepted); None: it was
        refused and closed at once."""
        peer = transport.get_extra_info("peername")
        address = peer[0] if isinstance(peer, tuple) and peer else ""
        slot = self.admission.open(address, handshake=handshake)
        if slot is None or slot.refused:
            self._log_refusals()
        if slot is None:
            transport.close()
        return slot

    def _log_refusals(self) -> None:
        """A warning at most once a minute, with the counts since the last one."""
        now = time.monotonic()
        if now - self._refusal_logged_at < REFUSAL_LOG_INTERVAL:
            return
        admission = self.admission
        address, node = admission.refused_address, admission.refused_node
        handshake = admission.refused_handshake
        log.warning(
            "connections refused since the last report: %d from addresses at "
            "max_connections_per_address (%s), %d with the process at max_connections "
            "(%s), %d from addresses at max_tls_handshakes_per_address (%s); %d open, "
            "%d of them in their TLS handshake",
            address - self._refusals_logged[0],
            admission.per_address,
            node - self._refusals_logged[1],
            admission.max_connections,
            handshake - self._refusals_logged[2],
            admission.handshakes_per_address,
            admission.total,
            admission.handshakes,
        )
        self._refusals_logged = (address, node, handshake)
        self._refusal_logged_at = now

    def refusal(self) -> Response:
        """The answer to a request on a connection over its address's cap."""
        response = self.app.plain_error(
            429,
            f"too many open connections from this address (at most "
            f"{self.admission.per_address}); close one or retry later",
        )
        response.headers["retry-after"] = REFUSAL_RETRY_AFTER
        return response

    @property
    def draining(self) -> bool:
        return self.app.draining

    def _refresh_date(self) -> None:
        now = int(time.time())
        if now != self._date_second:
            self._date_second = now
            self._date_line = email.utils.formatdate(now, usegmt=True).encode()

    def date_header(self) -> bytes:
        """`date: ...` CRLF, formatted at most once a second."""
        self._refresh_date()
        return b"date: " + self._date_line + b"\r\n"

    def date_pair(self) -> tuple[bytes, bytes]:
        """The date header as an HTTP/2 header pair."""
        self._refresh_date()
        return (b"date", self._date_line)

    def make_websocket(
        self, transport: asyncio.Transport, client: str, slot: Slot | None = None
    ) -> asyncio.Protocol:
        """The protocol of a connection upgraded to WebSocket (the server's to say)."""
        raise NotImplementedError

    def make_http2(self, slot: Slot | None = None) -> asyncio.Protocol:
        """The protocol of a connection that turned out to speak HTTP/2 (the server's)."""
        raise NotImplementedError

    def log_request(self, request: Request, status: int, started: float) -> None:
        if access_log.isEnabledFor(logging.INFO):
            access_log.info(
                '%s "%s %s HTTP/%s" %d %.1fms',
                escape(request.client),
                escape(request.method),
                escape(self.app.redact_path(request.path)),
                escape(request.http_version),
                status,
                (time.perf_counter() - started) * 1000,
                extra={
                    "request_id": request.request_id,
                    "message_id": request.message_id,
                    "trace_id": request.trace_id,
                },
            )
