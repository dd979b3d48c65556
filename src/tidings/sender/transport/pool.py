"""Pools per push-service origin and `PooledTransport`, the default transport."""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, ClassVar, Literal, cast
from urllib.parse import urlsplit

from tidings.sender.transport.base import (
    FrozenHeaders,
    ProtocolT,
    Response,
    TransportError,
    VerifyOption,
    make_ssl_context,
)
from tidings.sender.transport.http1 import Expiry, H1Connection
from tidings.sender.transport.http2 import H2Connection


class _OriginPool:
    """Connections to one origin: one HTTP/2 connection, or many HTTP/1.1 ones."""

    def __init__(
        self,
        scheme: str,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None,
        max_connections: int,
        connect_timeout: float,
        h2c: bool,
    ) -> None:
        self.scheme = scheme
        self.host = host
        self.port = port
        default_port = 443 if scheme == "https" else 80
        host_text = f"[{host}]" if ":" in host else host
        self.authority = host_text if port == default_port else f"{host_text}:{port}"
        self._h1_host = f" HTTP/1.1\r\nHost: {self.authority}\r\n".encode("latin-1")
        self.ssl_context = ssl_context
        self.max_connections = max_connections
        self.connect_timeout = connect_timeout
        self.protocol: str | None = "h2" if (scheme == "http" and h2c) else None
        if scheme == "http" and not h2c:
            self.protocol = "http/1.1"
        self.h2: H2Connection | None = None
        self._h2_opening: asyncio.Future[None] | None = None
        self.idle: deque[H1Connection] = deque()
        self.h1_count = 0
        self._h1_waiters: deque[asyncio.Future[None]] = deque()
        self._expiry: Expiry | None = None

    async def _connect(self, factory: Callable[[], ProtocolT]) -> ProtocolT:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, protocol = await loop.create_connection(
                    factory,
                    self.host,
                    self.port,
                    ssl=self.ssl_context,
                    server_hostname=self.host if self.ssl_context is not None else None,
                )
        except TimeoutError:
            raise TransportError(
                f"connecting to {self.scheme}://{self.authority} timed out"
            ) from None
        except (OSError, ssl.SSLError) as exc:
            raise TransportError(
                f"cannot connect to {self.scheme}://{self.authority}: {exc}"
            ) from None
        return protocol

    async def _open_first(self) -> None:
        """Open the first TLS connection and learn from ALPN which protocol to use."""

        class _Either(asyncio.Protocol):
            transport: asyncio.Transport | None = None

            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.transport = cast(asyncio.Transport, transport)

            def connection_lost(self, exc: Exception | None) -> None:
                self.transport = None

        probe = await self._connect(_Either)
        transport = probe.transport
        if transport is None:
            raise TransportError(f"{self.scheme}://{self.authority} closed the connection")
        ssl_object = transport.get_extra_info("ssl_object")
        alpn = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
        if alpn == "h2":
            conn: asyncio.Protocol = H2Connection(self.authority, self.scheme)
            self.protocol = "h2"
        else:
            conn = H1Connection()
            self.protocol = "http/1.1"
        transport.set_protocol(conn)
        conn.connection_made(transport)
        if isinstance(conn, H2Connection):
            self.h2 = conn
        else:
            assert isinstance(conn, H1Connection)
            self.h1_count += 1
            self.idle.append(conn)

    async def _ensure_protocol(self) -> None:
        while self.protocol is None:
            if self._h2_opening is not None:
                await asyncio.shield(self._h2_opening)
                continue
            self._h2_opening = asyncio.get_running_loop().create_future()
            try:
                await self._open_first()
            finally:
                opening, self._h2_opening = self._h2_opening, None
                if not opening.done():
                    opening.set_result(None)

    async def _h2_connection(self) -> H2Connection:
        while self.h2 is None or not self.h2.usable:
            if self._h2_opening is not None:
                await asyncio.shield(self._h2_opening)
                continue
            self._h2_opening = asyncio.get_running_loop().create_future()
            try:
                self.h2 = await self._connect(lambda: H2Connection(self.authority, self.scheme))
            finally:
                opening, self._h2_opening = self._h2_opening, None
                if not opening.done():
                    opening.set_result(None)
        return self.h2

    async def _h1_acquire(self) -> tuple[H1Connection, bool]:
        while True:
            while self.idle:
                conn = self.idle.pop()
                if not conn.closed:
                    return conn, True
                self.h1_count -= 1
            if self.h1_count < self.max_connections:
                self.h1_count += 1
                try:
                    conn = await self._connect(H1Connection)
                except BaseException:
                    self.h1_count -= 1
                    self._h1_wake()
                    raise
                return conn, False
            waiter = asyncio.get_running_loop().create_future()
            self._h1_waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                waiter.cancel()
                raise

    def _h1_release(self, conn: H1Connection) -> None:
        if conn.reusable and not conn.closed:
            self.idle.append(conn)
        else:
            conn.close()
            self.h1_count -= 1
        self._h1_wake()

    def _h1_wake(self) -> None:
        while self._h1_waiters:
            waiter = self._h1_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def request(
        self,
        method: str,
        path: str,
        headers: Mapping[str, str],
        body: bytes,
        timeout: float | None = None,
    ) -> Response:
        """One exchange; with `timeout`, TimeoutError when it takes longer (seconds)."""
        if timeout is None:
            return await self._request(method, path, headers, body)
        if self.protocol == "http/1.1" and self.idle:
            # The common case in a fan-out: a kept-alive connection is waiting.
            return await self._h1_request_by(method, path, headers, body, timeout)
        async with asyncio.timeout(timeout):
            return await self._request(method, path, headers, body)

    async def _request(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes
    ) -> Response:
        await self._ensure_protocol()
        if self.protocol == "h2":
            conn2 = await self._h2_connection()
            return await conn2.request(method, path, headers, body)
        return await self._h1_exchange(self._h1_head(method, path, headers, len(body)), body)

    async def _h1_request_by(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes, timeout: float
    ) -> Response:
        """The exchange on an idle connection, its deadline kept by `Expiry`, not a timer."""
        head = self._h1_head(method, path, headers, len(body))
        conn = self.idle.pop()
        # The connection's loop is the running one (no get_running_loop: a system call).
        loop = conn.loop or asyncio.get_running_loop()
        deadline = loop.time() + timeout
        expiry = self._expiry
        if expiry is None or expiry.loop is not loop:
            expiry = self._expiry = Expiry(loop)
        if conn.closed:
            self.h1_count -= 1
        else:
            try:
                return await conn.request(head, body, expiry, deadline)
            except TransportError as exc:
                conn.reusable = False
                if not exc.safe_to_retry:
                    raise
                # A kept-alive connection the service had already closed: go on below.
            finally:
                self._h1_release(conn)
        async with asyncio.timeout_at(deadline):
            return await self._h1_exchange(head, body)

    async def _h1_exchange(self, head: bytes, body: bytes) -> Response:
        for _ in range(2):
            conn, reused = await self._h1_acquire()
            try:
                return await conn.request(head, body)
            except TransportError as exc:
                conn.reusable = False
                if not (reused and exc.safe_to_retry):
                    raise
                # A kept-alive connection the service had already closed: once more, fresh.
            finally:
                self._h1_release(conn)
        raise TransportError("connection closed before the answer")  # pragma: no cover

    def _h1_head(self, method: str, path: str, headers: Mapping[str, str], length: int) -> bytes:
        if type(headers) is FrozenHeaders:  # encoded once for all the requests sharing them
            block = headers.h1_block
            if block is None:
                block = headers.h1_block = _header_lines(headers)
        else:
            block = _header_lines(headers)
        return b"".join(
            (
                f"{method} {path}".encode("latin-1"),
                self._h1_host,
                block,
                b"Content-Length: %d\r\n\r\n" % length,
            )
        )

    def close(self) -> None:
        if self._expiry is not None:
            self._expiry.close()
        if self.h2 is not None:
            self.h2.close()
        for conn in self.idle:
            conn.close()
        self.idle.clear()


def _header_lines(headers: Mapping[str, str]) -> bytes:
    """`Name: value` lines (each ending in CRLF) as they go on the wire."""
    return "".join([f"{name}: {value}\r\n" for name, value in headers.items()]).encode("latin-1")


class PooledTransport:
    """Tidings' own transport: HTTP/2 where the service offers it, HTTP/1.1 keep-alive else."""

    keeps_deadlines: ClassVar[Literal[True]] = True

    def __init__(
        self,
        *,
        verify: VerifyOption = True,
        http2: bool = True,
        h2c: bool = False,
        max_connections_per_origin: int = 100,
        connect_timeout: float = 10.0,
    ) -> None:
        if max_connections_per_origin < 1:
            raise ValueError("max_connections_per_origin must be at least 1")
        self._ssl = make_ssl_context(verify, http2=http2)
        self._h2c = h2c
        self._max = max_connections_per_origin
        self._connect_timeout = connect_timeout
        self._pools: dict[tuple[str, str, int], _OriginPool] = {}
        self._by_prefix: dict[str, _OriginPool] = {}
        self._closed = False

    def _known_pool(self, url: str) -> tuple[_OriginPool | None, int]:
        """The pool of a URL whose origin was seen before (no URL parsing), and where the
        path starts; None when it must be parsed (new origin, query or fragment)."""
        cut = url.find("/", url.find("//") + 2)
        if cut > 0 and "?" not in url and "#" not in url:
            return self._by_prefix.get(url[:cut]), cut
        return None, cut

    def _pool_for(self, url: str) -> tuple[_OriginPool, str]:
        pool, cut = self._known_pool(url)
        if pool is not None:
            return pool, url[cut:]
        pool, path = self._parse_pool(url)
        if cut > 0 and len(self._by_prefix) < 10000:
            self._by_prefix[url[:cut]] = pool
        return pool, path

    def _parse_pool(self, url: str) -> tuple[_OriginPool, str]:
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise TransportError(
                f"bad push endpoint URL {url!r}: {exc}", safe_to_retry=False
            ) from None
        scheme = parts.scheme.lower()
        host = parts.hostname
        if scheme not in ("http", "https") or not host:
            raise TransportError(
                f"push endpoint must be an http(s) URL: {url!r}", safe_to_retry=False
            )
        if port is None:
            port = 443 if scheme == "https" else 80
        key = (scheme, host, port)
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = _OriginPool(
                scheme,
                host,
                port,
                ssl_context=self._ssl if scheme == "https" else None,
                max_connections=self._max,
                connect_timeout=self._connect_timeout,
                h2c=self._h2c,
            )
        path = parts.path or "/"
        if parts.query:
            path = f"{path}?{parts.query}"
        return pool, path

    def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes,
        *,
        timeout: float | None = None,
    ) -> Coroutine[Any, Any, Response]:
        """Send one request on a pooled connection to the URL's origin.

        `timeout` (seconds) bounds the whole exchange: TimeoutError when it runs out.
        """
        # Not a coroutine itself: a fan-out's usual case (a kept-alive connection waits, the
        # URL's origin is known) hands out the exchange's coroutine, one frame less per
        # request. Nothing here can raise: every check and error is in the coroutine.
        if timeout is not None and not self._closed:
            pool, cut = self._known_pool(url)
            if pool is not None and pool.idle and pool.protocol == "http/1.1":
                return pool._h1_request_by(method, url[cut:], headers, body, timeout)
        return self._request(method, url, headers, body, timeout)

    async def _request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes,
        timeout: float | None,
    ) -> Response:
        if self._closed:
            raise TransportError("transport is closed", safe_to_retry=False)
        pool, path = self._pool_for(url)
        return await pool.request(method, path, headers, body, timeout)

    def protocol_of(self, url: str) -> str | None:
        """ "h2" or "http/1.1" once known for the URL's origin, else None."""
        pool, _ = self._pool_for(url)
        return pool.protocol

    async def aclose(self) -> None:
        """Close every pooled connection."""
        self._closed = True
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()
        self._by_prefix.clear()
        await asyncio.sleep(0)
