"""The service's web resources besides the push API: pages, figures, the demo sender.

GET  /metrics              Prometheus text format                    (token rule)
GET  /api/stats            totals and per-second history, JSON       (token rule)
GET  /dashboard            live figures page                         (token rule)
GET  /playground/          subscribe this browser and send to it     (--demo only)
GET  /playground/sw.js     the playground's service worker           (--demo only)
GET  /api/demo/key         the demo VAPID public key                 (--demo only)
GET  /api/demo/recent      the last demo sends' statuses             (--demo only)
POST /demo/send            encrypt, sign and push a test message     (--demo only,
                           application/json from the service's own pages)
GET  /static/<file>        the pages' scripts and styles
GET/PUT/DELETE /api/broadcasts[/<id>]  Megaphone broadcasts (admin.py; token required)

The token rule and the Host check (DNS rebinding; every path but /static/) are in
access.py. Pages carry a strict Content-Security-Policy: scripts
and styles come only from these files, nothing inline, nothing from elsewhere.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from importlib import resources
from urllib.parse import parse_qs

from tidings.service.core import PushService
from tidings.service.errors import Errno, ServiceError
from tidings.service.http.messages import Request, Response
from tidings.service.metrics import HISTORY_SECONDS, METRICS_CONTENT_TYPE
from tidings.service.web.access import (
    allowed_host_names,
    check_access,
    check_host,
    check_json,
    check_same_origin,
)
from tidings.service.web.admin import BROADCASTS_PATH, broadcasts_api
from tidings.service.web.demo import DemoRequestError, DemoSender

log = logging.getLogger("tidings.web")

#: Paths the push service's routes hand to `WebRoutes`.
WEB_PREFIXES = ("/metrics", "/api/", "/dashboard", "/playground", "/demo/", "/static/")

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; worker-src 'self'; manifest-src 'self'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)

_COMMON_HEADERS = {
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",  # dashboard URLs may carry ?token=
}
_PAGE_HEADERS = {
    **_COMMON_HEADERS,
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "cross-origin-opener-policy": "same-origin",
    "cache-control": "no-cache",
}
_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".txt": "text/plain; charset=utf-8",
}

Handler = Callable[[Request], Awaitable[Response]]


def _load_static() -> dict[str, tuple[bytes, str]]:
    """Every file of web/static, read once: name -> (bytes, content type)."""
    files: dict[str, tuple[bytes, str]] = {}
    folder = resources.files("tidings.service.web").joinpath("static")
    if not folder.is_dir():
        return files
    for entry in folder.iterdir():
        name = entry.name
        suffix = name[name.rfind(".") :] if "." in name else ""
        if entry.is_file() and suffix in _CONTENT_TYPES:
            files[name] = (entry.read_bytes(), _CONTENT_TYPES[suffix])
    return files


def _not_found(path: str) -> ServiceError:
    return ServiceError(404, Errno.NOT_FOUND, f"nothing at {path[:100]}")


def _only(method: str, allowed: tuple[str, ...]) -> None:
    if method not in allowed:
        raise ServiceError(
            405,
            Errno.METHOD_NOT_ALLOWED,
            f"use {', '.join(allowed)} here",
            headers={"allow": ", ".join(allowed)},
        )


def _json(document: object, status: int = 200) -> Response:
    return Response.json(status, document, {**_COMMON_HEADERS, "cache-control": "no-store"})


class WebRoutes:
    """Answers the paths in WEB_PREFIXES; raises ServiceError for refusals."""

    def __init__(self, service: PushService, push_handler: Handler) -> None:
        self.service = service
        self.config = service.config
        self.static = _load_static()
        self.demo = DemoSender(service.config, push_handler) if service.config.demo else None
        self.allowed_hosts = allowed_host_names(self.config.allowed_hosts, self.config.origin)

    @property
    def token(self) -> str | None:
        return self.config.dashboard_token or None

    async def handle(self, request: Request) -> Response:
        """Answer one request for a web path."""
        try:
            return await self._route(request)
        except ServiceError as error:
            response = Response.error(error)
            response.headers.update(_COMMON_HEADERS)
            return response

    async def _route(self, request: Request) -> Response:
        method, path = request.method, request.path
        if path.startswith("/static/"):
            _only(method, ("GET", "HEAD"))
            return self._file(path.removeprefix("/static/"), path, _COMMON_HEADERS)
        check_host(request, self.allowed_hosts)  # figures and the demo: no DNS rebinding
        if path in ("/metrics", "/api/stats", "/dashboard"):
            _only(method, ("GET", "HEAD"))
            check_access(request, self.token)
            if path == "/metrics":
                await self.service.metrics.refresh_counts(self.service.store)
                return Response(
                    200,
                    {"content-type": METRICS_CONTENT_TYPE, **_COMMON_HEADERS},
                    self.service.metrics.render(),
                )
            if path == "/api/stats":
                return await self._stats(request)
            return self._file("dashboard.html", path, _PAGE_HEADERS)
        if path == BROADCASTS_PATH or path.startswith(BROADCASTS_PATH + "/"):
            return await broadcasts_api(self.service, request, self.token)
        if self.demo is None:
            raise _not_found(path)
        return await self._demo(request, self.demo)

    async def _stats(self, request: Request) -> Response:
        seconds = HISTORY_SECONDS
        if request.query:
            raw = parse_qs(request.query).get("seconds")
            if raw:
                try:
                    seconds = max(0, min(HISTORY_SECONDS, int(raw[0])))
                except ValueError:
                    raise ServiceError(
                        400, Errno.MALFORMED_REQUEST, "seconds must be a whole number"
                    ) from None
        metrics = self.service.metrics
        await metrics.refresh_counts(self.service.store)
        document = metrics.snapshot(seconds)
        document["service"] = {
            "origin": self.config.origin,
            "uptime": round(document["time"] - self.service.started_at, 1),
            "draining": self.service.draining,
            "demo": self.demo is not None,
        }
        return _json(document)

    async def _demo(self, request: Request, demo: DemoSender) -> Response:
        method, path = request.method, request.path
        if path == "/playground":
            _only(method, ("GET", "HEAD"))
            location = "/playground/" + (f"?{request.query}" if request.query else "")
            return Response(308, {"location": location, **_COMMON_HEADERS})
        if path == "/playground/":
            _only(method, ("GET", "HEAD"))
            return self._file("playground.html", path, _PAGE_HEADERS)
        if path == "/playground/sw.js":
            _only(method, ("GET", "HEAD"))
            headers = {**_PAGE_HEADERS, "service-worker-allowed": "/playground/"}
            return self._file("playground-sw.js", path, headers)
        if path == "/api/demo/key":
            _only(method, ("GET", "HEAD"))
            return _json(demo.key_document())
        if path == "/api/demo/recent":
            _only(method, ("GET", "HEAD"))
            return _json({"sends": list(demo.recent)})
        if path == "/demo/send":
            _only(method, ("POST",))
            check_json(request)  # no form or text/plain body from another site
            check_same_origin(request)
            try:
                document = json.loads(request.body or b"null")
            except ValueError:
                raise ServiceError(400, Errno.MALFORMED_REQUEST, "send a JSON body") from None
            try:
                result = await demo.send(document, request.client)
            except DemoRequestError as exc:
                raise ServiceError(400, Errno.MALFORMED_REQUEST, str(exc)) from None
            return _json(result)
        raise _not_found(path)

    def _file(self, name: str, path: str, headers: dict[str, str]) -> Response:
        found = self.static.get(name)
        if found is None:
            raise _not_found(path)
        body, content_type = found
        return Response(200, {"content-type": content_type, **headers}, body)
