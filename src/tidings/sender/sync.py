"""Blocking one-call sending for scripts, with pywebpush's argument names.

    from tidings.sender import webpush           # was: from pywebpush import webpush
    webpush(subscription_info, data, vapid_private_key="vapid.pem",
            vapid_claims={"sub": "mailto:ops@example.com"}, ttl=3600)

`webpush` raises `WebPushException` (with `.response`) when the push is not accepted,
like pywebpush; `send` returns the `SendResult` and raises only on bad input.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import Coroutine, Mapping
from typing import Any, TypeVar

from tidings.sender.core import Sender
from tidings.sender.keys import VapidKeyLike
from tidings.sender.request import Payload, SubscriptionLike, to_subscription
from tidings.sender.results import SendResult
from tidings.sender.retry import RetryPolicy
from tidings.sender.transport import VerifyOption

__all__ = ["WebPushException", "send", "webpush"]

log = logging.getLogger("tidings.sender")
_T = TypeVar("_T")


class WebPushException(Exception):
    """The push was not accepted; `.response` is the `SendResult` (status_code, reason)."""

    def __init__(self, message: str, response: SendResult | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.response = response

    @property
    def status_code(self) -> int | None:
        """The HTTP status the push service answered, if any."""
        return self.response.status if self.response is not None else None


def _run(coro: Coroutine[Any, Any, _T]) -> _T:
    """Run a coroutine to completion, also from code that already runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def _claims_subject_and_expiry(
    claims: Mapping[str, Any] | None, endpoint: str
) -> tuple[str | None, int]:
    """The `sub` and a validity (seconds) from pywebpush-style vapid_claims."""
    if not claims:
        return None, 12 * 3600
    subject = claims.get("sub")
    if not isinstance(subject, str):
        raise ValueError("vapid_claims needs 'sub': a mailto: or https: contact")
    aud = claims.get("aud")
    if aud is not None and not endpoint.startswith(str(aud).rstrip("/")):
        log.warning("vapid_claims aud %r is not the endpoint's origin; using the origin", aud)
    expires_in = 12 * 3600
    exp = claims.get("exp")
    if isinstance(exp, (int, float)) and not isinstance(exp, bool):
        left = int(exp - time.time())
        if 60 <= left <= 24 * 3600:
            expires_in = left
    return subject, expires_in


def send(
    subscription_info: SubscriptionLike,
    data: Payload = None,
    vapid_private_key: VapidKeyLike | None = None,
    vapid_claims: Mapping[str, Any] | None = None,
    content_encoding: str = "aes128gcm",
    curl: bool = False,
    timeout: float | None = None,
    ttl: int = 0,
    verbose: bool = False,
    headers: Mapping[str, str | int | float] | None = None,
    requests_session: object = None,
    *,
    urgency: str | None = None,
    topic: str | None = None,
    retry: RetryPolicy | None = None,
    verify: VerifyOption = True,
) -> SendResult:
    """Send one message and return its `SendResult` (blocking). Arguments as pywebpush's.

    `vapid_private_key`: a path to a PEM file, PEM text, base64url DER or raw key, a
    VapidKey or a py-vapid `Vapid`. `vapid_claims`: `{"sub": "mailto:..."}` (`aud` and
    `exp` are optional, as in pywebpush). `requests_session` is accepted and ignored.
    With `curl=True` nothing is sent: see `webpush`. Bad input raises before any I/O.
    """
    del requests_session  # accepted for pywebpush compatibility; connections are our own
    sub = to_subscription(subscription_info)
    subject, expires_in = _claims_subject_and_expiry(vapid_claims, sub.endpoint)
    if vapid_private_key is not None and subject is None:
        raise ValueError("vapid_claims={'sub': 'mailto:...'} is required with vapid_private_key")
    if vapid_private_key is None and vapid_claims:
        raise ValueError("vapid_claims given without vapid_private_key")
    if verbose:
        logging.getLogger("tidings.sender").setLevel(logging.DEBUG)
    extra = {str(k): str(v) for k, v in (headers or {}).items()}
    if "ttl" in {k.lower() for k in extra}:
        ttl = int(next(v for k, v in extra.items() if k.lower() == "ttl"))
        extra = {k: v for k, v in extra.items() if k.lower() != "ttl"}

    async def go() -> SendResult:
        async with Sender(
            vapid_private_key,
            subject if vapid_private_key is not None else None,
            retry=retry,
            timeout=timeout or 30.0,
            verify=verify,
            vapid_expires_in=expires_in,
        ) as sender:
            return await sender.send(
                sub,
                data,
                ttl=ttl,
                urgency=urgency,
                topic=topic,
                content_encoding=content_encoding,
                headers=extra,
            )

    return _run(go())


def webpush(
    subscription_info: SubscriptionLike,
    data: Payload = None,
    vapid_private_key: VapidKeyLike | None = None,
    vapid_claims: Mapping[str, Any] | None = None,
    content_encoding: str = "aes128gcm",
    curl: bool = False,
    timeout: float | None = None,
    ttl: int = 0,
    verbose: bool = False,
    headers: Mapping[str, str | int | float] | None = None,
    requests_session: object = None,
    *,
    urgency: str | None = None,
    topic: str | None = None,
    retry: RetryPolicy | None = None,
    verify: VerifyOption = True,
) -> SendResult | str:
    """pywebpush's `webpush()`: send, raise `WebPushException` unless accepted.

    With `curl=True` returns a curl command line instead of sending (the body is
    written to `encrypted.data`, as pywebpush does).
    """
    if curl:
        sub = to_subscription(subscription_info)
        subject, expires_in = _claims_subject_and_expiry(vapid_claims, sub.endpoint)
        sender = Sender(
            vapid_private_key,
            subject if vapid_private_key is not None else None,
            vapid_expires_in=expires_in,
        )
        request = sender.build(
            sub,
            data,
            ttl=ttl,
            urgency=urgency,
            topic=topic,
            content_encoding=content_encoding,
            headers={str(k): str(v) for k, v in (headers or {}).items()},
        )
        if request.body:
            with open("encrypted.data", "wb") as handle:
                handle.write(request.body)
        return request.to_curl("encrypted.data")
    result = send(
        subscription_info,
        data,
        vapid_private_key,
        vapid_claims,
        content_encoding,
        False,
        timeout,
        ttl,
        verbose,
        headers,
        requests_session,
        urgency=urgency,
        topic=topic,
        retry=retry,
        verify=verify,
    )
    if not result.ok:
        status = f"{result.status} " if result.status is not None else ""
        raise WebPushException(f"Push failed: {status}{result.kind.value}: {result.reason}", result)
    return result
