"""RFC 8030's resources: push with receipts, subscribe, monitor, unsubscribe.

Each function turns one request into `PushService` calls and a response; monitors
stay open (HTTP/2) and deliver by server push until the client goes away.
"""

from __future__ import annotations

import json
import re
import time

from tidings.service.core import SET_PATH, PushService
from tidings.service.errors import Errno, ServiceError
from tidings.service.http.messages import Request, Response, ServerPushChannel
from tidings.service.monitor import PushMonitor, ReceiptMonitor
from tidings.service.ws_session import decode_application_server_key
from tidings.webpush import HeaderError, InvalidKeyError, Urgency, parse_urgency
from tidings.webpush.links import (
    REL_PUSH,
    REL_RECEIPT,
    REL_SET,
    WEBPUSH_OPTIONS,
    link_target,
    link_value,
)

_WAIT = re.compile(r"(?:^|[\s,;])wait\s*=\s*(\d+)")


async def push(service: PushService, request: Request, token: str) -> Response:
    """POST to a push resource: 201, or 202 with a receipt subscription."""
    accepted = await service.accept_push(
        token,
        request.headers,
        request.body,
        client=request.client,
        request_id=request.request_id,
    )
    request.message_id = accepted.message_id
    request.trace_id = accepted.trace_id
    headers = {"location": accepted.location, "ttl": str(accepted.ttl)}
    if accepted.receipt_url is not None:
        headers["link"] = link_value(accepted.receipt_url, REL_RECEIPT)
    return Response(accepted.status, headers)


def _application_server_key(request: Request) -> bytes | None:
    """The VAPID key of a subscribe request's webpush options (RFC 8292 section 4.2)."""
    if not request.body.strip():
        return None
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in (WEBPUSH_OPTIONS, "application/json"):
        raise ServiceError(415, Errno.BAD_ENCODING, f"subscribe options must be {WEBPUSH_OPTIONS}")
    try:
        options = json.loads(request.body)
    except (ValueError, RecursionError):  # RecursionError: arrays nested thousands deep
        raise ServiceError(400, Errno.BAD_BODY, "subscribe options are not JSON") from None
    if not isinstance(options, dict):
        raise ServiceError(400, Errno.BAD_BODY, "subscribe options must be a JSON object")
    key = options.get("vapid")
    if key is None:
        return None
    if not isinstance(key, str):
        raise ServiceError(400, Errno.BAD_BODY, "vapid must be a base64url string")
    try:
        return decode_application_server_key(key)
    except (ValueError, InvalidKeyError):
        raise ServiceError(
            400, Errno.BAD_BODY, "vapid is not an uncompressed P-256 public key"
        ) from None


async def subscribe(service: PushService, request: Request) -> Response:
    """POST /subscribe: 201 with the subscription, push resource and set links."""
    key = _application_server_key(request)
    named_set = link_target(request.headers.get("link", ""), REL_SET)
    set_token: str | None = None
    if named_set is not None:
        set_token = named_set.rsplit(SET_PATH, 1)[-1] if SET_PATH in named_set else "-"
    created = await service.subscribe(set_token, key)
    links = ", ".join(
        (link_value(created.push_url, REL_PUSH), link_value(created.set_url, REL_SET))
    )
    return Response(201, {"location": created.subscription_url, "link": links})


def _monitor_channel(request: Request) -> ServerPushChannel:
    if request.push_channel is None:
        raise ServiceError(
            400,
            Errno.NEEDS_HTTP2,
            "monitoring needs HTTP/2 server push (RFC 8030 section 6); "
            "connect with HTTP/2 (h2 over TLS, or cleartext h2c with prior knowledge)",
        )
    if not request.push_channel.enabled:
        raise ServiceError(
            400,
            Errno.NEEDS_HTTP2,
            "this connection disabled server push (SETTINGS_ENABLE_PUSH 0), the only way "
            "messages are delivered (RFC 8030 section 6); enable it to monitor",
        )
    return request.push_channel


def _wait_zero(request: Request) -> bool:
    match = _WAIT.search(request.headers.get("prefer", "").lower())
    return match is not None and int(match.group(1)) == 0


def _urgency_filter(request: Request) -> Urgency:
    """The lowest urgency the user agent wants now; without the header, everything."""
    value = request.headers.get("urgency")
    if value is None or not value.strip():
        return Urgency.VERY_LOW
    try:
        return parse_urgency(value)
    except HeaderError as exc:
        raise ServiceError(400, Errno.BAD_URGENCY, str(exc)) from None


def _check_monitors(service: PushService, open_now: int, of: str) -> None:
    """429 when one more monitor would pass `max_monitors_per_user_agent`."""
    if open_now >= service.config.max_monitors_per_user_agent:
        raise ServiceError(
            429,
            Errno.TOO_MANY_MONITORS,
            f"this {of} has {open_now} monitors open already; close one first",
            headers={"retry-after": "60"},
        )


async def _monitor(
    service: PushService, request: Request, uaid: str, channel_id: str | None
) -> Response:
    channel = _monitor_channel(request)
    monitors = [agent for agent in service.hub.agents(uaid) if not agent.exclusive]
    _check_monitors(service, len(monitors), "user agent")
    monitor = PushMonitor(service, channel, uaid, channel_id, _urgency_filter(request))
    service.hub.attach(uaid, monitor)
    try:
        await monitor.flush_stored()
        if _wait_zero(request):
            await monitor.settle()  # live messages that arrived meanwhile go out too
            return Response(204)
        await channel.closed.wait()
        return Response(204)  # never sent: the client reset the stream
    finally:
        service.hub.detach(uaid, monitor)
        monitor.stop()
        if monitor.sent_any and service.hub.is_connected(uaid):
            # What this monitor pushed may never be acknowledged now; the user agent's
            # other connections get it (they drop what they already sent).
            await service.redeliver(uaid)


async def monitor_subscription(service: PushService, request: Request, token: str) -> Response:
    """GET of a push message subscription (section 6.1)."""
    uaid, channel_id = service.open_subscription(token)
    if await service.store.get_subscription(uaid, channel_id) is None:
        raise ServiceError(404, Errno.SUBSCRIPTION_GONE, "the subscription has been removed")
    await service.store.touch_user_agent(uaid, time.time())  # seen: user_agent_expiry
    return await _monitor(service, request, uaid, channel_id)


async def monitor_set(service: PushService, request: Request, token: str) -> Response:
    """GET of a subscription set (section 6.1): messages of every subscription in it."""
    uaid = service.open_set(token)
    if not await service.store.touch_user_agent(uaid, time.time()):  # seen: user_agent_expiry
        raise ServiceError(404, Errno.SUBSCRIPTION_GONE, "the subscription set has been removed")
    return await _monitor(service, request, uaid, None)


async def delete_subscription(service: PushService, token: str) -> Response:
    """DELETE of a push message subscription: later pushes get 410."""
    uaid, channel_id = service.open_subscription(token)
    if not await service.store.delete_subscription(uaid, channel_id):
        raise ServiceError(404, Errno.SUBSCRIPTION_GONE, "the subscription was already removed")
    return Response(204)


async def delete_set(service: PushService, token: str) -> Response:
    """DELETE of a subscription set: every subscription in it is removed."""
    uaid = service.open_set(token)
    if not await service.store.has_user_agent(uaid):
        raise ServiceError(404, Errno.SUBSCRIPTION_GONE, "the subscription set was already removed")
    await service.store.delete_user_agent(uaid)
    return Response(204)


async def monitor_receipts(service: PushService, request: Request, token: str) -> Response:
    """GET of a receipt subscription (section 6.3): receipts arrive as server pushes."""
    receipt_id = service.open_receipt(token)
    if not await service.store.use_receipt_subscription(receipt_id, time.time()):
        raise ServiceError(404, Errno.NOT_FOUND, "no such receipt subscription")
    channel = _monitor_channel(request)
    _check_monitors(service, service.hub.receipt_listeners(receipt_id), "receipt subscription")
    monitor = ReceiptMonitor(service, channel, receipt_id)
    service.hub.listen_receipts(receipt_id, monitor)
    try:
        await monitor.run()
    finally:
        service.hub.unlisten_receipts(receipt_id, monitor)
    return Response(204)


async def delete_receipts(service: PushService, token: str) -> Response:
    """DELETE of a receipt subscription (section 7.3): no more receipts on it."""
    receipt_id = service.open_receipt(token)
    if not await service.store.delete_receipt_subscription(receipt_id):
        raise ServiceError(404, Errno.NOT_FOUND, "no such receipt subscription")
    return Response(204)
