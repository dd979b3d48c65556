"""Who may read the dashboard, /api/stats and /metrics.

The rule, in full:

- With a dashboard token (`--dashboard-token`, TIDINGS_DASHBOARD_TOKEN), every request
  must carry it: `Authorization: Bearer <token>` or `?token=<token>`. Without it the
  answer is 401; with a wrong one, 403.
- Without a token, only loopback clients (127.0.0.0/8, ::1) are answered, and only
  when the request shows no sign of coming through a proxy (`Forwarded`,
  `X-Forwarded-For`, `X-Real-IP`): a reverse proxy on the same host would otherwise
  make every visitor look local. Everyone else gets 403 saying to set a token.

So a service on 127.0.0.1 works out of the box for its operator, and one listening on
a public address never shows its figures to the world by accident, while it still
starts (the push API must not depend on the dashboard's configuration).
"""

from __future__ import annotations

import hmac
import ipaddress
from urllib.parse import parse_qs

from tidings.service.errors import Errno, ServiceError
from tidings.service.forwarded import peer_address
from tidings.service.http.messages import Request

PROXY_HEADERS = ("forwarded", "x-forwarded-for", "x-real-ip")


def client_host(client: str) -> str:
    """The address part of a `Request.client` ("1.2.3.4:5678", "::1:5678", "[::1]:5")."""
    return peer_address(client)


def is_loopback_client(request: Request) -> bool:
    """True for a direct (not proxied) request from this machine."""
    if any(name in request.headers for name in PROXY_HEADERS):
        return False
    try:
        return ipaddress.ip_address(client_host(request.client)).is_loopback
    except ValueError:
        return False


def is_loopback_host(host: str) -> bool:
    """True when a listen address only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def presented_token(request: Request) -> str | None:
    """The token a request carries, from `Authorization: Bearer` or `?token=`."""
    authorization = request.headers.get("authorization", "")
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    if "token=" in request.query:
        values = parse_qs(request.query).get("token")
        if values:
            return values[0]
    return None


def check_access(request: Request, token: str | None) -> None:
    """Raise a 401 or 403 ServiceError unless the request may read the figures."""
    if token is None:
        if is_loopback_client(request):
            return
        raise ServiceError(
            403,
            Errno.ACCESS_DENIED,
            "the dashboard and metrics answer only local clients until the service is "
            "started with --dashboard-token (TIDINGS_DASHBOARD_TOKEN)",
        )
    offered = presented_token(request)
    if offered is None:
        raise ServiceError(
            401,
            Errno.ACCESS_DENIED,
            "send the dashboard token as 'Authorization: Bearer <token>' or ?token=<token>",
            headers={"www-authenticate": 'Bearer realm="tidings"'},
        )
    if not hmac.compare_digest(offered.encode(), token.encode()):
        raise ServiceError(403, Errno.ACCESS_DENIED, "wrong dashboard token")
