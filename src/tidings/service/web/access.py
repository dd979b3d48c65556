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

`check_host` keeps DNS rebinding out: a hostile page whose name the attacker points at
this service (say, at 127.0.0.1, where the figures need no token) is same-origin with
it in the browser's eyes and could read the answers. Its requests carry the attacker's
name in `Host`, so the web resources answer only the names in `allowed_hosts` (default:
the public URL's host and `localhost`) and IP literals, which no rebinding can produce;
any other name gets 421 Misdirected Request.

`check_same_origin` and `check_json` guard the demo sender (`POST /demo/send`): a
browser sends a cross-site form or a `no-cors` fetch without a preflight only with a
CORS-safelisted content type (`text/plain`, forms), so a JSON body plus a same-origin
`Origin` / `Sec-Fetch-Site` means the request came from the service's own page.
"""

from __future__ import annotations

import hmac
import ipaddress
from urllib.parse import parse_qs, urlsplit

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


def host_name(value: str) -> str:
    """The name part of a `Host` value, lowercase: `[::1]:80` is `::1`, `a.b.:80` is `a.b`."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0].rstrip(".") if value.count(":") == 1 else value.rstrip(".")


def allowed_host_names(setting: str, origin: str) -> frozenset[str] | None:
    """The names `check_host` accepts (None: any, for `*`); default the origin's and localhost."""
    names = {host_name(name) for name in setting.split(",") if name.strip()}
    if not names:
        names = {host_name(urlsplit(origin).netloc), "localhost"}
    return None if "*" in names else frozenset(names)


def _is_ip_literal(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def check_host(request: Request, allowed: frozenset[str] | None) -> None:
    """Raise 421 unless `Host` is an allowed name or an IP literal (DNS rebinding)."""
    if allowed is None:
        return
    value = request.headers.get("host")
    if value is None:
        return  # not a browser: every browser request names its host
    name = host_name(value)
    if name in allowed or _is_ip_literal(name):
        return
    raise ServiceError(
        421,
        Errno.ACCESS_DENIED,
        f"this service does not answer for the host {name[:100]!r} here; "
        "add it to allowed_hosts (TIDINGS_ALLOWED_HOSTS)",
    )


def check_json(request: Request) -> None:
    """Raise 415 unless the body is declared `application/json`."""
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type != "application/json":
        raise ServiceError(
            415,
            Errno.MALFORMED_REQUEST,
            "send the document as Content-Type: application/json",
            headers={"accept-post": "application/json"},
        )


def check_same_origin(request: Request) -> None:
    """Raise 403 when a browser says the request comes from another site.

    `Sec-Fetch-Site` (sent by current browsers) must be `same-origin`; `Origin`, when
    sent, must name the host the request was sent to. A request with neither is not
    from a browser page, so no other site can have made it.
    """
    site = request.headers.get("sec-fetch-site")
    origin = request.headers.get("origin")
    host = request.headers.get("host", "").strip().lower()
    if site is not None and site.strip().lower() != "same-origin":
        problem = f"Sec-Fetch-Site is {site[:40]!r}"
    elif origin is not None and origin.strip().lower().partition("://")[2] != host:
        problem = "Origin is another site"
    else:
        return
    raise ServiceError(
        403, Errno.ACCESS_DENIED, f"only the service's own pages may do this ({problem})"
    )


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
