"""`Sender`: the object an application server keeps to send Web Push messages."""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import AsyncIterable, Callable, Coroutine, Iterable
from concurrent.futures import ProcessPoolExecutor
from types import TracebackType
from typing import Any, Literal
from urllib.parse import urlsplit

from tidings import tracing
from tidings.sender.delivery import deliver
from tidings.sender.fanout import (
    Fanout,
    ResultCallback,
    SubscriptionSource,
    call_back,
)
from tidings.sender.keys import VapidKeyLike, load_vapid_key
from tidings.sender.receipt_book import (
    ReceiptBook,
    ReceiptStream,
    add_link,
    add_prefer,
    remove_link,
)
from tidings.sender.receipts import REL_RECEIPT, Receipt, origin_of, redacted
from tidings.sender.request import (
    Payload,
    PayloadSource,
    PushRequest,
    SubscriptionLike,
    assemble,
    check_options,
    encode_payload,
    encrypt_for,
    to_subscription,
)
from tidings.sender.results import (
    FanoutSummary,
    ResultKind,
    SendResult,
)
from tidings.sender.retry import RetryPolicy
from tidings.sender.transport import (
    DeadlineTransport,
    FrozenHeaders,
    HttpxTransport,
    PooledTransport,
    Transport,
    VerifyOption,
    make_ssl_context,
)
from tidings.sender.vapid_cache import VapidTokenCache
from tidings.sender.workers import make_pool
from tidings.webpush import Subscription, VapidHeaders, vapid_audience

__all__ = ["ResultCallback", "Sender"]

log = logging.getLogger("tidings.sender")


class Sender:
    """Sends Web Push messages: encrypts (RFC 8291), signs (RFC 8292), POSTs (RFC 8030).

    Keep one per application server: it holds one VAPID token per push-service origin
    (renewed before expiry), and pooled connections per origin (HTTP/2 when the service
    offers it through TLS ALPN, HTTP/1.1 keep-alive otherwise).

        async with Sender("vapid.pem", "mailto:ops@example.com") as sender:
            result = await sender.send(subscription, "hello", ttl=3600)
            summary = await sender.send_many(subscriptions, "news", ttl=3600)
    """

    def __init__(
        self,
        vapid_private_key: VapidKeyLike | None = None,
        subject: str | None = None,
        *,
        retry: RetryPolicy | None = None,
        timeout: float = 30.0,
        verify: VerifyOption = True,
        http2: bool = True,
        h2c: bool = False,
        transport: Transport | Literal["tidings", "httpx"] = "tidings",
        max_connections_per_origin: int = 100,
        connect_timeout: float = 10.0,
        vapid_expires_in: int = 12 * 3600,
        encrypt_workers: int = 0,
        on_gone: ResultCallback | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Set up a sender.

        `vapid_private_key`: a VapidKey, a PEM/DER file path, PEM text or base64url key
        (None sends without VAPID; restricted subscriptions then get 401). `subject`: a
        `mailto:` or `https:` contact, required with a key. `verify`: True (system CAs),
        False, a CA file path or an `ssl.SSLContext`. `h2c`: speak HTTP/2 without TLS
        (prior knowledge) to `http://` origins. `encrypt_workers`: processes that encrypt
        for `send_many` (0: encrypt in this process). `on_gone`: called with each `gone`
        result, to delete the subscription.
        """
        if vapid_private_key is not None:
            if subject is None:
                raise ValueError(
                    "a VAPID subject is required with a key: a mailto: or https: contact, "
                    "e.g. 'mailto:ops@example.com'"
                )
            self.vapid: VapidTokenCache | None = VapidTokenCache(
                load_vapid_key(vapid_private_key), subject, expires_in=vapid_expires_in
            )
        else:
            if subject is not None:
                raise ValueError("a VAPID subject was given without a vapid_private_key")
            self.vapid = None
        if not timeout > 0:
            raise ValueError(f"timeout must be positive, got {timeout!r}")
        if type(encrypt_workers) is not int or encrypt_workers < 0:
            raise ValueError(f"encrypt_workers must be an int >= 0, got {encrypt_workers!r}")
        self.retry = retry if retry is not None else RetryPolicy()
        self.timeout = timeout
        self.on_gone = on_gone
        self.extra_headers = dict(headers or {})
        self.encrypt_workers = encrypt_workers
        self._pool: ProcessPoolExecutor | None = None
        if transport == "tidings":
            self.transport: Transport = PooledTransport(
                verify=verify,
                http2=http2,
                h2c=h2c,
                max_connections_per_origin=max_connections_per_origin,
                connect_timeout=connect_timeout,
            )
        elif transport == "httpx":
            self.transport = HttpxTransport(
                verify=verify,
                http2=http2,
                max_connections_per_origin=max_connections_per_origin,
                connect_timeout=connect_timeout,
            )
        elif isinstance(transport, str):
            raise ValueError(
                f"transport must be 'tidings', 'httpx' or a Transport, not {transport!r}"
            )
        else:
            self.transport = transport
        # Decided once: the isinstance check of a runtime protocol is not free per request.
        self._deadline_transport: DeadlineTransport | None = (
            self.transport if isinstance(self.transport, DeadlineTransport) else None
        )
        self._vapid_by_origin: dict[str, tuple[VapidHeaders, float]] = {}
        self._verify = verify
        self._alpn = ["h2", "http/1.1"] if http2 else ["http/1.1"]
        self.receipt_book = ReceiptBook(
            ssl_context=self._monitor_ssl_context,
            after_connect=self._restore_alpn if isinstance(verify, ssl.SSLContext) else None,
            connect_timeout=connect_timeout,
        )
        """Receipt subscriptions per origin and their monitors (see `receipts`)."""

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Sender:
        if self.encrypt_workers and self._pool is None:
            self._pool = await asyncio.get_running_loop().run_in_executor(
                None, make_pool, self.encrypt_workers
            )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close connections and receipt monitors, and stop encryption workers."""
        await self.receipt_book.aclose()
        await self.transport.aclose()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    # ------------------------------------------------------------------ building

    def vapid_for(self, endpoint: str) -> VapidHeaders | None:
        """The cached VAPID token for an endpoint's origin (None without a key)."""
        if self.vapid is None:
            return None
        return self.vapid.for_endpoint(endpoint)

    def build(
        self,
        subscription: SubscriptionLike,
        data: Payload,
        *,
        ttl: int,
        urgency: str | None = None,
        topic: str | None = None,
        content_encoding: str = "aes128gcm",
        headers: dict[str, str] | None = None,
    ) -> PushRequest:
        """The exact request `send` would make (encrypted and signed), without sending it."""
        check_options(ttl, urgency, topic, content_encoding)
        sub = to_subscription(subscription)
        plaintext = encode_payload(data)
        body, coding = encrypt_for(sub, plaintext, content_encoding) if plaintext else (b"", {})
        return self._assemble(sub, body, coding, ttl, urgency, topic, headers)

    def _assemble(
        self,
        sub: Subscription,
        body: bytes,
        coding: dict[str, str],
        ttl: int,
        urgency: str | None,
        topic: str | None,
        headers: dict[str, str] | None,
    ) -> PushRequest:
        extra = {**self.extra_headers, **headers} if headers else self.extra_headers
        return assemble(
            sub,
            body,
            coding,
            ttl=ttl,
            urgency=urgency,
            topic=topic,
            vapid=self._vapid_cached(sub.endpoint),
            extra_headers=extra,
        )

    def _vapid_cached(self, endpoint: str) -> VapidHeaders | None:
        """VAPID token by endpoint prefix: avoids parsing every endpoint URL in a fan-out."""
        if self.vapid is None:
            return None
        cut = endpoint.find("/", endpoint.find("//") + 2)
        prefix = endpoint if cut < 0 else endpoint[:cut]
        hit = self._vapid_by_origin.get(prefix)
        now = time.time()
        if hit is not None and now < hit[1]:
            return hit[0]
        token = self.vapid.for_origin(vapid_audience(endpoint))
        self._vapid_by_origin[prefix] = (token, token.expires_at - self.vapid.renew_before)
        return token

    # ------------------------------------------------------------------ sending

    async def send(
        self,
        subscription: SubscriptionLike,
        data: Payload,
        *,
        ttl: int,
        urgency: str | None = None,
        topic: str | None = None,
        content_encoding: str = "aes128gcm",
        timeout: float | None = None,
        headers: dict[str, str] | None = None,
        receipt: bool = False,
    ) -> SendResult:
        """Send one message to one subscription and say what became of it.

        Raises before any network I/O on bad input: `PayloadTooLarge` (over 3993 bytes),
        `InvalidSubscription`, `ValueError` (TTL, Urgency, Topic, coding). Service answers
        and network failures never raise: they are the result's `kind`.

        `receipt=True` asks for a delivery receipt (RFC 8030 section 5.1): the result
        then has `receipt` (the receipt subscription) and `location`; see
        `wait_for_receipt` and `receipts`.
        """
        request = self.build(
            subscription,
            data,
            ttl=ttl,
            urgency=urgency,
            topic=topic,
            content_encoding=content_encoding,
            headers=headers,
        )
        assert request.subscription is not None
        if receipt:
            result = await self.deliver_with_receipt(
                request, timeout=timeout, original=subscription
            )
        else:
            result = await self.deliver(request, timeout=timeout, original=subscription)
        if result.kind is ResultKind.GONE and self.on_gone is not None:
            await call_back(self.on_gone, result)
        return result

    async def deliver(
        self,
        request: PushRequest,
        *,
        timeout: float | None = None,
        original: object = None,
    ) -> SendResult:
        """POST a built request, retrying 429/5xx/network errors by the retry policy."""
        if tracing.enabled():
            return await self._deliver_traced(request, timeout, original)
        return await self._deliver(request, timeout, original)

    def _deliver(
        self, request: PushRequest, timeout: float | None, original: object
    ) -> Coroutine[Any, Any, SendResult]:
        """`delivery.deliver` with this sender's transport, retry policy and timeout."""
        return deliver(request, *self._delivery(timeout), original)

    def _deliver_counting(
        self, request: PushRequest, timeout: float | None, original: object, summary: FanoutSummary
    ) -> Coroutine[Any, Any, SendResult | None]:
        """`_deliver` for a fan-out without `on_result`: an accepted answer is only counted
        in `summary` (None returned), with no result object made for it."""
        return deliver(request, *self._delivery(timeout), original, summary)

    def _delivery(
        self, timeout: float | None
    ) -> tuple[Transport, DeadlineTransport | None, RetryPolicy, float]:
        """`delivery.deliver`'s transport, deadline-keeping transport, policy and limit."""
        limit = self.timeout if timeout is None else timeout
        return self.transport, self._deadline_transport, self.retry, limit

    async def _deliver_traced(
        self, request: PushRequest, timeout: float | None, original: object
    ) -> SendResult:
        """`deliver` in a client span whose `traceparent` the request carries."""
        with tracing.span(
            "webpush send",
            kind="client",
            # The endpoint is a capability URL: only its host goes into the trace.
            attributes={"server.address": urlsplit(request.url).hostname or ""},
        ) as current:
            if type(request.headers) is FrozenHeaders:  # shared by a fan-out's requests
                request.headers = dict(request.headers)
            tracing.inject(request.headers, current)
            result = await self._deliver(request, timeout, original)
            if current is not None:
                current.set_attribute("tidings.result", str(result.kind))
                current.set_attribute("tidings.attempts", result.attempts)
                if result.status is not None:
                    current.set_attribute("http.response.status_code", result.status)
            return result

    async def deliver_with_receipt(
        self,
        request: PushRequest,
        *,
        timeout: float | None = None,
        original: object = None,
    ) -> SendResult:
        """`deliver` asking for a receipt: `Prefer: respond-async`, and the origin's
        receipt subscription sent back as a `Link` once the service has given one.

        If the service refuses that receipt subscription (400: it expired or the service
        lost it), the request is made once more without it, for a new one.
        """
        origin = origin_of(request.url)
        if type(request.headers) is FrozenHeaders:  # shared by a fan-out's requests
            request.headers = dict(request.headers)
        add_prefer(request.headers, "respond-async")
        async with self.receipt_book.slot(origin) as known:
            if known is not None:
                add_link(request.headers, f'<{known}>; rel="{REL_RECEIPT}"')
            result = await self.deliver(request, timeout=timeout, original=original)
            if known is not None and result.status == 400:
                log.info(
                    "%s refused receipt subscription %s; asking for a new one",
                    origin,
                    redacted(known),
                )
                self.receipt_book.forget(origin, known)
                remove_link(request.headers, known)
                attempts = result.attempts
                result = await self.deliver(request, timeout=timeout, original=original)
                result.attempts += attempts
            if result.receipt is not None:
                self.receipt_book.remember(origin, result.receipt)
            elif result.ok:  # e.g. 201: this service does not offer receipts
                self.receipt_book.without_receipts.add(origin)
        return result

    def receipts(self, target: str | SendResult) -> ReceiptStream:
        """Receipts as they arrive, by monitoring receipt subscriptions over HTTP/2.

        `target` is a push-service origin (every receipt subscription this sender got
        from it, now and later), a receipt subscription URL, or a `SendResult`:

            async with sender.receipts("https://push.example.net") as receipts:
                async for receipt in receipts:
                    print(receipt.message_url, receipt.delivered, receipt.expired)

        Raises ReceiptError when nothing can be monitored; a service speaking only
        HTTP/1.1 is reported as `Http2Required` from the iteration.
        """
        return self.receipt_book.stream(target)

    async def wait_for_receipt(self, result: SendResult, timeout: float | None = None) -> Receipt:
        """Wait for the receipt of one message sent with `receipt=True`.

        Returns the `Receipt` (`delivered` or `expired`); raises TimeoutError after
        `timeout` seconds, and ReceiptError (or its `Http2Required`) when the result has
        no receipt subscription or it cannot be monitored.
        """
        return await self.receipt_book.wait_for(result, timeout)

    def _monitor_ssl_context(self) -> ssl.SSLContext:
        """A TLS context for a receipt monitor (H2Client sets its ALPN to h2 only)."""
        if isinstance(self._verify, ssl.SSLContext):
            return self._verify
        return make_ssl_context(self._verify)

    def _restore_alpn(self) -> None:
        """Put back the sending transport's ALPN on a caller's shared SSLContext."""
        if isinstance(self._verify, ssl.SSLContext):
            self._verify.set_alpn_protocols(self._alpn)

    async def send_many(
        self,
        subscriptions: Iterable[SubscriptionLike] | AsyncIterable[SubscriptionLike],
        data: PayloadSource,
        *,
        ttl: int,
        urgency: str | None = None,
        topic: str | None = None,
        content_encoding: str = "aes128gcm",
        concurrency: int = 100,
        on_result: ResultCallback | None = None,
        timeout: float | None = None,
        headers: dict[str, str] | None = None,
        receipt: bool = False,
    ) -> FanoutSummary:
        """Send one message to many subscriptions, each encrypted for its own keys.

        `data` is the payload, or a function of the `Subscription` returning it
        (personalised messages). At most `concurrency` requests are in flight. Each
        result goes to `on_result` (and `on_gone` for gone ones) as it comes; the
        returned summary has counts per kind, elapsed time, rate, gone subscriptions and
        problem results. A subscription that cannot be used gives an `invalid` result
        instead of stopping the fan-out; a fixed payload that is too large raises first.
        `receipt=True` asks for a receipt for every message (see `send`).

        Subscriptions are taken, validated and encrypted (and `data` called) a batch
        of 64 at a time, ahead of sending them (256 per job with `encrypt_workers`).
        """
        check_options(ttl, urgency, topic, content_encoding)
        if type(concurrency) is not int or concurrency < 1:
            raise ValueError(f"concurrency must be an int >= 1, got {concurrency!r}")
        fixed: bytes | None = None
        personalise: Callable[[Subscription], Payload] | None = None
        if callable(data):
            personalise = data
        else:
            fixed = encode_payload(data)
        summary = FanoutSummary()
        started = time.perf_counter()
        source = SubscriptionSource(subscriptions)
        run = Fanout(self, source, fixed, personalise, summary, on_result)
        run.ttl, run.urgency, run.topic, run.encoding = ttl, urgency, topic, content_encoding
        run.timeout, run.headers, run.receipt = timeout, headers, receipt
        try:
            if self._pool is not None:
                await run.with_workers(self._pool, concurrency, self.encrypt_workers)
            else:
                await asyncio.gather(*(run.worker() for _ in range(concurrency)))
        finally:
            summary.elapsed = time.perf_counter() - started
        return summary
