"""HTTP transports for push requests: the seam between `Sender` and the network.

`PooledTransport` (the default) keeps, per push-service origin, either one multiplexed
HTTP/2 connection (when TLS ALPN picks "h2", or with `h2c=True` on cleartext) or a pool
of HTTP/1.1 keep-alive connections. HTTP/1.1 is a small hand-written client (a push
answer is a status line, a few headers and a short body); HTTP/2 framing is done by the
`h2` state machine. `HttpxTransport` does the same through httpx, for those who want its
proxies or event hooks; it costs several times more CPU per request (see docs/sender.md).
"""

from tidings.sender.transport.base import (
    DeadlineTransport,
    FrozenHeaders,
    Response,
    Transport,
    TransportError,
    VerifyOption,
    make_ssl_context,
)
from tidings.sender.transport.httpx_adapter import HttpxTransport
from tidings.sender.transport.pool import PooledTransport

__all__ = [
    "DeadlineTransport",
    "FrozenHeaders",
    "HttpxTransport",
    "PooledTransport",
    "Response",
    "Transport",
    "TransportError",
    "VerifyOption",
    "make_ssl_context",
]
