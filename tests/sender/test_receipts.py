"""RFC 8030 receipts in the sender, against the real Tidings service.

The user agent is `TestAgent` (Firefox's WebSocket protocol; it acknowledges what it
receives), so a receipt travels: sender → service → agent → ack → service → the
sender's HTTP/2 monitor of the receipt subscription.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from click.testing import CliRunner, Result

from sender.helpers import Keys, ScriptedService, error_body
from support.service import RunningService, ServiceProcess, TestAgent, running_service
from tidings.cli import main
from tidings.http2 import H2Client
from tidings.sender import (
    Http2Required,
    Receipt,
    ReceiptError,
    ResultKind,
    RetryPolicy,
    Sender,
)
from tidings.sender.receipts import link_target
from tidings.service.tls import self_signed
from tidings.webpush import VapidKey

REL = "urn:ietf:params:push:receipt"


def make_sender(key: VapidKey, **options: Any) -> Sender:
    return Sender(key, "mailto:ops@example.com", retry=RetryPolicy.none(), **options)


async def offline_subscription(service: RunningService, key: VapidKey) -> dict[str, Any]:
    """A subscription whose user agent has gone away (messages stay stored)."""
    agent = await service.agent()
    registration = await agent.register(key.public_key_b64)
    await agent.close()
    return registration.subscription_info()


@pytest.fixture
async def short_sweep(tmp_path: Path) -> Any:
    """The service with a 0.2 s expiry sweep, so a TTL of 1 s expires quickly."""
    async with running_service(tmp_path, expiry_sweep_interval=0.2) as service:
        yield service


# Sending with receipt=True --------------------------------------------------------------


async def test_delivered_receipt_after_the_agent_acknowledges(
    service: RunningService, vapid_key: VapidKey
) -> None:
    agent = await service.agent()
    try:
        registration = await agent.register(vapid_key.public_key_b64)
        async with make_sender(vapid_key) as sender:
            result = await sender.send(
                registration.subscription_info(), "ring", ttl=60, receipt=True
            )
            assert result.kind is ResultKind.ACCEPTED and result.status == 202, result
            assert result.receipt and result.receipt.startswith(service.url + "/r/")
            assert result.location and result.location.startswith(service.url + "/m/")
            waiting = asyncio.create_task(sender.wait_for_receipt(result, timeout=10))
            notification = await agent.next_notification()  # acknowledged (code 100)
            assert notification.plaintext == b"ring"
            receipt = await waiting
        assert receipt == Receipt(result.location, 204)
        assert receipt.delivered and not receipt.expired
        assert receipt.receipt_subscription == result.receipt
    finally:
        await agent.close()


async def test_expired_receipt_when_the_ttl_runs_out(
    short_sweep: RunningService, vapid_key: VapidKey
) -> None:
    subscription = await offline_subscription(short_sweep, vapid_key)
    async with make_sender(vapid_key) as sender:
        result = await sender.send(subscription, "too late", ttl=1, receipt=True)
        assert result.status == 202, result
        receipt = await sender.wait_for_receipt(result, timeout=10)
    assert receipt.status == 410 and receipt.expired and not receipt.delivered
    assert receipt.message_url == result.location


async def test_timeout_while_nothing_happens(service: RunningService, vapid_key: VapidKey) -> None:
    subscription = await offline_subscription(service, vapid_key)
    async with make_sender(vapid_key) as sender:
        result = await sender.send(subscription, "later", ttl=60, receipt=True)
        with pytest.raises(TimeoutError):
            await sender.wait_for_receipt(result, timeout=0.3)


async def test_two_sends_share_one_receipt_subscription(
    service: RunningService, vapid_key: VapidKey
) -> None:
    """RFC 8030 §5.1: the sender sends the receipt subscription back; the service reuses it."""
    agent = await service.agent()
    try:
        one = await agent.register(vapid_key.public_key_b64)
        two = await agent.register(vapid_key.public_key_b64)
        async with make_sender(vapid_key) as sender:
            first = await sender.send(one.subscription_info(), "one", ttl=60, receipt=True)
            second = await sender.send(two.subscription_info(), "two", ttl=60, receipt=True)
            assert first.receipt and first.receipt == second.receipt
            assert sender.receipt_book.by_origin == {service.url: first.receipt}
            async with sender.receipts(service.url) as receipts:
                await agent.next_notification()
                await agent.next_notification()
                got = [await asyncio.wait_for(anext(receipts), 10) for _ in range(2)]
            assert {r.message_url for r in got} == {first.location, second.location}
            assert all(r.delivered for r in got)
            assert len(sender.receipt_book.monitors) == 1  # one monitor per receipt subscription
    finally:
        await agent.close()


async def test_concurrent_first_sends_make_one_receipt_subscription(
    service: RunningService, vapid_key: VapidKey
) -> None:
    subscription = await offline_subscription(service, vapid_key)
    async with make_sender(vapid_key) as sender:
        results = await asyncio.gather(
            *(sender.send(subscription, f"m{i}", ttl=60, receipt=True) for i in range(5))
        )
        summary = await sender.send_many([subscription] * 3, "fan", ttl=60, receipt=True)
    assert {r.status for r in results} == {202}
    assert len({r.receipt for r in results}) == 1
    assert summary.all_accepted
    assert len(sender.receipt_book.monitors) == 0  # nothing monitored until asked


async def test_receipts_iterator_mixes_delivered_and_expired(
    short_sweep: RunningService, vapid_key: VapidKey
) -> None:
    offline = await offline_subscription(short_sweep, vapid_key)
    agent = await short_sweep.agent()
    try:
        online = await agent.register(vapid_key.public_key_b64)
        async with make_sender(vapid_key) as sender:
            lost = await sender.send(offline, "lost", ttl=1, receipt=True)
            kept = await sender.send(online.subscription_info(), "kept", ttl=60, receipt=True)
            await agent.next_notification()
            statuses: dict[str | None, int] = {}
            async with sender.receipts(kept) as receipts:
                async for receipt in receipts:
                    statuses[receipt.message_url] = receipt.status
                    if len(statuses) == 2:
                        break
        assert statuses == {kept.location: 204, lost.location: 410}
    finally:
        await agent.close()


async def test_monitor_reconnects_after_the_service_crashes(
    tmp_path: Path, vapid_key: VapidKey
) -> None:
    """The service process is killed (the connection drops) and started again: the
    monitor reconnects and the receipt still arrives."""
    process = ServiceProcess(tmp_path / "service")
    process.start()
    sender = make_sender(vapid_key)
    try:
        agent = TestAgent(process.ws_url)
        await agent.connect()
        registration = await agent.register(vapid_key.public_key_b64)
        await agent.close()
        result = await sender.send(registration.subscription_info(), "hi", ttl=60, receipt=True)
        assert result.receipt
        monitor = sender.receipt_book.monitor(result.receipt)
        waiting = asyncio.create_task(sender.wait_for_receipt(result, timeout=30))
        await asyncio.wait_for(monitor.connected.wait(), 10)
        process.kill()
        await asyncio.to_thread(process.start)
        agent.registrations[registration.channel_id] = registration
        await agent.connect(agent.uaid)
        assert (await agent.next_notification(10)).plaintext == b"hi"
        await agent.close()
        receipt = await waiting
        assert receipt.delivered and receipt.message_url == result.location
        assert monitor.connections >= 2
    finally:
        await sender.aclose()
        process.stop()


async def test_receipts_over_tls_with_an_rfc8030_user_agent(
    tmp_path: Path, vapid_key: VapidKey
) -> None:
    """HTTPS (ALPN h2) end to end; the user agent monitors and acknowledges over HTTP/2."""
    cert, key = self_signed(["127.0.0.1"])
    (tmp_path / "cert.pem").write_bytes(cert)
    (tmp_path / "key.pem").write_bytes(key)
    settings = {"tls_cert": str(tmp_path / "cert.pem"), "tls_key": str(tmp_path / "key.pem")}
    context = ssl.create_default_context(cafile=str(tmp_path / "cert.pem"))
    async with running_service(tmp_path, **settings) as service:
        device = await H2Client.connect(service.url, ssl_context=context)
        try:
            subscribed = await device.request("POST", "/subscribe")
            push = link_target(subscribed.headers["link"], "urn:ietf:params:push") or ""
            keys = Keys.generate()
            async with make_sender(vapid_key, verify=context) as sender:
                result = await sender.send(keys.subscription(push), "secure", ttl=60, receipt=True)
                assert result.http_version == "HTTP/2" and result.status == 202, result
                assert result.receipt and result.receipt.startswith("https://")
                waiting = asyncio.create_task(sender.wait_for_receipt(result, timeout=10))
                monitor = await device.open_stream(
                    "GET", urlsplit(subscribed.headers["location"]).path, {"prefer": "wait=0"}
                )
                pushed = await monitor.next_push(5)
                assert (await device.request("DELETE", pushed.path)).status == 204
                assert (await waiting).delivered
                again = await sender.send(keys.subscription(push), "again", ttl=60)
                assert again.ok
        finally:
            await device.close()


async def test_an_unknown_receipt_subscription_is_an_error(
    service: RunningService, vapid_key: VapidKey
) -> None:
    async with make_sender(vapid_key) as sender:
        bogus = service.url + "/r/" + "A" * 60
        with pytest.raises(ReceiptError, match="404"):
            async with sender.receipts(bogus) as receipts:
                await asyncio.wait_for(anext(receipts), 10)


# Against a scripted HTTP/1.1-only service ---------------------------------------------------


def _accepted(receipt_path: str, message: str) -> tuple[int, dict[str, str], bytes]:
    return (202, {"Location": message, "Link": f'<{receipt_path}>; rel="{REL}"'}, b"")


async def test_headers_sent_and_receipt_subscription_sent_back(
    push_service: ScriptedService, vapid_key: VapidKey
) -> None:
    keys = Keys.generate()
    sub = keys.subscription(push_service.endpoint("a"))
    push_service.script("a", _accepted("/r/one", "/m/1"), _accepted("/r/one", "/m/2"))
    async with make_sender(vapid_key) as sender:
        first = await sender.send(sub, "x", ttl=60, receipt=True)
        second = await sender.send(sub, "y", ttl=60, receipt=True)
        plain = await sender.send(sub, "z", ttl=60)
    assert first.receipt == push_service.url + "/r/one" == second.receipt
    seen = push_service.seen("a")
    assert seen[0].headers["Prefer"] == "respond-async" and "Link" not in seen[0].headers
    assert seen[1].headers["Link"] == f'<{push_service.url}/r/one>; rel="{REL}"'
    assert "Prefer" not in seen[2].headers and "Link" not in seen[2].headers
    assert plain.receipt is None


async def test_a_refused_receipt_subscription_is_replaced(
    push_service: ScriptedService, vapid_key: VapidKey
) -> None:
    """The service forgot the receipt subscription (400): ask again without it."""
    keys = Keys.generate()
    sub = keys.subscription(push_service.endpoint("b"))
    refused = (400, {"Content-Type": "application/json"}, error_body(400, 115, "Bad", "x"))
    push_service.script("b", _accepted("/r/old", "/m/1"), refused, _accepted("/r/new", "/m/2"))
    async with make_sender(vapid_key) as sender:
        await sender.send(sub, "x", ttl=60, receipt=True)
        result = await sender.send(sub, "y", ttl=60, receipt=True)
    assert result.status == 202 and result.attempts == 2
    assert result.receipt == push_service.url + "/r/new"
    seen = push_service.seen("b")
    assert "Link" in seen[1].headers and "Link" not in seen[2].headers


async def test_http1_only_service_gives_a_clear_error(
    push_service: ScriptedService, vapid_key: VapidKey
) -> None:
    keys = Keys.generate()
    sub = keys.subscription(push_service.endpoint("c"))
    push_service.script("c", _accepted("/r/one", "/m/1"))
    async with make_sender(vapid_key) as sender:
        result = await sender.send(sub, "x", ttl=60, receipt=True)
        assert result.http_version == "HTTP/1.1"
        with pytest.raises(Http2Required, match=r"HTTP/1\.1"):
            await sender.wait_for_receipt(result, timeout=10)
        with pytest.raises(Http2Required):
            async for _ in sender.receipts(push_service.url):
                pass


async def test_no_receipt_subscription_is_an_error(
    push_service: ScriptedService, vapid_key: VapidKey
) -> None:
    """A service without receipts answers 201: nothing to wait for, and no serialising."""
    keys = Keys.generate()
    sub = keys.subscription(push_service.endpoint("d"))
    async with make_sender(vapid_key) as sender:
        result = await sender.send(sub, "x", ttl=60, receipt=True)
        assert result.status == 201 and result.receipt is None
        with pytest.raises(ReceiptError, match="without a receipt subscription"):
            await sender.wait_for_receipt(result, timeout=1)
        with pytest.raises(ReceiptError, match="no receipt subscription"):
            sender.receipts(push_service.url)
        assert sender.receipt_book.without_receipts == {push_service.url}


# The CLI ----------------------------------------------------------------------------------


async def run_cli(*args: str | Path) -> Result:
    runner = CliRunner()
    return await asyncio.to_thread(
        runner.invoke, main, ["send", *map(str, args)], catch_exceptions=False
    )


def cli_base(tmp_path: Path, key: VapidKey, subscription: dict[str, Any]) -> list[str | Path]:
    key_file = tmp_path / "vapid.pem"
    key_file.write_bytes(key.to_pem())
    sub_file = tmp_path / "sub.json"
    sub_file.write_text(json.dumps(subscription))
    return [
        "--key",
        key_file,
        "--subject",
        "mailto:ops@example.com",
        "--subscription",
        sub_file,
        "--retries",
        "0",
    ]


async def test_cli_receipt_delivered(
    service: RunningService, vapid_key: VapidKey, tmp_path: Path
) -> None:
    agent = await service.agent()
    try:
        registration = await agent.register(vapid_key.public_key_b64)
        base = cli_base(tmp_path, vapid_key, registration.subscription_info())
        command = asyncio.create_task(run_cli(*base, "--receipt", "--receipt-timeout", "10", "hi"))
        assert (await agent.next_notification(10)).plaintext == b"hi"
        result = await command
    finally:
        await agent.close()
    assert result.exit_code == 0, result.output
    assert "accepted 202" in result.output
    assert "receipt subscription: " + service.url + "/r/" in result.output
    assert "receipt: delivered (204)" in result.output


async def test_cli_receipt_expired_and_timed_out(
    short_sweep: RunningService, vapid_key: VapidKey, tmp_path: Path
) -> None:
    subscription = await offline_subscription(short_sweep, vapid_key)
    base = cli_base(tmp_path, vapid_key, subscription)
    expired = await run_cli(*base, "--receipt", "--ttl", "1", "--receipt-timeout", "10", "x")
    assert expired.exit_code == 5, expired.output
    assert "receipt: expired (410)" in expired.output
    waited = await run_cli(*base, "--receipt", "--receipt-timeout", "0.3", "x")
    assert waited.exit_code == 6, waited.output
    assert "receipt: none within 0.3 s" in waited.output


async def test_cli_receipt_unavailable(
    push_service: ScriptedService, vapid_key: VapidKey, tmp_path: Path
) -> None:
    keys = Keys.generate()
    base = cli_base(tmp_path, vapid_key, keys.subscription(push_service.endpoint("e")))
    push_service.script("e", _accepted("/r/one", "/m/1"), (201, {"Location": "/m/2"}, b""))
    http1 = await run_cli(*base, "--receipt", "x")
    assert http1.exit_code == 7, http1.output
    assert "HTTP/1.1" in http1.output
    plain = await run_cli(*base, "--receipt", "x")
    assert plain.exit_code == 7, plain.output
    assert "without a receipt subscription" in plain.output


async def test_cli_receipt_needs_one_subscription(vapid_key: VapidKey, tmp_path: Path) -> None:
    base = cli_base(tmp_path, vapid_key, {"endpoint": "http://127.0.0.1:9/push/x"})
    many = [a if a != "--subscription" else "--subscriptions" for a in base]
    result = await run_cli(*many, "--receipt", "x")
    assert result.exit_code == 2 and "--receipt" in result.output


def test_receipt_book_and_stream_still_import_from_receipts() -> None:
    """They moved to `receipt_book` (issue 17): the old import path is an alias."""
    from tidings.sender import receipt_book, receipts
    from tidings.sender.receipts import ReceiptBook, ReceiptStream

    assert ReceiptBook is receipt_book.ReceiptBook
    assert ReceiptStream is receipt_book.ReceiptStream
    with pytest.raises(AttributeError):
        _ = receipts.NoSuchName  # type: ignore[attr-defined]
