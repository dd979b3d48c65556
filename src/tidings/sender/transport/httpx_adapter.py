"""The transport seam over httpx, for those who want its proxies or event hooks."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tidings.sender.transport.base import (
    Response,
    TransportError,
    VerifyOption,
    make_ssl_context,
)


class HttpxTransport:
    """The same seam over `httpx.AsyncClient(http2=True)`: ALPN, pooling, proxies."""

    def __init__(
        self,
        *,
        verify: VerifyOption = True,
        http2: bool = True,
        max_connections_per_origin: int = 100,
        connect_timeout: float = 10.0,
        client: Any = None,
    ) -> None:
        import httpx

        self._httpx = httpx
        if client is None:
            client = httpx.AsyncClient(
                http2=http2,
                verify=make_ssl_context(verify, http2=http2),
                limits=httpx.Limits(
                    max_connections=None,
                    max_keepalive_connections=max_connections_per_origin,
                ),
                timeout=httpx.Timeout(None, connect=connect_timeout),
            )
        self.client = client

    async def request(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes
    ) -> Response:
        """Send one request through httpx."""
        httpx = self._httpx
        try:
            answer = await self.client.request(method, url, headers=dict(headers), content=body)
        except httpx.ConnectError as exc:
            raise TransportError(f"cannot connect: {exc}") from None
        except httpx.TransportError as exc:
            raise TransportError(f"{type(exc).__name__}: {exc}", safe_to_retry=False) from None
        headers_out: dict[str, str] = {}
        for name, value in answer.headers.multi_items():
            key = name.lower()
            headers_out[key] = f"{headers_out[key]}, {value}" if key in headers_out else value
        return Response(answer.status_code, headers_out, answer.content, answer.http_version)

    async def aclose(self) -> None:
        """Close the httpx client."""
        await self.client.aclose()
