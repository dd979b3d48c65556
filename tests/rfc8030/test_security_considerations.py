"""RFC 8030 section 8: URLs that reveal nothing and cannot be guessed, rate limits, logs."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from rfc8030.conftest import Rfc8030
from rfc8030.helpers import REL_RECEIPT, drain, path_of, push, subscribe, tampered, token_of
from support.service import running_service
from tidings.http2 import H2Client
from tidings.webpush import (
    b64url_decode,
)
from tidings.webpush.links import link_target


async def test_8_2_urls_do_not_reveal_or_correlate_the_user_agent(h2c: Rfc8030) -> None:
    """§8.2: push and push message URIs carry no user or device information and cannot be
    correlated by their contents, even for two subscriptions of one user agent."""
    assert h2c.service.service is not None
    core = h2c.service.service
    async with await h2c.connect() as client:
        first = await subscribe(client)
        second = await subscribe(client, set_url=first.set)
        _, one = await push(client, first, "x")
        _, two = await push(client, second, "y")
    ref = core.open_endpoint(token_of(first.push))
    raw = {
        name: b64url_decode(token_of(url))
        for name, url in {
            "push 1": first.push,
            "push 2": second.push,
            "message 1": one["location"],
            "message 2": two["location"],
        }.items()
    }
    secrets = (bytes.fromhex(ref.uaid), ref.uaid.encode(), ref.channel_id.encode())
    for name, blob in raw.items():
        assert not any(secret in blob for secret in secrets), name
    # Past the two header bytes (token kind and key id) nothing is shared.
    assert raw["push 1"][2:8] != raw["push 2"][2:8]
    assert raw["message 1"][2:8] != raw["message 2"][2:8]


async def test_8_3_capability_urls_are_checked_not_guessable(h2c: Rfc8030) -> None:
    """§8.3: every capability URL is an authenticated token (≥ 120 bits): one changed
    character makes it unknown (404)."""
    async with await h2c.connect() as client:
        ua = await subscribe(client)
        _, headers = await push(client, ua, "x", prefer="respond-async")
        receipt_url = link_target(headers["link"], REL_RECEIPT) or ""
        for url in (ua.push, ua.subscription, ua.set, headers["location"], receipt_url):
            assert len(b64url_decode(token_of(url))) * 8 >= 120 + 16, url
        checks = (
            ("POST", ua.push),
            ("DELETE", ua.subscription),
            ("DELETE", ua.set),
            ("DELETE", headers["location"]),
            ("GET", receipt_url),
        )
        for method, url in checks:
            response = await client.request(
                method, path_of(tampered(url)), {"ttl": "60"} if method == "POST" else {}, timeout=5
            )
            assert response.status == 404, (method, url, response.status)


async def test_8_4_push_rate_limit_is_429_with_retry_after(tmp_path: Path) -> None:
    """§8.4: push services SHOULD limit the rate of pushes to a user agent; 429 with a
    Retry-After when the limit is passed."""
    async with (
        running_service(tmp_path, rate_push_subscription="2/min") as service,
        await H2Client.connect(service.url) as client,
    ):
        ua = await subscribe(client)
        assert [(await push(client, ua, "x"))[0] for _ in range(2)] == [201, 201]
        status, headers = await push(client, ua, "x")
        assert status == 429
        assert int(headers["retry-after"]) > 0


async def test_8_5_logs_hold_no_capability_urls(
    h2c: Rfc8030, caplog: pytest.LogCaptureFixture
) -> None:
    """§8.5: request logs must not reveal subscription URIs (tokens are cut short)."""
    caplog.set_level(logging.DEBUG, logger="tidings")
    async with await h2c.connect() as client:
        ua = await subscribe(client)
        _, headers = await push(client, ua, "x", prefer="respond-async")
        await drain(client, ua.subscription)
        await client.request("DELETE", path_of(headers["location"]))
        await client.request("DELETE", path_of(ua.subscription))
    receipt_url = link_target(headers["link"], REL_RECEIPT) or ""
    logged = "\n".join(
        f"{r.name} {r.getMessage()}" for r in caplog.records if r.name.startswith("tidings")
    )
    assert "tidings.access" in logged
    for url in (ua.push, ua.subscription, ua.set, headers["location"], receipt_url):
        assert token_of(url) not in logged, url
