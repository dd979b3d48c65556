"""HTTP/2 is really used where a service offers it: TLS ALPN, one multiplexed connection."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sender.h2server import H2Service, self_signed
from sender.helpers import Keys
from tidings.sender import ResultKind, Sender
from tidings.webpush import VapidKey, verify_vapid


@pytest.fixture
async def h2_service(tmp_path: Path) -> AsyncIterator[H2Service]:
    cert, key = self_signed(tmp_path)
    service = await H2Service(cert, key, delay=0.005).start()
    yield service
    await service.stop()


@pytest.mark.parametrize("transport", ["tidings", "httpx"])
async def test_http2_over_tls_is_negotiated_and_multiplexed(
    h2_service: H2Service, vapid_key: VapidKey, transport: str
) -> None:
    assert h2_service.cert is not None
    keys = [Keys.generate() for _ in range(40)]
    subs = [k.subscription(f"{h2_service.url}/push/{i}") for i, k in enumerate(keys)]
    async with Sender(
        vapid_key,
        "mailto:ops@example.com",
        verify=str(h2_service.cert),
        transport=transport,  # type: ignore[arg-type]
    ) as sender:
        first = await sender.send(subs[0], "first", ttl=60)
        summary = await sender.send_many(subs[1:], "many", ttl=60, concurrency=20)
    assert first.http_version == "HTTP/2" and first.kind is ResultKind.ACCEPTED
    assert first.location == "/m/1" and first.ttl == 60
    assert summary.all_accepted and summary.total == 39
    assert h2_service.connections == 1
    if transport == "tidings":
        assert h2_service.max_open_streams > 1  # really concurrent streams on one connection
    request = h2_service.requests[0]
    assert request.headers[":authority"] == f"127.0.0.1:{h2_service.port}"
    assert request.headers["content-type"] == "application/octet-stream"
    verify_vapid(request.headers["authorization"], audience=h2_service.url)
    by_path = {r.headers[":path"]: r for r in h2_service.requests}
    for i, k in enumerate(keys):
        r = by_path[f"/push/{i}"]
        expected = b"first" if i == 0 else b"many"
        assert k.decrypt(r.body, {"Content-Encoding": r.headers["content-encoding"]}) == expected


async def test_max_concurrent_streams_is_respected(tmp_path: Path, vapid_key: VapidKey) -> None:
    cert, key = self_signed(tmp_path)
    service = await H2Service(cert, key, max_streams=3, delay=0.005).start()
    try:
        subs = [Keys.generate().subscription(f"{service.url}/p/{i}") for i in range(30)]
        async with Sender(vapid_key, "mailto:a@b.c", verify=str(cert)) as sender:
            summary = await sender.send_many(subs, "x", ttl=0, concurrency=30)
        assert summary.all_accepted
        assert service.max_open_streams <= 3 and service.connections == 1
    finally:
        await service.stop()


async def test_http1_when_the_service_offers_only_http1_in_alpn(
    tmp_path: Path, vapid_key: VapidKey
) -> None:
    cert, key = self_signed(tmp_path)
    service = await H2Service(cert, key, alpn=["http/1.1"]).start()
    try:
        sub = Keys.generate().subscription(f"{service.url}/p/1")
        async with Sender(vapid_key, "mailto:a@b.c", verify=str(cert)) as sender:
            result = await sender.send(sub, "x", ttl=0)
        # The test service answers 505 on HTTP/1.1: proves HTTP/1.1 was spoken, parsed, kept.
        assert result.http_version == "HTTP/1.1" and result.status == 505
    finally:
        await service.stop()


async def test_h2c_prior_knowledge_on_cleartext(vapid_key: VapidKey) -> None:
    service = await H2Service().start()
    try:
        keys = Keys.generate()
        async with Sender(vapid_key, "mailto:a@b.c", h2c=True) as sender:
            result = await sender.send(keys.subscription(f"{service.url}/p/1"), "clear", ttl=0)
        assert result.http_version == "HTTP/2" and result.ok
        r = service.requests[0]
        assert keys.decrypt(r.body, {"Content-Encoding": "aes128gcm"}) == b"clear"
    finally:
        await service.stop()


async def test_untrusted_certificate_fails_cleanly(
    h2_service: H2Service, vapid_key: VapidKey
) -> None:
    from tidings.sender import RetryPolicy

    sub = Keys.generate().subscription(f"{h2_service.url}/p/1")
    async with Sender(vapid_key, "mailto:a@b.c", retry=RetryPolicy.none()) as sender:
        result = await sender.send(sub, "x", ttl=0)
    assert result.kind is ResultKind.FAILED and "CERTIFICATE_VERIFY_FAILED" in (result.reason or "")
    context = ssl.create_default_context(cafile=str(h2_service.cert))
    async with Sender(vapid_key, "mailto:a@b.c", verify=context) as sender:
        assert (await sender.send(sub, "x", ttl=0)).http_version == "HTTP/2"
