"""The service's HTTP resources, independent of HTTP/1.1 or HTTP/2.

POST    /push/<token>   an application server pushes a message (RFC 8030 section 5)
GET     /m/<token>      the message's status, for the sender that signed it (VAPID)
DELETE  /m/<token>      cancel an undelivered message (RFC 8030 section 5.3)
GET     /health         liveness and store status
GET     /openapi.json   the OpenAPI description of this API (openapi.py)
OPTIONS any of these    204 with Allow, and no CORS grant (see docs/security.md)
GET     /               (WebSocket upgrade) Firefox's push protocol, see ws_session.py
"""

from __future__ import annotations

import json
import logging

from tidings.service import rfc8030
from tidings.service.core import (
    MESSAGE_PATH,
    PUSH_PATH,
    RECEIPT_PATH,
    SET_PATH,
    SUBSCRIBE_PATH,
    SUBSCRIPTION_PATH,
    PushService,
    not_ready,
    store_unavailable,
)
from tidings.service.errors import Errno, ServiceError
from tidings.service.forwarded import parse_proxies, real_client
from tidings.service.http.messages import Request, Response
from tidings.service.limits import Limit
from tidings.service.logs import escape, request_id
from tidings.service.openapi import openapi_document
from tidings.service.store import StoreUnavailable
from tidings.service.web import WEB_PREFIXES, WebRoutes

log = logging.getLogger("tidings.http")

# Bodies the service ever needs are small: a push (max_body) or a JSON document.
MAX_REQUEST_BODY = 64 * 1024
# Capability resources other than push endpoints (whose pushes are counted inside).
CAPABILITY_PATHS = (MESSAGE_PATH, SUBSCRIPTION_PATH, SET_PATH, RECEIPT_PATH)
# The errno of an answer the servers give before the routes see a request.
_PLAIN_ERRNO = {413: Errno.BODY_TOO_LARGE, 429: Errno.RATE_LIMITED}


# Answered to anyone without a token, each charged to the client address.
_UNAUTHENTICATED_READS = frozenset({"/health", "/openapi.json"})


def redact_path(path: str) -> str:
    """A path fit for logs: capability tokens are secrets, so only their start is kept."""
    for prefix in (PUSH_PATH, MESSAGE_PATH, SUBSCRIPTION_PATH, SET_PATH, RECEIPT_PATH):
        if path.startswith(prefix) and len(path) > len(prefix) + 8:
            return path[: len(prefix) + 8] + "..."
    return path[:200]


def allowed_methods(path: str) -> str | None:
    """The methods the API answers on `path` (None: not an API path)."""
    for prefix, methods in (
        (PUSH_PATH, "POST"),
        (MESSAGE_PATH, "GET, DELETE"),
        (SUBSCRIPTION_PATH, "GET, DELETE"),
        (SET_PATH, "GET, DELETE"),
        (RECEIPT_PATH, "GET, DELETE"),
    ):
        if path.startswith(prefix):
            return methods
    return {"/subscribe": "POST", "/health": "GET, HEAD", "/openapi.json": "GET, HEAD"}.get(path)


def options(path: str) -> Response | None:
    """The answer to OPTIONS (a CORS preflight, usually) on an API path.

    Push resources are for application servers, not web pages: no CORS grant is made,
    so a browser refuses to send a cross-origin push (TTL is not a CORS-safelisted
    header, so every valid push needs the preflight). Only the public API description
    may be read from any origin.
    """
    methods = allowed_methods(path)
    if methods is None:
        return None
    headers = {"allow": f"{methods}, OPTIONS"}
    if path == "/openapi.json":
        headers |= {"access-control-allow-origin": "*", "access-control-allow-methods": "GET"}
    return Response(204, headers)


def _method_not_allowed(allowed: str) -> ServiceError:
    return ServiceError(
        405, Errno.METHOD_NOT_ALLOWED, f"use {allowed} here", headers={"allow": allowed}
    )


def _deleted_not_withdrawn() -> Response:
    # 202, not 204: the message is deleted from the store, but the node holding its user
    # agent could not be told (the cluster bus is down), so a copy it holds unsent may
    # still be delivered. A 2xx all the same: a retry would only answer 404.
    return Response.json(
        202,
        {
            "status": "deleted",
            "message": "the push message was deleted, but the node holding its user agent"
            " could not be told: a copy it already holds may still be delivered",
        },
        {"cache-control": "no-store"},
    )


class Routes:
    """Maps requests to `PushService` calls and results to responses."""

    def __init__(self, service: PushService) -> None:
        self.service = service
        self.web = WebRoutes(service, self.handle)  # pages, /metrics, /api/stats, demo
        self._openapi_body: bytes | None = None
        self.trusted_proxies = parse_proxies(service.config.trusted_proxies)

    def client_of(self, request: Request) -> str:
        """The real client of a request: its peer, or whom trusted proxies forwarded."""
        return real_client(request.client, request.headers, self.trusted_proxies)

    def body_limit(self, method: str, path: str) -> int:
        """The largest body accepted for this request (checked before reading it all)."""
        if path.startswith(PUSH_PATH):
            return self.service.config.max_body
        return MAX_REQUEST_BODY

    def too_large(self, request: Request) -> Response:
        """The answer to a request whose body was over `body_limit` (not read in full)."""
        limit = self.body_limit(request.method, request.path)
        return Response.error(
            ServiceError(413, Errno.BODY_TOO_LARGE, f"the body is over {limit} bytes")
        )

    def _openapi(self) -> Response:
        if self._openapi_body is None:
            config = self.service.config
            document = openapi_document(config.origin, max_body=config.max_body)
            self._openapi_body = json.dumps(document, indent=1).encode()
        headers = {"content-type": "application/json", "access-control-allow-origin": "*"}
        return Response(200, headers, self._openapi_body)

    @staticmethod
    def plain_error(status: int, message: str) -> Response:
        """A JSON error for a request that could not even be parsed."""
        errno = _PLAIN_ERRNO.get(status, Errno.MALFORMED_REQUEST)
        return Response.error(ServiceError(status, errno, message))

    async def handle(self, request: Request) -> Response:
        """Answer one request; never raises. Answers to pushes are counted by status."""
        request.request_id = request_id(request.headers.get("x-request-id"))
        request.client = self.client_of(request)  # limits and logs see the real client
        path = request.path
        try:
            if request.method == "POST" and path.startswith(PUSH_PATH) and self.service.ready:
                # The request that comes most, without `_route`'s frame.
                response = await rfc8030.push(self.service, request, path[len(PUSH_PATH) :])
            else:
                response = await self._route(request)
        except ServiceError as error:
            response = Response.error(error)
        except StoreUnavailable as exc:
            response = Response.error(store_unavailable(exc))
        except Exception:
            log.exception(
                "unexpected error on %s %s",
                escape(request.method),
                escape(redact_path(request.path)),
            )
            response = Response.error(
                ServiceError(500, Errno.INTERNAL, "internal error; it has been logged")
            )
        response.headers["x-request-id"] = request.request_id
        if path.startswith(PUSH_PATH):
            self.service.metrics.push_answered(response.status)
        return response

    async def _route(self, request: Request) -> Response:
        method, path = request.method, request.path
        if not self.service.ready and path not in ("/health", "/openapi.json"):
            raise not_ready()
        if method == "OPTIONS":
            answer = options(path)
            if answer is not None:
                return answer
        if path.startswith(PUSH_PATH):
            if method != "POST":
                raise _method_not_allowed("POST")
            # Rate limits are charged inside, once VAPID is verified (core.accept_push).
            return await rfc8030.push(self.service, request, path[len(PUSH_PATH) :])
        if path.startswith(CAPABILITY_PATHS) and method in ("GET", "DELETE"):
            # Each costs the store a read or a write, found or not: counted as pushes are,
            # so that a client repeating them with a token of its own is limited too.
            await self.service.check_address_rate(Limit.PUSH_ADDRESS, request.client)
        if path.startswith(MESSAGE_PATH):
            if method == "GET":  # the message's status, for its sender (core.message_status)
                status = await self.service.message_status(
                    path[len(MESSAGE_PATH) :], request.headers
                )
                return Response.json(200, status, {"cache-control": "no-store"})
            if method != "DELETE":
                raise _method_not_allowed("GET, DELETE")
            if await self.service.delete_message_resource(path[len(MESSAGE_PATH) :]):
                return Response(204)
            return _deleted_not_withdrawn()
        if path == SUBSCRIBE_PATH:
            if method != "POST":
                raise _method_not_allowed("POST")
            await self.service.check_address_rate(Limit.SUBSCRIBE_ADDRESS, request.client)
            return await rfc8030.subscribe(self.service, request)
        if path.startswith(SUBSCRIPTION_PATH):
            token = path[len(SUBSCRIPTION_PATH) :]
            if method == "GET":
                return await rfc8030.monitor_subscription(self.service, request, token)
            if method == "DELETE":
                return await rfc8030.delete_subscription(self.service, token)
            raise _method_not_allowed("GET, DELETE")
        if path.startswith(SET_PATH):
            token = path[len(SET_PATH) :]
            if method == "GET":
                return await rfc8030.monitor_set(self.service, request, token)
            if method == "DELETE":
                return await rfc8030.delete_set(self.service, token)
            raise _method_not_allowed("GET, DELETE")
        if path.startswith(RECEIPT_PATH):
            token = path[len(RECEIPT_PATH) :]
            if method == "GET":
                return await rfc8030.monitor_receipts(self.service, request, token)
            if method == "DELETE":
                return await rfc8030.delete_receipts(self.service, token)
            raise _method_not_allowed("GET, DELETE")
        if path in _UNAUTHENTICATED_READS:
            # Cheap, but a flood of them is not free (/health asks the store): counted as
            # pushes are. Health checks from rate_limit_exempt addresses are not counted.
            await self.service.check_address_rate(Limit.PUSH_ADDRESS, request.client)
        if path == "/health":
            if method not in ("GET", "HEAD"):
                raise _method_not_allowed("GET, HEAD")
            status = await self.service.health()
            return Response.json(200 if status["status"] == "ok" else 503, status)
        if path == "/openapi.json":
            if method not in ("GET", "HEAD"):
                raise _method_not_allowed("GET, HEAD")
            return self._openapi()
        if path == "/" and method == "GET":
            raise ServiceError(
                426,
                Errno.UPGRADE_REQUIRED,
                "this is the WebSocket push endpoint (dom.push.serverURL); "
                "application servers POST to push endpoints",
                headers={"upgrade": "websocket"},
            )
        if path.startswith(WEB_PREFIXES):
            return await self.web.handle(request)
        raise ServiceError(404, Errno.NOT_FOUND, f"nothing at {path[:100]}")
