"""RFC 8030 push message receipts, on the application server's side.

A push sent with `Prefer: respond-async` is answered 202 with a receipt subscription
(`Link: <...>; rel="urn:ietf:params:push:receipt"`). The service never answers a GET of
that URL; it pushes (HTTP/2 server push) one synthesized `GET <push message resource>`
per receipt, whose response status says what became of the message: 204 delivered and
acknowledged, 410 expired undelivered (sections 5.1, 6.2 and 6.3).

`ReceiptMonitor` keeps one such GET open per receipt subscription, reconnecting when the
connection drops, and hands each receipt to whoever waits for it. `ReceiptBook` is what
a `Sender` keeps: the receipt subscription of each push-service origin (sent back on
later pushes so receipts are aggregated) and the monitors.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urljoin, urlsplit

from tidings.http2 import H2Client, H2Error, H2Response, H2Stream, PushedResponse
from tidings.webpush.errors import Errno, errno_of
from tidings.webpush.links import REL_RECEIPT, link_target

if TYPE_CHECKING:
    from tidings.sender.results import SendResult

__all__ = [
    "REL_RECEIPT",
    "Http2Required",
    "Receipt",
    "ReceiptBook",
    "ReceiptError",
    "ReceiptMonitor",
    "ReceiptStream",
    "link_target",
    "origin_of",
    "redacted",
]

log = logging.getLogger("tidings.sender.receipts")

_BACKLOG = 10_000


def redacted(url: str) -> str:
    """A capability URL fit for logs and messages: the start of its token only."""
    head, _, token = url.rpartition("/")
    return f"{head}/{token[:8]}..." if len(token) > 8 else url


def origin_of(url: str) -> str:
    """`scheme://host[:port]` of a URL, lower-cased, default ports dropped."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    port = parts.port
    if port is None or (scheme, port) in (("http", 80), ("https", 443)):
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


@dataclass(frozen=True, slots=True)
class Receipt:
    """What the push service reported about one message sent with `receipt=True`."""

    message_url: str
    """The push message resource (the `location` of the send's result)."""
    status: int
    """The pushed response's status: 204 delivered and acknowledged, 410 expired."""
    receipt_subscription: str = field(default="", compare=False)
    """The receipt subscription it came through."""

    @property
    def delivered(self) -> bool:
        """The user agent received and acknowledged the message (2xx, normally 204)."""
        return 200 <= self.status < 300

    @property
    def expired(self) -> bool:
        """The service gave up before the user agent acknowledged it (410)."""
        return self.status == 410

    def __str__(self) -> str:
        what = "delivered" if self.delivered else "expired" if self.expired else "unknown"
        return f"{what} ({self.status}) {self.message_url}"


class ReceiptError(Exception):
    """Receipts cannot be had: no receipt subscription, or it cannot be monitored."""


class Http2Required(ReceiptError):
    """The push service speaks only HTTP/1.1: receipts need HTTP/2 server push."""


class _MonitorClient(H2Client):
    """An `H2Client` that notices an HTTP/1.x answer to the HTTP/2 connection preface."""

    http1_answer = False
    _got_data = False

    def data_received(self, data: bytes) -> None:
        if not self._got_data:
            self._got_data = True
            self.http1_answer = data.startswith(b"HTTP/1.")
        super().data_received(data)


_Item = Receipt | ReceiptError | None  # None: the monitor was closed


class ReceiptMonitor:
    """One open GET of a receipt subscription, reopened whenever the connection drops.

    Each receipt goes to the `wait_for` callers waiting for that message and to every
    attached stream; one nobody took is kept (up to 10,000) for the next taker, since the
    service forgets a receipt once it has pushed it.
    """

    def __init__(
        self,
        url: str,
        *,
        ssl_context: Callable[[], ssl.SSLContext] | None = None,
        after_connect: Callable[[], None] | None = None,
        connect_timeout: float = 10.0,
        retry_delay: float = 0.25,
        max_retry_delay: float = 30.0,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ReceiptError(f"a receipt subscription must be an http(s) URL, not {url!r}")
        self.url = url
        self.origin = f"{parts.scheme}://{parts.netloc}"
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.connections = 0
        """How many times the GET was opened (1 + reconnections)."""
        self.connected = asyncio.Event()
        """Set while the GET is open on a live connection."""
        self.error: ReceiptError | None = None
        """Why monitoring stopped for good (404, HTTP/1.1 only...), if it did."""
        self._ssl_context = ssl_context
        self._after_connect = after_connect
        self._connect_timeout = connect_timeout
        self._retry_delay = retry_delay
        self._max_retry_delay = max_retry_delay
        self._waiters: dict[str, list[asyncio.Future[Receipt]]] = {}
        self._listeners: set[asyncio.Queue[_Item]] = set()
        self._unclaimed: OrderedDict[str, Receipt] = OrderedDict()
        self._task: asyncio.Task[None] | None = None
        self._client: H2Client | None = None
        self._closed = False

    # Consumers ---------------------------------------------------------------------------

    def start(self) -> None:
        """Open the GET in the background (once)."""
        if self._task is None and not self._closed and self.error is None:
            self._task = asyncio.create_task(self._run(), name=f"receipts {redacted(self.url)}")

    async def wait_for(self, message_path: str, timeout: float | None = None) -> Receipt:
        """The receipt for the push message resource at `message_path`.

        Raises TimeoutError after `timeout` seconds, ReceiptError if monitoring fails
        for good (or the monitor is closed).
        """
        kept = self._unclaimed.pop(message_path, None)
        if kept is not None:
            return kept
        if self.error is not None:
            raise self.error
        if self._closed:
            raise ReceiptError("the receipt monitor is closed")
        future: asyncio.Future[Receipt] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(message_path, []).append(future)
        self.start()
        try:
            return await asyncio.wait_for(future, timeout)
        finally:
            waiting = self._waiters.get(message_path)
            if waiting is not None and future in waiting:
                waiting.remove(future)
                if not waiting:
                    del self._waiters[message_path]

    def attach(self, queue: asyncio.Queue[_Item]) -> None:
        """Send every receipt to `queue`, starting with those nobody has taken yet."""
        while self._unclaimed:
            queue.put_nowait(self._unclaimed.popitem(last=False)[1])
        if self.error is not None:
            queue.put_nowait(self.error)
            return
        self._listeners.add(queue)
        self.start()

    def detach(self, queue: asyncio.Queue[_Item]) -> None:
        """Stop sending receipts to `queue`."""
        self._listeners.discard(queue)

    async def close(self) -> None:
        """Close the connection; waiters get a ReceiptError, streams end."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._fail_waiters(ReceiptError("the receipt monitor was closed"))
        for queue in self._listeners:
            queue.put_nowait(None)
        self._listeners.clear()

    # Delivery -----------------------------------------------------------------------------

    def _dispatch(self, pushed: PushedResponse) -> None:
        receipt = Receipt(self.origin + pushed.path, pushed.status, self.url)
        claimed = False
        for future in self._waiters.pop(pushed.path, []):
            if not future.done():
                future.set_result(receipt)
                claimed = True
        for queue in self._listeners:
            queue.put_nowait(receipt)
            claimed = True
        if not claimed:
            self._unclaimed[pushed.path] = receipt
            while len(self._unclaimed) > _BACKLOG:
                self._unclaimed.popitem(last=False)

    def _fail_waiters(self, error: ReceiptError) -> None:
        for futures in self._waiters.values():
            for future in futures:
                if not future.done():
                    future.set_exception(error)
        self._waiters.clear()

    def _fail(self, error: ReceiptError) -> None:
        """Monitoring cannot work: tell everyone, stop."""
        log.warning("receipts from %s: %s", redacted(self.url), error)
        self.error = error
        self._fail_waiters(error)
        for queue in self._listeners:
            queue.put_nowait(error)
        self._listeners.clear()

    # The connection ---------------------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        delay = self._retry_delay
        while not self._closed:
            started = loop.time()
            try:
                delivered = await self._session()
                problem = "the service ended the receipt stream"
            except ReceiptError as exc:
                self._fail(exc)
                return
            except (H2Error, OSError, TimeoutError) as exc:
                delivered = False
                problem = str(exc) or type(exc).__name__
            if self._closed:
                return
            if delivered or loop.time() - started > 10:
                delay = self._retry_delay
            wait = delay * random.uniform(0.8, 1.2)
            log.info(
                "receipts from %s: %s; reconnecting in %.2f s", redacted(self.url), problem, wait
            )
            await asyncio.sleep(wait)
            delay = min(delay * 2, self._max_retry_delay)

    async def _connect(self) -> _MonitorClient:
        context = None
        if self._ssl_context is not None and self.origin.startswith("https:"):
            context = self._ssl_context()
        try:
            client = await _MonitorClient.connect(
                self.url, ssl_context=context, timeout=self._connect_timeout
            )
        except H2Error as exc:
            if "does not speak HTTP/2" in str(exc):
                raise Http2Required(_http1_message(self.origin)) from None
            raise
        finally:
            if context is not None and self._after_connect is not None:
                self._after_connect()
        return cast(_MonitorClient, client)

    async def _session(self) -> bool:
        """One connection: open the GET, dispatch pushes until it ends; True if any came."""
        client = await self._connect()
        self._client = client
        stream: H2Stream | None = None
        got_any = False
        try:
            stream = await client.open_stream("GET", self.path)
            self.connections += 1
            self.connected.set()
            while True:
                next_push = asyncio.ensure_future(stream.pushes.get())
                either: set[asyncio.Future[Any]] = {next_push, stream.response}
                await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
                if next_push.done():
                    self._dispatch(next_push.result())
                    got_any = True
                    continue
                next_push.cancel()
                while not stream.pushes.empty():
                    self._dispatch(stream.pushes.get_nowait())
                    got_any = True
                try:
                    response = stream.response.result()
                except H2Error:
                    if client.http1_answer:
                        raise Http2Required(_http1_message(self.origin)) from None
                    raise
                _check_final(self.url, response)
                return got_any
        finally:
            self.connected.clear()
            self._client = None
            await client.close()
            if stream is not None and stream.response.done() and not stream.response.cancelled():
                stream.response.exception()  # retrieved: no "never retrieved" warning


def _http1_message(origin: str) -> str:
    return (
        f"{origin} speaks only HTTP/1.1: RFC 8030 receipts arrive by HTTP/2 server push, "
        "which HTTP/1.1 cannot carry (the push itself was sent; its receipt cannot be read)"
    )


def _check_final(url: str, response: H2Response) -> None:
    """A final answer to the receipt GET: raise if monitoring can never work."""
    status = response.status
    if status == 404:
        raise ReceiptError(
            f"the push service does not know the receipt subscription {redacted(url)} (404): it "
            "expired or never existed; send with receipt=True again to get a new one"
        )
    if status == 505 or (status == 400 and errno_of(response.body) == Errno.NEEDS_HTTP2):
        raise Http2Required(_http1_message(urlsplit(url).netloc))
    if 400 <= status < 500 and status not in (408, 429):
        raise ReceiptError(
            f"the push service refused to monitor {redacted(url)}: {status} {_text(response)[:200]}"
        )
    # 2xx (the service ended the stream, e.g. shutting down) or 5xx: reconnect.


def _text(response: H2Response) -> str:
    return response.body.decode("utf-8", "replace")


class ReceiptStream:
    """Receipts as they arrive from one or more receipt subscriptions.

    Iterate with `async for`; close with `aclose()` or use it as `async with`. A
    permanent monitoring failure (404, HTTP/1.1 only) is raised from the iteration.
    """

    def __init__(self, on_close: Callable[[ReceiptStream], None] | None = None) -> None:
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._monitors: list[ReceiptMonitor] = []
        self._on_close = on_close
        self._closed = False

    def follow(self, monitor: ReceiptMonitor) -> None:
        """Also yield the receipts of `monitor`."""
        if monitor not in self._monitors and not self._closed:
            self._monitors.append(monitor)
            monitor.attach(self._queue)

    def __aiter__(self) -> AsyncIterator[Receipt]:
        return self

    async def __anext__(self) -> Receipt:
        if self._closed:
            raise StopAsyncIteration
        item = await self._queue.get()
        if item is None:
            await self.aclose()
            raise StopAsyncIteration
        if isinstance(item, ReceiptError):
            raise item
        return item

    async def aclose(self) -> None:
        """Stop receiving (the monitors stay open for other consumers)."""
        if self._closed:
            return
        self._closed = True
        for monitor in self._monitors:
            monitor.detach(self._queue)
        if self._on_close is not None:
            self._on_close(self)

    async def __aenter__(self) -> ReceiptStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class ReceiptBook:
    """A sender's receipt state: one receipt subscription per origin, one monitor per
    receipt subscription, and the streams that follow an origin."""

    def __init__(
        self,
        *,
        ssl_context: Callable[[], ssl.SSLContext] | None = None,
        after_connect: Callable[[], None] | None = None,
        connect_timeout: float = 10.0,
    ) -> None:
        self.by_origin: dict[str, str] = {}
        """The receipt subscription sent back on the next receipt request to each origin."""
        self.monitors: dict[str, ReceiptMonitor] = {}
        self.without_receipts: set[str] = set()
        """Origins that accepted a receipt request without a receipt subscription."""
        self._known: dict[str, list[str]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._streams: dict[str, set[ReceiptStream]] = {}
        self._ssl_context = ssl_context
        self._after_connect = after_connect
        self._connect_timeout = connect_timeout

    @contextlib.asynccontextmanager
    async def slot(self, origin: str) -> AsyncIterator[str | None]:
        """The origin's receipt subscription to send back, or None for the first request.

        While no subscription is known, receipt requests to the origin go one at a time,
        so that concurrent first sends do not each create a receipt subscription.
        """
        known = self.by_origin.get(origin)
        if known is not None or origin in self.without_receipts:
            yield known
            return
        lock = self._locks.setdefault(origin, asyncio.Lock())
        async with lock:
            yield self.by_origin.get(origin)

    def remember(self, origin: str, url: str) -> None:
        """The service answered with `url`: use it from now on for this origin."""
        self.by_origin[origin] = url
        self.without_receipts.discard(origin)
        known = self._known.setdefault(origin, [])
        if url not in known:
            known.append(url)
            if self._streams.get(origin):
                monitor = self.monitor(url)
                for stream in self._streams[origin]:
                    stream.follow(monitor)

    def forget(self, origin: str, url: str) -> None:
        """The service refused `url` (400): stop sending it back."""
        if self.by_origin.get(origin) == url:
            del self.by_origin[origin]

    def monitor(self, url: str) -> ReceiptMonitor:
        """The monitor of receipt subscription `url` (made on first use)."""
        monitor = self.monitors.get(url)
        if monitor is None:
            monitor = self.monitors[url] = ReceiptMonitor(
                url,
                ssl_context=self._ssl_context,
                after_connect=self._after_connect,
                connect_timeout=self._connect_timeout,
            )
        return monitor

    def stream(self, target: str | SendResult) -> ReceiptStream:
        """Receipts of a receipt subscription URL, of a send's result, or of an origin.

        An origin (`https://push.example.net`) follows every receipt subscription this
        sender got from it, including ones it gets later.
        """
        url = target if isinstance(target, str) else target.receipt
        if url is None:
            raise ReceiptError(_no_receipt_message(cast("SendResult", target)))
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ReceiptError(f"not a receipt subscription URL or origin: {url!r}")
        if parts.path not in ("", "/") or url in self.monitors:
            stream = ReceiptStream()
            stream.follow(self.monitor(url))
            return stream
        origin = origin_of(url)
        known = self._known.get(origin, [])
        if not known:
            raise ReceiptError(
                f"no receipt subscription from {origin} yet: send to it with receipt=True "
                "first (receipts follow the subscription the service returns)"
            )
        streams = self._streams.setdefault(origin, set())
        stream = ReceiptStream(on_close=streams.discard)
        streams.add(stream)
        for receipt_url in known:
            stream.follow(self.monitor(receipt_url))
        return stream

    async def wait_for(self, result: SendResult, timeout: float | None) -> Receipt:
        """The receipt of one accepted send."""
        if result.receipt is None:
            raise ReceiptError(_no_receipt_message(result))
        if result.location is None:
            raise ReceiptError(
                "the push service gave no Location for this message, so its receipt "
                "cannot be recognised"
            )
        message = urljoin(result.subscription.endpoint, result.location)
        return await self.monitor(result.receipt).wait_for(urlsplit(message).path, timeout)

    async def aclose(self) -> None:
        """Close every monitor."""
        monitors = list(self.monitors.values())
        self.monitors.clear()
        await asyncio.gather(*(m.close() for m in monitors))


def _no_receipt_message(result: SendResult) -> str:
    if not result.ok:
        return f"the push was not accepted ({result.kind.value}): there is no receipt to wait for"
    return (
        f"the push service answered {result.status} without a receipt subscription: "
        "send with receipt=True, or the service does not offer RFC 8030 receipts"
    )
