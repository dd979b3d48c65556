"""tidings.sender: the application server library (encrypt, sign, send, fan out).

    async with Sender("vapid.pem", "mailto:ops@example.com") as sender:
        result = await sender.send(subscription, "hello", ttl=3600)
        if result.kind == "gone": forget(subscription)

With `receipt=True` the push service reports delivery (RFC 8030 receipts):

        result = await sender.send(subscription, "ring", ttl=60, receipt=True)
        receipt = await sender.wait_for_receipt(result, timeout=30)   # .delivered / .expired

For scripts, `send(...)` / `webpush(...)` take pywebpush's arguments and block.
"""

from __future__ import annotations

from tidings.sender.core import ResultCallback, Sender
from tidings.sender.keys import VapidKeyLike, load_vapid_key
from tidings.sender.receipt_book import ReceiptStream
from tidings.sender.receipts import Http2Required, Receipt, ReceiptError
from tidings.sender.request import (
    CONTENT_TYPE,
    Payload,
    PayloadSource,
    PushRequest,
    SubscriptionLike,
    build_request,
)
from tidings.sender.results import (
    FanoutSummary,
    ResultKind,
    SendResult,
    ServiceError,
    parse_error_body,
)
from tidings.sender.retry import RetryPolicy, parse_retry_after
from tidings.sender.sync import WebPushException, send, webpush
from tidings.sender.transport import (
    HttpxTransport,
    PooledTransport,
    Response,
    Transport,
    TransportError,
)
from tidings.sender.vapid_cache import VapidTokenCache

__all__ = [
    "CONTENT_TYPE",
    "FanoutSummary",
    "Http2Required",
    "HttpxTransport",
    "Payload",
    "PayloadSource",
    "PooledTransport",
    "PushRequest",
    "Receipt",
    "ReceiptError",
    "ReceiptStream",
    "Response",
    "ResultCallback",
    "ResultKind",
    "RetryPolicy",
    "SendResult",
    "Sender",
    "ServiceError",
    "SubscriptionLike",
    "Transport",
    "TransportError",
    "VapidKeyLike",
    "VapidTokenCache",
    "WebPushException",
    "build_request",
    "load_vapid_key",
    "parse_error_body",
    "parse_retry_after",
    "send",
    "webpush",
]
