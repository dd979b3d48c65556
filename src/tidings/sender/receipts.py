"""RFC 8030 push message receipts, on the application server's side.

A push sent with `Prefer: respond-async` is answered 202 with a receipt subscription
(`Link: <...>; rel="urn:ietf:params:push:receipt"`). The service never answers a GET of
that URL; it pushes (HTTP/2 server push) one synthesized `GET <push message resource>`
per receipt, whose response status says what became of the message: 204 delivered and
acknowledged, 410 expired undelivered (sections 5.1, 6.2 and 6.3).

`ReceiptMonitor` keeps one such GET open per receipt subscription, reconnecting when the
connection drops, and hands each receipt to whoever waits for it. `ReceiptBook` (in
`receipt_book`, also importable from here) is what a `Sender` keeps: the receipt
subscription of each push-service origin (sent back on later pushes so receipts are
aggregated), the monitors and the streams that follow them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

from tidings.http2 import H2Client, H2Error, H2Response, H2Stream, PushedResponse
from tidings.webpush.errors import Errno, errno_of
from tidings.webpush.links import REL_RECEIPT, link_target

if TYPE_CHECKING:
    pass

__all__ = [
    "REL_RECEIPT",
    "Http2Required",
    "Receipt",
    "ReceiptError",
    "ReceiptMonitor",
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


def __getattr__(name: str) -> object:
    """`ReceiptBook` and `ReceiptStream` moved to `receipt_book`; still importable from here."""
    if name in ("ReceiptBook", "ReceiptStream"):
        from tidings.sender import receipt_book

        return getattr(receipt_book, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
