"""A sender's receipt state: the receipt subscription of each push-service origin (sent
back on later receipt requests, so the service aggregates receipts), the monitor of each
receipt subscription, the streams that follow them, and the request headers that ask
for a receipt (RFC 8030 section 5.1)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Callable
from types import TracebackType
from typing import TYPE_CHECKING, cast
from urllib.parse import urljoin, urlsplit

from tidings.sender.receipts import (
    Receipt,
    ReceiptError,
    ReceiptMonitor,
    _Item,
    origin_of,
)

if TYPE_CHECKING:
    from tidings.sender.results import SendResult

__all__ = ["ReceiptBook", "ReceiptStream", "add_link", "add_prefer", "remove_link"]


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


def _header_name(headers: dict[str, str], name: str) -> str:
    """The spelling `headers` uses for `name` (case-insensitive), or `name`."""
    lower = name.lower()
    return next((key for key in headers if key.lower() == lower), name)


def add_prefer(headers: dict[str, str], preference: str) -> None:
    """Add `preference` (e.g. respond-async) to the request's `Prefer` header."""
    key = _header_name(headers, "Prefer")
    current = headers.get(key, "")
    if preference not in current.lower():
        headers[key] = f"{current}, {preference}" if current.strip() else preference


def add_link(headers: dict[str, str], value: str) -> None:
    """Add a link (e.g. the receipt subscription sent back) to the request's `Link`."""
    key = _header_name(headers, "Link")
    current = headers.get(key, "")
    headers[key] = f"{current}, {value}" if current.strip() else value


def remove_link(headers: dict[str, str], target: str) -> None:
    """Take the link to `target` out of the request's `Link` header."""
    key = _header_name(headers, "Link")
    kept = [v for v in headers.get(key, "").split(", ") if v and f"<{target}>" not in v]
    if kept:
        headers[key] = ", ".join(kept)
    else:
        headers.pop(key, None)
