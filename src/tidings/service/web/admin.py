"""The operator's broadcast API (Megaphone-style), behind the dashboard token.

GET    /api/broadcasts          {"broadcasts": {id: version}}
GET    /api/broadcasts/<id>     {"id": id, "version": version}, or 404
PUT    /api/broadcasts/<id>     body {"version": "..."}: create or change; 200
DELETE /api/broadcasts/<id>     204, or 404

Every request must carry the dashboard token (`Authorization: Bearer <token>`): a
service started without one refuses changes to everyone (403), local clients included,
since a broadcast reaches every connected browser.
"""

from __future__ import annotations

import json
from urllib.parse import unquote

from tidings.service.broadcasts import id_problem, version_problem
from tidings.service.core import PushService
from tidings.service.errors import Errno, ServiceError
from tidings.service.http.messages import Request, Response
from tidings.service.megaphone import BroadcastFull
from tidings.service.web.access import check_access

BROADCASTS_PATH = "/api/broadcasts"


def check_admin(request: Request, token: str | None) -> None:
    """Raise 401/403 unless the request carries the configured dashboard token."""
    if token is None:
        raise ServiceError(
            403,
            Errno.ACCESS_DENIED,
            "the broadcast API needs the service started with --dashboard-token",
        )
    check_access(request, token)


def _bad(message: str) -> ServiceError:
    return ServiceError(400, Errno.MALFORMED_REQUEST, message)


def _version_of(body: bytes) -> str:
    try:
        document = json.loads(body or b"null")
    except ValueError:
        raise _bad('send a JSON body {"version": "..."}') from None
    version = document.get("version") if isinstance(document, dict) else None
    problem = version_problem(version)
    if problem is not None:
        raise _bad(problem)
    assert isinstance(version, str)
    return version


async def broadcasts_api(service: PushService, request: Request, token: str | None) -> Response:
    """Answer one request under /api/broadcasts."""
    check_admin(request, token)
    keeper = service.broadcasts
    method, path = request.method, request.path
    headers = {"cache-control": "no-store"}
    if path in (BROADCASTS_PATH, BROADCASTS_PATH + "/"):
        if method not in ("GET", "HEAD"):
            raise ServiceError(
                405, Errno.METHOD_NOT_ALLOWED, "use GET here", headers={"allow": "GET, HEAD"}
            )
        versions = keeper.current.versions if keeper.from_megaphone else None
        if versions is None:
            versions = await service.store.list_broadcasts()
        return Response.json(200, {"broadcasts": dict(sorted(versions.items()))}, headers)
    broadcast_id = unquote(path[len(BROADCASTS_PATH) + 1 :])
    problem = id_problem(broadcast_id)
    if problem is not None:
        raise _bad(problem)
    if method in ("GET", "HEAD"):
        versions = (
            keeper.current.versions
            if keeper.from_megaphone
            else await service.store.list_broadcasts()
        )
        if broadcast_id not in versions:
            raise ServiceError(404, Errno.NOT_FOUND, f"no broadcast {broadcast_id!r}")
        return Response.json(200, {"id": broadcast_id, "version": versions[broadcast_id]}, headers)
    if method not in ("PUT", "DELETE"):
        raise ServiceError(
            405,
            Errno.METHOD_NOT_ALLOWED,
            "use GET, PUT or DELETE here",
            headers={"allow": "GET, HEAD, PUT, DELETE"},
        )
    if keeper.from_megaphone:
        raise ServiceError(
            409,
            Errno.BROADCASTS_READ_ONLY,
            "this service reads its broadcasts from Megaphone (--megaphone-url): change them there",
        )
    if method == "DELETE":
        if not await keeper.delete(broadcast_id):
            raise ServiceError(404, Errno.NOT_FOUND, f"no broadcast {broadcast_id!r}")
        return Response(204, headers)
    version = _version_of(request.body)
    try:
        await keeper.set(broadcast_id, version)
    except BroadcastFull as exc:
        raise ServiceError(409, Errno.TOO_MANY_BROADCASTS, str(exc)) from None
    return Response.json(200, {"id": broadcast_id, "version": version}, headers)
