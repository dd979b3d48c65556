"""The live RFC 8030 session of `Http2Transport`: requests, subscribe, ack, the monitor.

One `Http2Connection` keeps an HTTP/2 connection per origin (307 and 308 answers may
name another), checks the stored subscription set on open, and holds the long GET of
the set whose PUSH_PROMISEs become `Delivery` events; see `tidings.useragent.rfc8030`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
from collections import OrderedDict
from collections.abc import Awaitable, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin

from tidings.http2 import H2Client, H2Error, H2Response, H2Stream, PushedResponse
from tidings.useragent.rfc8030_wire import (
    delivery_headers,
    errno_of,
    error_reason,
    origin_of,
    request_target,
)
from tidings.useragent.transport import (
    Acknowledgement,
    ConnectionClosed,
    Delivery,
    EventQueue,
    SubscribeRefused,
    TransportEvent,
    TransportSubscription,
)
from tidings.webpush.errors import Errno
from tidings.webpush.links import REL_PUSH, REL_SET, WEBPUSH_OPTIONS, link_target

if TYPE_CHECKING:
    from tidings.useragent.rfc8030 import Http2Transport

__all__ = ["ERRNO_BAD_SET", "MAX_DELIVERED_REMEMBERED", "REDIRECTS", "Http2Connection"]

log = logging.getLogger("tidings.useragent.rfc8030")

REDIRECTS = (307, 308)
MAX_DELIVERED_REMEMBERED = 10_000
"""Message URLs remembered per connection so a second push of one is not handed over."""
ERRNO_BAD_SET = Errno.BAD_SET
"""Tidings' errno for a subscribe naming a set it does not know (it was removed)."""


class Http2Connection:
    """A live RFC 8030 session: HTTP/2 connections by origin and the monitor of the set."""

    def __init__(self, transport: Http2Transport) -> None:
        self._transport = transport
        self._home = origin_of(transport.url)
        self._clients: dict[str, H2Client] = {}
        self._connecting = asyncio.Lock()
        self._subscribing = asyncio.Lock()
        self._set_url: str | None = None
        self._endpoints: dict[str, str] = {}  # push resource URL -> subscription URL
        self._unmapped: set[str] = set()  # push resources seen that this connection did not make
        self._delivered: OrderedDict[str, None] = OrderedDict()
        self._events = EventQueue()  # full: pumps wait, pushes pile up, clients stop reading
        self._monitor: asyncio.Task[None] | None = None
        self._monitor_origin = self._home
        self._tasks: set[asyncio.Task[Any]] = set()
        self._pumps: set[asyncio.Task[Any]] = set()
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
            client = await self._client(origin_of(url))
            try:
                response = await client.request(
                    method,
                    request_target(url),
                    headers,
                    body,
                    timeout=self._transport.request_timeout,
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
            origin = origin_of(url)
            client = await self._client(origin)
            try:
                stream = await client.open_stream(
                    "GET", request_target(url), self._monitor_headers(wait_zero=True)
                )
                self._pumps.add(self._spawn(self._pump(origin, stream)))
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
            raise ConnectionClosed(f"GET of the subscription set: {error_reason(response)}")
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
            set_gone = response.status == 400 and errno_of(response) == ERRNO_BAD_SET
            if self._set_url is not None and set_gone:
                # The set vanished since we connected: reconnecting finds it gone and
                # renews every subscription; the user agent subscribes again then.
                # (Maybe in the user agent's own task: it cannot take events meanwhile.)
                await self._closed_by("the push service forgot the subscription set", drain=False)
                raise ConnectionClosed(self.close_reason)
            if response.status not in (200, 201):
                raise SubscribeRefused(
                    response.status,
                    f"the push service refused to subscribe: {error_reason(response)}",
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
            log.info("DELETE of subscription %s answered %s", url, error_reason(response))

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
                log.info("DELETE of %s answered %s", ack.message_id, error_reason(response))

    async def next_event(self) -> TransportEvent:
        """The next message; ConnectionClosed once the connection is gone."""
        return await self._events.get()

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
            origin = origin_of(url)
            try:
                client = await self._client(origin)
                stream = await client.open_stream(
                    "GET", request_target(url), self._monitor_headers()
                )
            except (ConnectionClosed, H2Error) as exc:
                await self._closed_by(f"cannot monitor the subscription set: {exc}")
                return
            self._monitor_origin = origin
            self._pumps.add(self._spawn(self._pump(origin, stream)))
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
                await self._closed_by(f"the service ended the monitor ({error_reason(response)})")
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
                await self._on_push(origin, getting.result())
                continue
            while not stream.pushes.empty():
                await self._on_push(origin, stream.pushes.get_nowait())
            return

    async def _on_push(self, origin: str, pushed: PushedResponse) -> None:
        """Queue a push as a Delivery, waiting while the user agent is behind (the
        stream's pushes wait meanwhile, and past a bound its client stops reading)."""
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
        await self._events.put(Delivery(handle, url, pushed.body, delivery_headers(pushed.headers)))

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

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(self._pumps.discard)
        return task

    async def _closed_by(self, reason: str, *, drain: bool = True) -> None:
        if self._closed:
            return
        self._closed = True
        self.close_reason = reason
        self._transport.forget(self)
        for client in list(self._clients.values()):
            with contextlib.suppress(Exception):
                await client.close()
        self._clients.clear()
        if drain:  # every stream is over: what was pushed reaches the user agent (as it
            # takes it) before ConnectionClosed does; never from the task that takes events
            pumps = [task for task in self._pumps if task is not asyncio.current_task()]
            await asyncio.gather(*pumps, return_exceptions=True)
        self._events.close(reason)

    async def close(self) -> None:
        """Close every HTTP/2 connection and stop the background tasks."""
        self._events.close("closed by the user agent")  # nobody takes events any more
        await self._closed_by("closed by the user agent")
        current = asyncio.current_task()
        tasks = [task for task in self._tasks if task is not current]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
