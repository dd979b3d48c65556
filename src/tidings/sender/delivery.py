"""One push request delivered: the exchange on a transport, its retries by the
`RetryPolicy`, and the push service's answer read into a `SendResult`."""

from __future__ import annotations

import asyncio
import logging
from typing import overload
from urllib.parse import urljoin

from tidings.sender.fanout import placeholder_subscription
from tidings.sender.request import PushRequest
from tidings.sender.results import (
    FanoutSummary,
    ResultKind,
    SendResult,
    classify_status,
    parse_error_body,
)
from tidings.sender.retry import RetryPolicy, parse_retry_after
from tidings.sender.transport import DeadlineTransport, Response, Transport, TransportError
from tidings.webpush import Subscription
from tidings.webpush.links import REL_RECEIPT, link_target

__all__ = ["deliver", "result_of"]

log = logging.getLogger("tidings.sender")


@overload
async def deliver(
    request: PushRequest,
    transport: Transport,
    keeps_deadlines: DeadlineTransport | None,
    policy: RetryPolicy,
    limit: float,
    original: object,
    count_accepted: None = None,
) -> SendResult: ...


@overload
async def deliver(
    request: PushRequest,
    transport: Transport,
    keeps_deadlines: DeadlineTransport | None,
    policy: RetryPolicy,
    limit: float,
    original: object,
    count_accepted: FanoutSummary,
) -> SendResult | None: ...


async def deliver(
    request: PushRequest,
    transport: Transport,
    keeps_deadlines: DeadlineTransport | None,
    policy: RetryPolicy,
    limit: float,
    original: object,
    count_accepted: FanoutSummary | None = None,
) -> SendResult | None:
    """POST `request` on `transport` (`keeps_deadlines`: the same transport when it bounds
    each exchange itself), each attempt within `limit` seconds, retrying 429/5xx and
    network errors as `policy` says.

    `count_accepted`: a fan-out's summary, for a caller that nobody shows accepted results
    to: an accepted answer is counted there and None returned, no `SendResult` made.
    """
    sub = request.subscription or placeholder_subscription({"endpoint": request.url})
    attempt = 0
    while True:
        attempt += 1
        try:
            if keeps_deadlines is not None:  # bounds the exchange without a timer each
                response = await keeps_deadlines.request(
                    request.method, request.url, request.headers, request.body, timeout=limit
                )
            else:
                async with asyncio.timeout(limit):
                    response = await transport.request(
                        request.method, request.url, request.headers, request.body
                    )
        except TimeoutError:
            problem = f"no answer within {limit:g} s"
        except TransportError as exc:
            problem = str(exc)
        else:
            kind = classify_status(response.status)
            if kind is ResultKind.ACCEPTED and count_accepted is not None:
                count_accepted.counts[kind] += 1
                return None
            if kind is ResultKind.RETRY_LATER:
                retry_after = parse_retry_after(response.headers.get("retry-after"))
                delay = policy.next_delay(attempt, retry_after)
                if delay is not None:
                    log.debug(
                        "%s answered %s; retrying in %.2fs", request.url, response.status, delay
                    )
                    await asyncio.sleep(delay)
                    continue
                return result_of(sub, kind, response, attempt, original, retry_after)
            return result_of(sub, kind, response, attempt, original, None)
        delay = policy.next_delay(attempt, None)
        if delay is None:
            return SendResult(
                subscription=sub,
                kind=ResultKind.FAILED,
                reason=problem,
                attempts=attempt,
                original=original,
            )
        log.debug("%s: %s; retrying in %.2fs", request.url, problem, delay)
        await asyncio.sleep(delay)


def result_of(
    sub: Subscription,
    kind: ResultKind,
    response: Response,
    attempts: int,
    original: object,
    retry_after: float | None,
) -> SendResult:
    """The `SendResult` of a final answer (`kind` from its status)."""
    headers = response.headers
    ttl_text = headers.get("ttl")
    result = SendResult(
        subscription=sub,
        kind=kind,
        status=response.status,
        location=headers.get("location"),
        ttl=int(ttl_text) if ttl_text is not None and ttl_text.strip().isdigit() else None,
        attempts=attempts,
        retry_after=retry_after,
        http_version=response.http_version,
        original=original,
    )
    if kind is not ResultKind.ACCEPTED:
        error = parse_error_body(response.body)
        result.error = error
        if error is not None:
            result.reason = str(error)
        elif response.body:
            result.reason = response.body[:300].decode("utf-8", "replace").strip()
        else:
            result.reason = f"HTTP {response.status}"
    elif response.status == 202:
        target = link_target(headers.get("link"), REL_RECEIPT)
        if target:
            result.receipt = urljoin(sub.endpoint, target)
    return result
