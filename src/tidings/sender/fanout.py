"""`Sender.send_many`'s machinery: one message to many subscriptions, each encrypted for
its own keys, with at most `concurrency` requests in flight.

Subscriptions are taken from the caller's (sync or async) iterable a batch at a time,
validated, encrypted (here, or ahead of time by encryption worker processes) and
assembled, then sent by `Sender.deliver`; each result goes to the caller's callbacks and
into the `FanoutSummary`.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import os
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import TYPE_CHECKING, cast

from tidings import tracing
from tidings.sender.request import (
    Payload,
    PushRequest,
    SubscriptionLike,
    encode_payload,
    encrypt_for,
    to_subscription,
    to_subscription_for_worker,
)
from tidings.sender.results import (
    FanoutSummary,
    ResultKind,
    SendResult,
)
from tidings.sender.transport import FrozenHeaders
from tidings.sender.workers import EncryptedItem, encrypt_chunk
from tidings.webpush import Subscription, VapidHeaders, WebPushError, encrypt_for_key

log = logging.getLogger("tidings.sender")

if TYPE_CHECKING:
    from tidings.sender.core import Sender

ResultCallback = Callable[[SendResult], Awaitable[None] | None]
"""Called with each result; may be a plain function or a coroutine function."""

CHUNK = 256
"""Subscriptions per job sent to an encryption worker. Measured with 2 workers on 2 cores
(bench/fanout.py): chunks of 64 left the event loop's process starved, encrypting a
third of the messages itself (7,700-9,500 msg/s); 128 to 512 keep the workers ahead
(8,700-11,300 msg/s, the loop's process at about 55 instead of 90 CPU µs/msg)."""
BATCH = 64
"""Subscriptions an in-process fan-out validates and encrypts in one go before sending.

Working through a batch of the same kind of work (all the decoding, then all the
encryption) instead of interleaving it one message at a time with network I/O keeps the
CPU's caches warm and lets the sockets' answers be read in bulk: measured 234 -> 162
CPU µs per message in bench/fanout.py (one process, 10,000 subscriptions).
"""
STARVEDBATCH = 8
"""Subscriptions the event loop's process encrypts itself when the workers are behind."""


async def call_back(callback: ResultCallback, result: SendResult) -> None:
    outcome = callback(result)
    if inspect.isawaitable(outcome):
        await outcome


class SubscriptionSource:
    """Subscriptions from a sync or async iterable, taken a few at a time by many workers."""

    def __init__(self, items: Iterable[SubscriptionLike] | AsyncIterable[SubscriptionLike]):
        self.sync: Iterator[SubscriptionLike] | None = None
        self.aiter: AsyncIterator[SubscriptionLike] | None = None
        if isinstance(items, AsyncIterable):
            self.aiter = aiter(items)
            self.lock = asyncio.Lock()
        else:
            self.sync = iter(items)
        self.exhausted = False

    async def take(self, n: int) -> list[SubscriptionLike]:
        if self.exhausted:
            return []
        if self.sync is not None:
            batch = list(itertools.islice(self.sync, n))
        else:
            assert self.aiter is not None
            batch = []
            async with self.lock:
                for _ in range(n):
                    try:
                        batch.append(await anext(self.aiter))
                    except StopAsyncIteration:
                        break
        if len(batch) < n:
            self.exhausted = True
        return batch


class Fanout:
    """The state of one send_many run, shared by its worker coroutines."""

    ttl: int
    urgency: str | None
    topic: str | None
    encoding: str
    timeout: float | None
    headers: dict[str, str] | None
    receipt: bool = False

    def __init__(
        self,
        sender: Sender,
        source: SubscriptionSource,
        fixed: bytes | None,
        personalise: Callable[[Subscription], Payload] | None,
        summary: FanoutSummary,
        on_result: ResultCallback | None,
    ) -> None:
        self.sender = sender
        self.source = source
        self.fixed = fixed
        self.personalise = personalise
        self.summary = summary
        self.on_result = on_result
        self.ready: deque[tuple[object, Subscription, EncryptedItem]] = deque()
        self.built: deque[tuple[object, PushRequest] | SendResult] = deque()
        self.in_flight = 0
        self.wake = asyncio.Event()
        self.shared_headers: dict[tuple[int, bool], tuple[VapidHeaders | None, FrozenHeaders]] = {}

    def _prepare(
        self, item: SubscriptionLike, for_worker: bool = False
    ) -> tuple[Subscription, bytes] | SendResult:
        """The subscription and its plaintext, or an `invalid` result.

        `for_worker`: the point is left for the encryption worker to check (`_send` turns
        its refusal into the same `invalid` result).
        """
        try:
            sub = to_subscription_for_worker(item) if for_worker else to_subscription(item)
        except (WebPushError, ValueError) as exc:
            return unusable_result(item, exc)
        if self.personalise is None:
            assert self.fixed is not None
            return sub, self.fixed
        try:
            return sub, encode_payload(self.personalise(sub))
        except (WebPushError, ValueError, TypeError) as exc:
            return invalid_result(item, f"personalised payload refused: {exc}", sub)

    async def _finish(self, result: SendResult) -> None:
        self.summary.add(result)
        if self.on_result is not None or result.kind is ResultKind.GONE:
            await self._call_backs(result)

    async def _call_backs(self, result: SendResult) -> None:
        """The caller's callbacks for a counted result: `on_result`, and `on_gone`."""
        if self.on_result is not None:
            await call_back(self.on_result, result)
        if result.kind is ResultKind.GONE and self.sender.on_gone is not None:
            await call_back(self.sender.on_gone, result)

    async def _send(self, item: object, sub: Subscription, encrypted: EncryptedItem) -> None:
        if isinstance(encrypted, str):
            # Check the subscription fully (a worker may have been the first to decode its
            # point): an unusable one gets the same result as when built in this process.
            try:
                checked = to_subscription(cast(SubscriptionLike, item))
            except (WebPushError, ValueError) as exc:
                await self._finish(unusable_result(item, exc))
            else:
                await self._finish(invalid_result(item, encrypted, checked))
            return
        body, coding = encrypted
        if self.encoding == "aes128gcm" and not self.receipt:
            request = PushRequest(sub.endpoint, self._shared_headers(sub, body), body, "POST", sub)
        else:
            request = self.sender._assemble(
                sub, body, coding, self.ttl, self.urgency, self.topic, self.headers
            )
        await self._deliver(item, request)

    async def _deliver(self, item: object, request: PushRequest) -> None:
        if self.receipt:
            result = await self.sender.deliver_with_receipt(
                request, timeout=self.timeout, original=item
            )
        elif tracing.enabled():
            result = await self.sender.deliver(request, timeout=self.timeout, original=item)
        else:  # Sender.deliver without its tracing check: one coroutine less per message
            result = await self.sender._deliver(request, self.timeout, item)
        await self._finish(result)

    def _encrypt_here(self, sub: Subscription, plaintext: bytes) -> EncryptedItem:
        if not plaintext:
            return b"", {}
        try:
            return encrypt_for(sub, plaintext, self.encoding)
        except (WebPushError, ValueError) as exc:
            return f"cannot encrypt for this subscription: {exc}"

    async def worker(self) -> None:
        """Send the next built request; when none is left, build a batch of them here."""
        built = self.built
        sender, summary, timeout = self.sender, self.summary, self.timeout
        while True:
            if not built:
                batch = await self.source.take(BATCH)
                if batch:
                    self._build_batch(batch)
                elif not built:  # (another worker may have built the last batch meanwhile)
                    return
                continue
            job = built.popleft()
            if isinstance(job, SendResult):
                await self._finish(job)
            elif self.receipt or tracing.enabled():
                await self._deliver(*job)
            elif self.on_result is None:
                # `_deliver` and `_finish` inlined for the common case: two coroutines
                # less per message, and no result object for an accepted message, which
                # nobody would see (the summary keeps only gone and problem results).
                item, request = job
                counted = await sender._deliver_counting(request, timeout, item, summary)
                if counted is not None:
                    summary.add(counted)
                    if counted.kind is ResultKind.GONE:
                        await self._call_backs(counted)
            else:
                item, request = job
                result = await sender._deliver(request, timeout, item)
                summary.add(result)
                await self._call_backs(result)

    def _build_batch(self, batch: list[SubscriptionLike]) -> None:
        """Validate a batch, then encrypt and assemble it, into `built` (in order)."""
        built = self.built
        prepared = [(item, self._prepare(item)) for item in batch]
        if self.encoding == "aes128gcm" and not self.receipt:
            self._build_aes128gcm(prepared)
            return
        sender = self.sender
        ttl, urgency, topic, headers = self.ttl, self.urgency, self.topic, self.headers
        for item, ready in prepared:
            if isinstance(ready, SendResult):
                built.append(ready)
                continue
            sub, plaintext = ready
            encrypted = self._encrypt_here(sub, plaintext)
            if isinstance(encrypted, str):
                built.append(invalid_result(item, encrypted, sub))
                continue
            body, coding = encrypted
            request = sender._assemble(sub, body, coding, ttl, urgency, topic, headers)
            built.append((item, request))

    def _build_aes128gcm(
        self, prepared: list[tuple[SubscriptionLike, tuple[Subscription, bytes] | SendResult]]
    ) -> None:
        """`_build_batch` for RFC 8291 bodies: the salts drawn for the whole batch at once,
        and the headers (the same for every request to an origin) shared, made once."""
        built = self.built
        salts = os.urandom(16 * len(prepared))
        for at, (item, ready) in enumerate(prepared):
            if isinstance(ready, SendResult):
                built.append(ready)
                continue
            sub, plaintext = ready
            body = b""
            if plaintext:
                salt = salts[16 * at : 16 * at + 16]
                try:
                    body = encrypt_for_key(
                        plaintext, sub.public_key, sub.p256dh, sub.auth, salt=salt
                    )
                except (WebPushError, ValueError) as exc:
                    built.append(
                        invalid_result(item, f"cannot encrypt for this subscription: {exc}", sub)
                    )
                    continue
            headers = self._shared_headers(sub, body)
            built.append((item, PushRequest(sub.endpoint, headers, body, "POST", sub)))

    def _shared_headers(self, sub: Subscription, body: bytes) -> FrozenHeaders:
        """The headers of an aes128gcm request to `sub`'s origin: made once per VAPID token
        (one per origin, renewed before it expires), then shared by every such request."""
        token = self.sender._vapid_cached(sub.endpoint)
        key = (id(token), bool(body))
        hit = self.shared_headers.get(key)
        if hit is not None and hit[0] is token:
            return hit[1]
        coding = {"Content-Encoding": "aes128gcm"} if body else {}
        request = self.sender._assemble(
            sub, body, coding, self.ttl, self.urgency, self.topic, self.headers
        )
        headers = FrozenHeaders(request.headers)
        self.shared_headers[key] = (token, headers)
        return headers

    async def with_workers(self, pool: ProcessPoolExecutor, concurrency: int, workers: int) -> None:
        """Encrypt in `pool` ahead of the senders; senders encrypt themselves when starved."""
        producer = asyncio.create_task(self._produce(pool, workers * 3))
        try:
            await asyncio.gather(*(self._pooled_worker() for _ in range(concurrency)))
        finally:
            producer.cancel()
            await asyncio.gather(producer, return_exceptions=True)

    async def _produce(self, pool: ProcessPoolExecutor, max_chunks: int) -> None:
        loop = asyncio.get_running_loop()
        pending: set[asyncio.Future[None]] = set()

        async def run_chunk(items: list[tuple[object, Subscription, bytes]]) -> None:
            triples = [(sub.p256dh, sub.auth, plaintext) for _, sub, plaintext in items]
            try:
                encrypted = await loop.run_in_executor(pool, encrypt_chunk, triples, self.encoding)
            except Exception as exc:  # a dead worker: encrypt here instead
                log.warning("encryption worker failed (%s); encrypting in-process", exc)
                encrypted = [self._encrypt_here(sub, pt) for _, sub, pt in items]
            for (item, sub, _), enc in zip(items, encrypted, strict=True):
                self.ready.append((item, sub, enc))
            self.in_flight -= len(items)
            self.wake.set()

        while not self.source.exhausted:
            while len(pending) >= max_chunks:
                _, pending_left = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                pending = set(pending_left)
            batch = await self.source.take(CHUNK)
            items: list[tuple[object, Subscription, bytes]] = []
            for item in batch:
                # (A personalised payload's function is shown checked subscriptions only.)
                prepared = self._prepare(item, for_worker=self.personalise is None)
                if isinstance(prepared, SendResult):
                    await self._finish(prepared)
                else:
                    items.append((item, prepared[0], prepared[1]))
            if items:
                self.in_flight += len(items)
                pending.add(asyncio.ensure_future(run_chunk(items)))
        if pending:
            await asyncio.gather(*pending)
        self.wake.set()

    async def _pooled_worker(self) -> None:
        built = self.built
        while True:
            if built:
                job = built.popleft()
                if isinstance(job, SendResult):
                    await self._finish(job)
                else:
                    await self._deliver(*job)
                continue
            if self.ready:
                item, sub, encrypted = self.ready.popleft()
                await self._send(item, sub, encrypted)
                continue
            if not self.source.exhausted:
                # Starved (the workers are behind): build a few here, as a batch.
                batch = await self.source.take(STARVEDBATCH)
                if batch:
                    self._build_batch(batch)
                continue
            if self.in_flight <= 0 and not self.ready and not built:
                return
            self.wake.clear()
            await self.wake.wait()


def unusable_result(item: object, problem: Exception) -> SendResult:
    return invalid_result(item, f"unusable subscription: {problem}")


def invalid_result(item: object, reason: str, sub: Subscription | None = None) -> SendResult:
    return SendResult(
        subscription=sub if sub is not None else placeholder_subscription(item),
        kind=ResultKind.INVALID,
        reason=reason,
        attempts=0,
        original=item,
    )


def placeholder_subscription(item: object) -> Subscription:
    """A stand-in Subscription for an unusable one, keeping its endpoint when it has one."""
    endpoint = "https://invalid.invalid/"
    if isinstance(item, dict) and isinstance(item.get("endpoint"), str):
        endpoint = item["endpoint"]
    try:
        return Subscription(endpoint, _DUMMY_P256DH, b"\0" * 16)
    except WebPushError:
        return Subscription("https://invalid.invalid/", _DUMMY_P256DH, b"\0" * 16)


_DUMMY_P256DH = bytes.fromhex(
    "046b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c296"
    "4fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5"
)
