"""More RFC 8030 conformance: the requirements test_conformance.py leaves untested.

docs/rfc8030.md maps every MUST and SHOULD that applies to a push service to a test in
this file or in test_conformance.py. Section numbers are RFC 8030's.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import time
from pathlib import Path

import h2.settings
import httpx
import pytest

from rfc8030.conftest import Rfc8030
from rfc8030.test_conformance import UA, drain, path_of, push, subscribe
from support.service import running_service
from tidings.http2 import H2Client
from tidings.webpush import b64url_decode, encrypt, public_key_bytes
from tidings.webpush.links import link_target

REL_PUSH = "urn:ietf:params:push"
REL_RECEIPT = "urn:ietf:params:push:receipt"
MAX_TTL = 30 * 24 * 3600  # the service's default max_ttl


def token_of(url: str) -> str:
    return url.rsplit("/", 1)[1]


def tampered(url: str) -> str:
    """The same capability URL with one character of its token changed."""
    head, token = url.rsplit("/", 1)
    middle = len(token) // 2
    swapped = "A" if token[middle] != "A" else "B"
    return f"{head}/{token[:middle]}{swapped}{token[middle + 1 :]}"


# Section 5.2: TTL ------------------------------------------------------------------------


async def test_5_2_answered_ttl_never_exceeds_the_request(h2c: Rfc8030) -> None:
    """§5.2: the TTL answered MUST be ≤ the one asked; an overflowing TTL is capped."""
    async with await h2c.connect() as client:
        ua = await subscribe(client)
        status, headers = await push(client, ua, "x", ttl=str(10**20))
        assert status == 201
        assert int(headers["ttl"]) == MAX_TTL
        status, headers = await push(client, ua, "y", ttl=str(MAX_TTL + 1))
        assert status == 201 and int(headers["ttl"]) <= MAX_TTL + 1


async def test_5_2_ttl_is_digits_only(h2c: Rfc8030) -> None:
    """§5.2: TTL = 1*DIGIT; anything else is refused like a missing TTL (400)."""
    async with await h2c.connect() as client:
        ua = await subscribe(client)
        for bad in ("-1", "1.5", "ten", "", "60, 60"):
            assert (await push(client, ua, "x", ttl=bad))[0] == 400, bad


# Section 5.3: Urgency -------------------------------------------------------------------


async def test_5_3_more_than_one_urgency_value_is_400(h2c: Rfc8030) -> None:
    """§5.3: multiple Urgency values MUST be answered 400."""
    async with await h2c.connect() as client:
        ua = await subscribe(client)
        assert (await push(client, ua, "x", urgency="high, low"))[0] == 400
        assert (await push(client, ua, "x", urgency="high,high"))[0] == 400


async def test_5_3_a_message_without_urgency_is_normal(h2c: Rfc8030) -> None:
    """§5.3: no Urgency means normal: a UA asking for normal gets it, one asking high not."""
    async with await h2c.connect() as client:
        ua = await subscribe(client)
        await push(client, ua, "plain")
        assert await drain(client, ua.subscription, urgency="high") == []
        assert [ua.decrypt(p) for p in await drain(client, ua.subscription, urgency="normal")] == [
            "plain"
        ]


async def test_6_1_set_monitor_honours_the_urgency_filter(h2c: Rfc8030) -> None:
    """§6.1: on a set too, nothing below the urgency the UA asked for is delivered."""
    async with await h2c.connect() as client:
        first = await subscribe(client)
        second = await subscribe(client, set_url=first.set)
        await push(client, first, "ad", urgency="very-low")
        await push(client, second, "call", urgency="high")
        pushed = await drain(client, first.set, urgency="high")
        assert [second.decrypt(p) for p in pushed] == ["call"]


# Section 5.4: replacing ----------------------------------------------------------------------


async def test_5_4_replacement_deletes_the_old_message_resource(h2c: Rfc8030) -> None:
    """§5.4: the replaced message's resource is deleted; the new one exists."""
    async with await h2c.connect() as client:
        ua = await subscribe(client)
        _, old = await push(client, ua, "old", topic="news")
        status, new = await push(client, ua, "new", topic="news")
        assert status == 201 and new["location"] != old["location"]
        assert (await client.request("DELETE", path_of(old["location"]))).status == 404
        assert (await client.request("DELETE", path_of(new["location"]))).status == 204


async def test_5_4_replacement_replaces_the_urgency(h2c: Rfc8030) -> None:
    """§5.4: the stored Urgency is the replacement's."""
    async with await h2c.connect() as client:
        ua = await subscribe(client)
        await push(client, ua, "urgent", topic="t", urgency="high")
        await push(client, ua, "not any more", topic="t", urgency="very-low")
        assert await drain(client, ua.subscription, urgency="high") == []
        assert [ua.decrypt(p) for p in await drain(client, ua.subscription)] == ["not any more"]


async def test_5_4_replacement_replaces_the_ttl(h2c: Rfc8030) -> None:
    """§5.4: the stored TTL is the replacement's (a shorter one expires it)."""
    async with await h2c.connect() as client:
        ua = await subscribe(client)
        await push(client, ua, "long", topic="t", ttl="600")
        await push(client, ua, "short", topic="t", ttl="1")
        await asyncio.sleep(1.3)
        assert await drain(client, ua.subscription) == []


# Section 6: receiving ------------------------------------------------------------------------


async def test_6_pushed_message_names_its_push_resource(h2c: Rfc8030) -> None:
    """§6: the pushed response SHOULD carry Link rel=urn:ietf:params:push."""
    async with await h2c.connect() as client:
        ua = await subscribe(client)
        await push(client, ua, "x")
        (pushed,) = await drain(client, ua.subscription)
        assert link_target(pushed.headers.get("link", ""), REL_PUSH) == ua.push


async def test_6_1_set_push_promise_names_the_push_resource(h2c: Rfc8030) -> None:
    """§6.1: for a set, the synthetic request (the PUSH_PROMISE) MUST carry the push
    resource's Link, so the UA can tell the subscriptions apart before the response."""
    async with await h2c.connect() as client:
        first = await subscribe(client)
        second = await subscribe(client, set_url=first.set)
        await push(client, second, "x")
        (pushed,) = await drain(client, first.set)
        assert link_target(pushed.request_headers.get("link", ""), REL_PUSH) == second.push


async def test_6_3_receipt_carries_no_data_and_the_get_stays_open(h2c: Rfc8030) -> None:
    """§6.3: a receipt is a pushed response without a body; the GET is never answered."""
    async with await h2c.connect() as client:
        ua = await subscribe(client)
        _, headers = await push(client, ua, "x", prefer="respond-async")
        receipts = await client.open_stream(
            "GET", path_of(link_target(headers["link"], REL_RECEIPT) or "")
        )
        (delivered,) = await drain(client, ua.subscription)
        await client.request("DELETE", delivered.path)
        receipt = await receipts.next_push(5)
        assert receipt.status == 204 and receipt.body == b""
        assert receipt.request_headers[":method"] == "GET"
        await asyncio.sleep(0.1)
        assert not receipts.response.done()
        client.cancel(receipts)


class _NoPushClient(H2Client):
    """An HTTP/2 client that disables server push (SETTINGS_ENABLE_PUSH 0), as curl does."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.conn.update_settings({h2.settings.SettingCodes.ENABLE_PUSH: 0})
        self._flush()


async def test_6_monitor_without_server_push_is_refused(h2c: Rfc8030) -> None:
    """§6: messages can only arrive as server pushes; a monitor whose connection refuses
    them must not be told "no messages" (204) while messages are stored."""
    async with await h2c.connect() as client:
        ua = await subscribe(client)
        await push(client, ua, "stored")
    client = await _NoPushClient.connect(h2c.service.url)
    try:
        await asyncio.sleep(0.1)  # the SETTINGS change is acknowledged
        stream = await client.open_stream("GET", path_of(ua.subscription), {"prefer": "wait=0"})
        response = await asyncio.wait_for(stream.response, 5)
    finally:
        await client.close()
    async with await h2c.connect() as client:  # nothing was lost meanwhile
        assert [ua.decrypt(p) for p in await drain(client, ua.subscription)] == ["stored"]
    assert 400 <= response.status < 500, response


# Section 7.2: expiration and size -----------------------------------------------------------


async def test_7_2_last_modified_is_when_the_push_was_requested(h2c: Rfc8030) -> None:
    """§7.2: a stored message SHOULD carry Last-Modified = when delivery was requested."""
    async with await h2c.connect() as client:
        ua = await subscribe(client)
        requested = time.time()
        await push(client, ua, "x")
        await asyncio.sleep(1.1)
        (pushed,) = await drain(client, ua.subscription)
    stamp = email.utils.parsedate_to_datetime(pushed.headers["last-modified"]).timestamp()
    assert requested - 1 <= stamp <= requested + 1


async def test_7_2_only_expired_messages_is_as_if_none_was_sent(h2c: Rfc8030) -> None:
    """§7.2: a GET when everything has expired looks as though nothing was ever sent."""
    async with await h2c.connect() as client:
        ua = await subscribe(client)
        await push(client, ua, "gone soon", ttl="1")
        await asyncio.sleep(1.3)
        stream = await client.open_stream("GET", path_of(ua.subscription), {"prefer": "wait=0"})
        response = await asyncio.wait_for(stream.response, 5)
        assert response.status == 204 and stream.pushes.empty()


async def test_7_2_4096_bytes_are_accepted_and_413_only_above(h2c: Rfc8030) -> None:
    """§7.2: a push service MUST NOT answer 413 to a body of 4096 bytes or less; Tidings
    takes up to `max_body` (autopush's 5630 by default) and refuses more."""
    async with await h2c.connect() as client:
        ua = await subscribe(client)
        body = encrypt(b"x" * 3993, public_key_bytes(ua.key.public_key()), ua.auth)
        assert len(body) == 4096
        headers = {"ttl": "60", "content-encoding": "aes128gcm"}
        response = await client.request("POST", path_of(ua.push), headers, body)
        assert response.status == 201
        (pushed,) = await drain(client, ua.subscription)
        assert ua.decrypt(pushed) == "x" * 3993
        max_body = h2c.service.config.max_body
        larger = body + b"\0" * (max_body - len(body))
        response = await client.request("POST", path_of(ua.push), headers, larger)
        assert response.status == 201  # not a valid body for the user agent, but accepted
        response = await client.request("POST", path_of(ua.push), headers, larger + b"\0")
        assert response.status == 413


# Section 7.3: expiration and removal ---------------------------------------------------------


async def test_7_3_unknown_receipt_subscription_is_404(h2c: Rfc8030) -> None:
    """§7.3: a GET of a receipt subscription the service does not have is a 404."""
    async with await h2c.connect() as client:
        ua = await subscribe(client)
        _, headers = await push(client, ua, "x", prefer="respond-async")
        receipt_url = link_target(headers["link"], REL_RECEIPT) or ""
        response = await client.request("GET", path_of(tampered(receipt_url)), timeout=5)
        assert response.status == 404


async def test_7_3_application_server_deletes_its_receipt_subscription(h2c: Rfc8030) -> None:
    """§7.3: an application server removes its receipt subscription with DELETE; then a
    GET of it is a 404 and a push naming it is a 400 (§5.1)."""
    async with await h2c.connect() as client:
        ua = await subscribe(client)
        _, headers = await push(client, ua, "x", prefer="respond-async")
        receipt_url = link_target(headers["link"], REL_RECEIPT) or ""
        response = await client.request("DELETE", path_of(receipt_url))
        assert response.status == 204, (response.status, response.body)
        assert (await client.request("GET", path_of(receipt_url), timeout=5)).status == 404
        link = f'<{receipt_url}>; rel="{REL_RECEIPT}"'
        assert (await push(client, ua, "y", prefer="respond-async", link=link))[0] == 400


async def test_7_3_1_removed_subscription_leaves_its_set_and_a_removed_set_is_404(
    h2c: Rfc8030,
) -> None:
    """§7.3.1: a removed subscription is removed from its set; a removed set's GET is 404."""
    async with await h2c.connect() as client:
        first = await subscribe(client)
        second = await subscribe(client, set_url=first.set)
        await push(client, first, "for first")
        await push(client, second, "for second")
        assert (await client.request("DELETE", path_of(first.subscription))).status == 204
        assert [second.decrypt(p) for p in await drain(client, first.set)] == ["for second"]
        assert (await client.request("DELETE", path_of(first.set))).status == 204
        response = await client.request("GET", path_of(first.set), {"prefer": "wait=0"})
        assert response.status == 404
        response = await client.request("GET", path_of(second.subscription), {"prefer": "wait=0"})
        assert response.status == 404


async def test_7_3_push_to_an_unknown_push_resource_is_404(h2c: Rfc8030) -> None:
    """§7.3: a push to a push resource the service does not have is a 404."""
    async with await h2c.connect() as client:
        ua = await subscribe(client)
        assert (await push(client, ua, None))[0] == 201
        response = await client.request("POST", path_of(tampered(ua.push)), {"ttl": "60"})
        assert response.status == 404


# Section 8: security ----------------------------------------------------------------------


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


# Sections 2 and 9: HTTP/1.1 where it suffices; the registered header fields -----------------


async def test_9_1_header_fields_over_http1(h2c: Rfc8030) -> None:
    """§1.1/§9.1: subscribe, push (TTL, Urgency, Topic in any letter case), cancel and
    unsubscribe work over HTTP/1.1; only monitoring needs HTTP/2."""
    async with httpx.AsyncClient(base_url=h2c.service.url, timeout=5) as http1:
        created = await http1.post("/subscribe")
        assert created.status_code == 201 and created.http_version == "HTTP/1.1"
        ua = UA({k.lower(): v for k, v in created.headers.items()})
        response = await http1.post(
            ua.push,
            content=ua.encrypt("over 1.1"),
            headers={"tTl": "60", "URGENCY": "high", "Topic": "t", "content-encoding": "aes128gcm"},
        )
        assert response.status_code == 201 and response.headers["ttl"] == "60"
        assert (await http1.delete(response.headers["location"])).status_code == 204
        refused = await http1.post(ua.push, headers={"TTL": "60", "urgency": "soon"})
        assert refused.status_code == 400 and json.loads(refused.content)["errno"]
        assert (await http1.delete(ua.subscription)).status_code == 204
