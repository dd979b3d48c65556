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

The URL helpers and header mapping at the top are plain functions, tested without I/O.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import ssl
from collections import OrderedDict
from collections.abc import Awaitable, Sequence
from typing import Any
from urllib.parse import urljoin, urlsplit, urlunsplit

from tidings.http2 import H2Client, H2Error, H2Response, H2Stream, PushedResponse
from tidings.useragent.transport import (
    Acknowledgement,
    ConnectionClosed,
    Delivery,
    SubscribeRefused,
    TransportEvent,
    TransportSubscription,
)
from tidings.webpush import URGENCIES, HeaderError, parse_urgency
from tidings.webpush.errors import Errno, errno_of, parse_error_body
from tidings.webpush.links import REL_PUSH, REL_SET, WEBPUSH_OPTIONS, link_target

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

log = logging.getLogger("tidings.useragent.rfc8030")

URGENCY_LEVELS = URGENCIES
REDIRECTS = (307, 308)
MAX_DELIVERED_REMEMBERED = 10_000
"""Message URLs remembered per connection so a second push of one is not handed over."""
ERRNO_BAD_SET = Errno.BAD_SET
"""Tidings' errno for a subscribe naming a set it does not know (it was removed)."""


# Plain functions ---------------------------------------------------------------------------


def is_rfc8030_url(service_url: str) -> bool:
    """True for the URL forms that choose RFC 8030 by themselves: h2:// and h2c://."""
    return urlsplit(service_url).scheme.lower() in ("h2", "h2c")


def rfc8030_url(service_url: str) -> str:
    """The http(s) URL of a service given as h2:// (TLS), h2c://, http(s):// or ws(s)://."""
    parts = urlsplit(service_url)
    scheme = {"h2": "https", "https": "https", "wss": "https"}.get(parts.scheme.lower())
    if scheme is None and parts.scheme.lower() in ("h2c", "http", "ws"):
        scheme = "http"
    if scheme is None or not parts.hostname:
        raise ValueError(
            f"an RFC 8030 push service URL must be h2://, h2c://, https:// or http://: "
            f"{service_url}"
        )
    return urlunsplit((scheme, parts.netloc, parts.path, parts.query, ""))


def subscribe_url(service_url: str) -> str:
    """The subscribe resource: `/subscribe` of an origin, or the URL itself when it has a path."""
    url = rfc8030_url(service_url)
    parts = urlsplit(url)
    if parts.path in ("", "/"):
        return urlunsplit((parts.scheme, parts.netloc, "/subscribe", "", ""))
    return url


def check_urgency(level: str | None) -> str | None:
    """`level` as the service spells it (`very-low` ... `high`), or None for everything."""
    if level is None:
        return None
    try:
        return str(parse_urgency(level))
    except HeaderError:
        raise ValueError(f"urgency must be one of {', '.join(URGENCY_LEVELS)} or None") from None


def delivery_headers(headers: dict[str, str]) -> dict[str, str]:
    """A pushed response's coding headers, named as `dispatch.open_message` expects."""
    found: dict[str, str] = {}
    for name, key in (
        ("content-encoding", "encoding"),
        ("encryption", "encryption"),
        ("crypto-key", "crypto_key"),
    ):
        value = headers.get(name, "").strip()
        if value:
            found[key] = value
    return found


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _target(url: str) -> str:
    parts = urlsplit(url)
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


def _reason(response: H2Response) -> str:
    """A short reason from an error answer (the service's JSON `message`, when it has one)."""
    document = parse_error_body(response.body)
    if document is not None and document.message is not None:
        return f"status {response.status}: {document.message}"
    return f"status {response.status}"


# The transport ------------------------------------------------------------------------------


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

    def _forget(self, connection: Http2Connection) -> None:
        self._live.discard(connection)


class Http2Connection:
    """A live RFC 8030 session: HTTP/2 connections by origin and the monitor of the set."""

    def __init__(self, transport: Http2Transport) -> None:
        self._transport = transport
        self._home = _origin(transport.url)
        self._clients: dict[str, H2Client] = {}
        self._connecting = asyncio.Lock()
        self._subscribing = asyncio.Lock()
        self._set_url: str | None = None
        self._endpoints: dict[str, str] = {}  # push resource URL -> subscription URL
        self._unmapped: set[str] = set()  # push resources seen that this connection did not make
        self._delivered: OrderedDict[str, None] = OrderedDict()
        self._events: asyncio.Queue[TransportEvent | None] = asyncio.Queue()
        self._monitor: asyncio.Task[None] | None = None
        self._monitor_origin = self._home
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False
        self.close_reason = ""

    @property
    def session_id(self) -> str:
        """The subscription set URL ("" until the first subscribe makes one)."""
        return self._set_url or ""

    async def open(self, set_url: str | None) -> None:
        """Connect; if `set_url` still exists, take its pending messages and monitor it."""
        await self._client(self._home)
        if set_url is not None and await self._set_exists(set_url):
            self._set_url = set_url
            self._start_monitor()
        if self._transport.ping_interval > 0:
            self._spawn(self._keepalive())

    # Requests ---------------------------------------------------------------------------

    async def _client(self, origin: str) -> H2Client:
        async with self._connecting:
            client = self._clients.get(origin)
            if client is not None and not client.closed.is_set():
                return client
            if self._closed:
                raise ConnectionClosed(self.close_reason or "connection closed")
            try:
                client = await H2Client.connect(
                    origin,
                    ssl_context=self._transport.ssl_context,
                    timeout=self._transport.open_timeout,
                )
            except (H2Error, ssl.SSLError, OSError) as exc:
                raise ConnectionClosed(f"cannot connect to {origin}: {exc}") from exc
            self._clients[origin] = client
            self._spawn(self._watch(origin, client))
            return client

    async def _request(
        self, method: str, url: str, headers: dict[str, str] | None = None, body: bytes = b""
    ) -> tuple[str, H2Response]:
        """Send a request, following 307/308; return the final URL and its answer."""
        for _ in range(self._transport.max_redirects + 1):
            client = await self._client(_origin(url))
            try:
                response = await client.request(
                    method, _target(url), headers, body, timeout=self._transport.request_timeout
                )
            except (H2Error, TimeoutError) as exc:
                raise ConnectionClosed(f"{method} {url} failed: {exc or 'timeout'}") from exc
            location = response.headers.get("location")
            if response.status not in REDIRECTS or not location:
                return url, response
            url = urljoin(url, location)
            log.debug("%s redirected (%d) to %s", method, response.status, url)
        raise ConnectionClosed(f"{method}: more than {self._transport.max_redirects} redirects")

    def _monitor_headers(self, *, wait_zero: bool = False) -> dict[str, str]:
        headers: dict[str, str] = {}
        if wait_zero:
            headers["prefer"] = "wait=0"
        if self._transport.urgency is not None:
            headers["urgency"] = self._transport.urgency
        return headers

    async def _set_exists(self, set_url: str) -> bool:
        """GET the set with `Prefer: wait=0`: pending messages, then 204; or 404/410."""
        url = set_url
        for _ in range(self._transport.max_redirects + 1):
            origin = _origin(url)
            client = await self._client(origin)
            try:
                stream = await client.open_stream(
                    "GET", _target(url), self._monitor_headers(wait_zero=True)
                )
                self._spawn(self._pump(origin, stream))
                async with asyncio.timeout(self._transport.request_timeout):
                    response = await asyncio.shield(stream.response)
            except (H2Error, TimeoutError) as exc:
                raise ConnectionClosed(f"GET {set_url} failed: {exc or 'timeout'}") from exc
            location = response.headers.get("location")
            if response.status in REDIRECTS and location:
                url = urljoin(url, location)
                continue
            if response.status in (404, 410):
                log.warning("the push service no longer knows the subscription set %s", set_url)
                return False
            if 200 <= response.status < 300:
                return True
            raise ConnectionClosed(f"GET of the subscription set: {_reason(response)}")
        raise ConnectionClosed(
            f"GET {set_url}: more than {self._transport.max_redirects} redirects"
        )

    # Transport operations ----------------------------------------------------------------

    async def subscribe(
        self, proposed_handle: str, application_server_key: str | None
    ) -> TransportSubscription:
        """POST to the subscribe resource, into our set once there is one."""
        async with self._subscribing:
            headers: dict[str, str] = {}
            body = b""
            if application_server_key:
                headers["content-type"] = WEBPUSH_OPTIONS
                body = json.dumps({"vapid": application_server_key}).encode()
            if self._set_url is not None:
                headers["link"] = f'<{self._set_url}>; rel="{REL_SET}"'
            final, response = await self._request(
                "POST", self._transport.subscribe_url, headers, body
            )
            set_gone = response.status == 400 and errno_of(response.body) == ERRNO_BAD_SET
            if self._set_url is not None and set_gone:
                # The set vanished since we connected: reconnecting finds it gone and
                # renews every subscription; the user agent subscribes again then.
                await self._closed_by("the push service forgot the subscription set")
                raise ConnectionClosed(self.close_reason)
            if response.status not in (200, 201):
                raise SubscribeRefused(
                    response.status, f"the push service refused to subscribe: {_reason(response)}"
                )
            links = response.headers.get("link", "")
            location, push, in_set = (
                response.headers.get("location"),
                link_target(links, REL_PUSH),
                link_target(links, REL_SET),
            )
            if not location or not push:
                raise SubscribeRefused(
                    response.status, "the subscribe answer lacks Location or the push resource"
                )
            subscription, push = urljoin(final, location), urljoin(final, push)
            in_set = None if in_set is None else urljoin(final, in_set)
            self._endpoints[push] = subscription
            if self._set_url is None and in_set is not None:
                self._set_url = in_set
                self._start_monitor()
            elif in_set is not None and in_set != self._set_url:
                log.warning("the service put %s in another set (%s)", subscription, in_set)
            elif in_set is None:
                log.warning("the service answered subscribe without a set: nothing monitors it")
            return TransportSubscription(subscription, push)

    async def unsubscribe(self, handle: str) -> None:
        """DELETE the subscription (404 or 410: it was gone already)."""
        if handle in self._unmapped and handle not in self._endpoints:
            # Named only by its push resource: RFC 8030 gives no way from there to the
            # subscription URL. Its messages keep coming and are deleted one by one.
            log.info("cannot unsubscribe %s: its subscription URL is unknown here", handle)
            return
        url = self._endpoints.pop(handle, handle)  # a push resource URL names its subscription
        for push, subscription in list(self._endpoints.items()):
            if subscription == url:
                del self._endpoints[push]
        _, response = await self._request("DELETE", url)
        if response.status not in (200, 202, 204, 404, 410):
            log.info("DELETE of subscription %s answered %s", url, _reason(response))

    async def acknowledge(self, acks: Sequence[Acknowledgement]) -> None:
        """DELETE each push message resource (RFC 8030 section 6.2), whatever the code.

        A message that does not decrypt or whose handler failed is deleted too: the
        service would otherwise push it again on every connection, forever.
        """
        results = await asyncio.gather(
            *(self._request("DELETE", ack.message_id) for ack in acks), return_exceptions=True
        )
        for ack, result in zip(acks, results, strict=True):
            if isinstance(result, BaseException):
                raise result
            _, response = result
            if response.status not in (200, 202, 204, 404, 410):
                log.info("DELETE of %s answered %s", ack.message_id, _reason(response))

    async def next_event(self) -> TransportEvent:
        """The next message; ConnectionClosed once the connection is gone."""
        event = await self._events.get()
        if event is None:
            self._events.put_nowait(None)
            raise ConnectionClosed(self.close_reason or "connection closed")
        return event

    async def reopen_monitor(self) -> None:
        """Open the GET again (after an urgency change); the old one is reset once it is up."""
        if not self._closed and self._set_url is not None:
            self._start_monitor()

    # Monitoring ---------------------------------------------------------------------------

    def _start_monitor(self) -> None:
        old = self._monitor
        self._monitor = asyncio.create_task(self._watch_monitor(old), name="tidings-ua-monitor")
        self._tasks.add(self._monitor)
        self._monitor.add_done_callback(self._tasks.discard)

    async def _watch_monitor(self, previous: asyncio.Task[None] | None) -> None:
        """The long GET of the set: never answered while all is well."""
        try:
            await self._monitor_set(previous)
        finally:
            if previous is not None:
                previous.cancel()  # replaced, or this one ended: never leave two open

    async def _monitor_set(self, previous: asyncio.Task[None] | None) -> None:
        assert self._set_url is not None
        url = self._set_url
        for _ in range(self._transport.max_redirects + 1):
            origin = _origin(url)
            try:
                client = await self._client(origin)
                stream = await client.open_stream("GET", _target(url), self._monitor_headers())
            except (ConnectionClosed, H2Error) as exc:
                await self._closed_by(f"cannot monitor the subscription set: {exc}")
                return
            self._monitor_origin = origin
            self._spawn(self._pump(origin, stream))
            if previous is not None and not previous.done():
                previous.cancel()  # the new GET is in place: end the old one
            try:
                response = await stream.response
            except asyncio.CancelledError:
                client.cancel(stream)
                raise
            except H2Error as exc:
                await self._closed_by(f"the monitor ended: {exc}")
                return
            location = response.headers.get("location")
            if response.status in REDIRECTS and location:
                url = urljoin(url, location)
                log.debug("monitor redirected (%d) to %s", response.status, url)
                continue
            if response.status in (404, 410):
                await self._closed_by(f"the subscription set is gone ({response.status})")
            else:
                await self._closed_by(f"the service ended the monitor ({_reason(response)})")
            return
        await self._closed_by(f"monitor: more than {self._transport.max_redirects} redirects")

    async def _pump(self, origin: str, stream: H2Stream) -> None:
        """Hand over the pushes of one stream until it and all it promised are over."""
        while True:
            getting = asyncio.ensure_future(stream.pushes.get())
            ending = asyncio.ensure_future(stream.done.wait())
            try:
                await asyncio.wait({getting, ending}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                ending.cancel()
                if not getting.done():
                    getting.cancel()
            if getting.done() and not getting.cancelled():
                self._on_push(origin, getting.result())
                continue
            while not stream.pushes.empty():
                self._on_push(origin, stream.pushes.get_nowait())
            return

    def _on_push(self, origin: str, pushed: PushedResponse) -> None:
        if self._closed:
            return
        url = urljoin(origin, pushed.path)
        if pushed.status != 200:
            log.info("ignoring a pushed %d for %s", pushed.status, url)
            return
        if url in self._delivered:
            return  # pushed again before our DELETE arrived: the first one is being handled
        self._delivered[url] = None
        if len(self._delivered) > MAX_DELIVERED_REMEMBERED:
            self._delivered.popitem(last=False)
        push = link_target(pushed.headers.get("link", ""), REL_PUSH)
        push = None if push is None else urljoin(origin, push)
        if push is None:
            log.warning("pushed message %s names no push resource: cannot route it", url)
            return
        # The subscription URL when this connection made it; otherwise the push resource
        # (the user agent finds the subscription by its endpoint).
        handle = self._endpoints.get(push)
        if handle is None:
            handle = push
            self._unmapped.add(push)
        self._events.put_nowait(
            Delivery(handle, url, pushed.body, delivery_headers(pushed.headers))
        )

    # Life ---------------------------------------------------------------------------------

    async def _watch(self, origin: str, client: H2Client) -> None:
        await client.closed.wait()
        if self._clients.get(origin) is client:
            del self._clients[origin]
        if origin in (self._home, self._monitor_origin):
            await self._closed_by(client.close_reason or "connection closed")

    async def _keepalive(self) -> None:
        interval, timeout = self._transport.ping_interval, self._transport.ping_timeout
        while not self._closed:
            await asyncio.sleep(interval)
            client = self._clients.get(self._monitor_origin)
            if client is None:
                continue
            try:
                rtt = await client.ping(timeout)
            except (TimeoutError, H2Error):
                log.info("no answer to PING within %.1f s: the connection is dead", timeout)
                await self._closed_by("ping timed out")
                return
            log.debug("PING answered in %.1f ms", rtt * 1000)

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _closed_by(self, reason: str) -> None:
        if self._closed:
            return
        self._closed = True
        self.close_reason = reason
        self._transport._forget(self)
        self._events.put_nowait(None)
        for client in list(self._clients.values()):
            with contextlib.suppress(Exception):
                await client.close()
        self._clients.clear()

    async def close(self) -> None:
        """Close every HTTP/2 connection and stop the background tasks."""
        await self._closed_by("closed by the user agent")
        current = asyncio.current_task()
        tasks = [task for task in self._tasks if task is not current]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
