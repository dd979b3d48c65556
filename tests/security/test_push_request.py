"""The push request path (issues #16 and #19): rate limits charged after VAPID, receipt
subscriptions only for accepted pushes, aesgcm headers normalised and bounded, the draft
VAPID forms, autopush's body size and a cacheable 410."""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from support.service import Registration, RunningService, TestAgent, running_service
from tidings.service.config import ServiceConfig
from tidings.service.errors import Errno
from tidings.service.limits import Limit
from tidings.service.push_request import MAX_CRYPTO_HEADER
from tidings.webpush import (
    VapidKey,
    aesgcm_decrypt,
    aesgcm_encrypt,
    b64url_decode,
    b64url_encode,
    encrypt,
    sign_vapid,
)

SUBJECT = "mailto:ops@example.com"


def aes128gcm(registration: Registration, text: bytes = b"hi") -> bytes:
    keys = registration.subscription_info()["keys"]
    return encrypt(text, keys["p256dh"], keys["auth"])


async def post(
    client: httpx.AsyncClient, endpoint: str, body: bytes, headers: dict[str, str]
) -> httpx.Response:
    return await client.post(endpoint, content=body, headers={"ttl": "60", **headers})


def signed(key: VapidKey, endpoint: str) -> dict[str, str]:
    return {
        "authorization": sign_vapid(key, endpoint, SUBJECT).authorization,
        "content-encoding": "aes128gcm",
    }


# 1. Rate limits are charged after VAPID is verified -----------------------------------


async def test_unsigned_and_invalid_floods_do_not_starve_the_signed_sender(
    tmp_path: Path,
) -> None:
    """Unsigned and invalid requests cost the client address (and unsigned pushes a
    bucket of their own), never the buckets of the subscription's signed sender. The
    flood comes from 127.0.0.2, the signed sender from 127.0.0.1."""
    settings = {
        "rate_push_subscription": "5/min",
        "rate_push_address": "12/min",
        "rate_push_vapid_key": "100/min",
        "rate_limit_exempt": "",  # loopback counts here
    }
    key = VapidKey.generate()
    async with running_service(tmp_path, **settings) as running:
        agent = await running.agent()
        restricted = await agent.register(key.public_key_b64)
        unrestricted = await agent.register()
        other = VapidKey.generate()
        flooder = httpx.AsyncHTTPTransport(local_address="127.0.0.2")
        async with httpx.AsyncClient(timeout=10, transport=flooder) as client:
            for target in (restricted, unrestricted):
                body = aes128gcm(target)
                flood = [
                    {"content-encoding": "aes128gcm"},  # unsigned
                    {"authorization": "vapid t=x.y.z, k=" + key.public_key_b64},  # invalid
                    {"authorization": "Basic dXNlcjpwYXNz"},  # unreadable
                ]
                if target is restricted:  # (any key may sign for an unrestricted one)
                    flood.append(signed(other, target.endpoint))
                statuses = [
                    (await post(client, target.endpoint, body, headers)).status_code
                    for headers in flood * 5
                ]
                assert statuses.count(429) >= 5  # the flood was limited...
        async with httpx.AsyncClient(timeout=10) as client:
            # ...and the signed sender still has its whole burst on both subscriptions.
            for target in (restricted, unrestricted):
                for _ in range(5):
                    answer = await post(
                        client, target.endpoint, aes128gcm(target), signed(key, target.endpoint)
                    )
                    assert answer.status_code == 201, answer.text
            # The subscription's bucket is its signed sender's: the sixth is refused.
            answer = await post(
                client, restricted.endpoint, aes128gcm(restricted), signed(key, restricted.endpoint)
            )
            assert answer.status_code == 429
            assert "per subscription" in answer.json()["message"]
        await agent.close()


async def test_fresh_keys_do_not_take_a_client_past_its_address_share(tmp_path: Path) -> None:
    """A key costs nothing to make: signed pushes count against the address too."""
    settings = {"rate_push_address": "3/min", "rate_limit_exempt": ""}
    async with running_service(tmp_path, **settings) as running:
        agent = await running.agent()
        registration = await agent.register()
        async with httpx.AsyncClient(timeout=10) as client:
            statuses = [
                (
                    await post(
                        client,
                        registration.endpoint,
                        aes128gcm(registration),
                        signed(VapidKey.generate(), registration.endpoint),
                    )
                ).status_code
                for _ in range(4)
            ]
        assert statuses == [201, 201, 201, 429]
        await agent.close()


class _RemoteLimiter:
    """A limiter other than the in-memory one (as Redis's): each charge is awaited."""

    def __init__(self, charged: list[Limit], refuse: Limit | None) -> None:
        self.charged, self.refuse = charged, refuse

    async def acquire(self, limit: Limit, key: str) -> float:
        self.charged.append(limit)
        return 5.0 if limit is self.refuse else 0.0

    def exempt(self, address: str) -> bool:
        return False

    async def close(self) -> None:
        pass


@pytest.mark.parametrize("remote", [False, True], ids=["in-memory", "remote"])
@pytest.mark.parametrize(
    ("sign", "refuse", "status", "charged"),
    [
        (True, None, 201, [Limit.PUSH_ADDRESS, Limit.PUSH_VAPID_KEY, Limit.PUSH_SUBSCRIPTION]),
        (True, Limit.PUSH_VAPID_KEY, 429, [Limit.PUSH_ADDRESS, Limit.PUSH_VAPID_KEY]),
        (True, Limit.PUSH_ADDRESS, 429, [Limit.PUSH_ADDRESS]),
        (False, None, 201, [Limit.PUSH_ADDRESS, Limit.PUSH_SUBSCRIPTION]),
    ],
)
async def test_a_push_charges_its_buckets_in_order_up_to_the_first_refusal(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    remote: bool,
    sign: bool,
    refuse: Limit | None,
    status: int,
    charged: list[Limit],
) -> None:
    """Address, then key, then subscription, whichever limiter; the in-memory one is
    charged without the coroutines a remote one is awaited through."""
    async with running_service(tmp_path, rate_limit_exempt="") as running:
        service = running.service
        assert service is not None
        agent = await running.agent()
        registration = await agent.register()
        seen: list[Limit] = []
        if remote:
            service.limits = _RemoteLimiter(seen, refuse)
        else:

            def take(limit: Limit, key: str) -> float:
                seen.append(limit)
                return 5.0 if limit is refuse else 0.0

            async def awaited(*args: object) -> None:
                raise AssertionError("the in-memory limiter was charged through a coroutine")

            monkeypatch.setattr(service.limits, "take", take)
            monkeypatch.setattr(service, "check_rate", awaited)
            monkeypatch.setattr(service, "check_address_rate", awaited)
        headers = (
            signed(VapidKey.generate(), registration.endpoint)
            if sign
            else {"content-encoding": "aes128gcm"}
        )
        async with httpx.AsyncClient(timeout=10) as client:
            answer = await post(client, registration.endpoint, aes128gcm(registration), headers)
        assert answer.status_code == status
        assert seen == charged
        if status == 429:
            assert answer.headers["retry-after"] == "5"
        await agent.close()


# 2. Receipt subscriptions only for accepted pushes -------------------------------------


def receipt_subscriptions(running: RunningService) -> int:
    with sqlite3.connect(running.config.db) as db:
        (count,) = db.execute("SELECT COUNT(*) FROM receipt_subscriptions").fetchone()
    return int(count)


async def test_a_refused_push_leaves_no_receipt_subscription(tmp_path: Path) -> None:
    async with running_service(tmp_path, max_messages_per_user_agent=1) as running:
        agent = await running.agent()
        full, gone = await agent.register(), await agent.register()
        await agent.unregister(gone)
        await agent.close()  # nothing is delivered: the first push fills the quota
        asks = {"content-encoding": "aes128gcm", "prefer": "respond-async"}
        async with httpx.AsyncClient(timeout=10) as client:
            first = await post(client, full.endpoint, aes128gcm(full), asks)
            assert first.status_code == 202, first.text
            assert receipt_subscriptions(running) == 1
            refused = [
                await post(client, full.endpoint, aes128gcm(full), asks),  # over quota
                await post(client, gone.endpoint, aes128gcm(gone), asks),  # gone
                await post(client, full.endpoint, aes128gcm(full), {**asks, "ttl": "-1"}),
                await post(client, full.endpoint, b"x" * 30, {**asks, "content-encoding": "x"}),
            ]
            assert [r.status_code for r in refused] == [429, 410, 400, 400]
            ttl0 = await post(client, gone.endpoint, b"", {"prefer": "respond-async", "ttl": "0"})
            assert ttl0.status_code == 410
        assert receipt_subscriptions(running) == 1


# 3 and 6. aesgcm headers: normalised as autopush does, and bounded ---------------------


def aesgcm_headers(registration: Registration) -> tuple[bytes, dict[str, str]]:
    keys = registration.subscription_info()["keys"]
    message = aesgcm_encrypt(b"legacy aesgcm", keys["p256dh"], keys["auth"])
    return message.body, {
        "content-encoding": "aesgcm",
        "encryption": message.headers["Encryption"],
        "crypto-key": message.headers["Crypto-Key"],
    }


@pytest.fixture
async def legacy(service: RunningService) -> AsyncIterator[tuple[TestAgent, Registration]]:
    """A connected agent and one of its subscriptions, for aesgcm pushes."""
    agent = await service.agent()
    yield agent, await agent.register()
    await agent.close()


def padded(value: str) -> str:
    """`name=base64url` with standard `=` padding and quotes, as some senders write it."""
    name, _, text = value.partition("=")
    return f'{name}="{text}{"=" * (-len(text) % 4)}"'


@pytest.mark.parametrize(
    ("header", "filler"),
    [
        ("encryption", ";keyid=" + "k" * MAX_CRYPTO_HEADER),
        ("crypto-key", ";keyid=" + "k" * MAX_CRYPTO_HEADER),
        ("crypto-key", "," + ";".join(f"x{i}=y" for i in range(MAX_CRYPTO_HEADER // 4))),
    ],
)
async def test_an_oversized_aesgcm_header_is_400(
    legacy: tuple[TestAgent, Registration], header: str, filler: str
) -> None:
    agent, registration = legacy
    body, headers = aesgcm_headers(registration)
    async with httpx.AsyncClient(timeout=10) as client:
        response = await post(client, registration.endpoint, body, headers)
        assert response.status_code == 201  # the same push, its headers as they come
        headers[header] += filler
        response = await post(client, registration.endpoint, body, headers)
    assert response.status_code == 400
    document = response.json()
    assert document["errno"] == Errno.CRYPTO_HEADER_TOO_LONG == 118
    assert str(MAX_CRYPTO_HEADER) in document["message"]
    await agent.next_notification()
    await agent.no_frame()  # the refused one never reaches the user agent


async def test_a_long_vapid_key_does_not_count_against_the_cap(service: RunningService) -> None:
    """The cap is on what is relayed: `p256ecdsa=` is removed first."""
    agent = await service.agent()
    registration = await agent.register()
    body, headers = aesgcm_headers(registration)
    headers["crypto-key"] += ";p256ecdsa=" + "A" * MAX_CRYPTO_HEADER
    async with httpx.AsyncClient(timeout=10) as client:
        assert (await post(client, registration.endpoint, body, headers)).status_code == 201
    frame = (await agent.next_notification()).frame
    assert "p256ecdsa" not in frame["headers"]["crypto_key"]
    await agent.close()


async def test_padded_quoted_aesgcm_parameters_are_relayed_without_padding(
    service: RunningService,
) -> None:
    """Firefox decodes salt and dh as base64url with padding rejected: the service
    relays them as autopush does (no quotes, no padding, keyid kept, p256ecdsa gone)."""
    agent = await service.agent()
    registration = await agent.register()
    body, headers = aesgcm_headers(registration)
    salt, dh = headers["encryption"], headers["crypto-key"]
    vapid = VapidKey.generate().public_key_b64
    headers["encryption"] = f"keyid=p256dh; {padded(salt)}; rs=4096"
    headers["crypto-key"] = f'keyid="p256dh";{padded(dh)}, p256ecdsa={vapid}='
    assert "=;" in headers["encryption"] or '=";' in headers["encryption"]
    async with httpx.AsyncClient(timeout=10) as client:
        assert (await post(client, registration.endpoint, body, headers)).status_code == 201
    frame = (await agent.next_notification()).frame
    relayed = frame["headers"]
    assert relayed["encryption"] == f"keyid=p256dh;{salt};rs=4096"
    assert relayed["crypto_key"] == f"keyid=p256dh;{dh}"
    for value in (relayed["encryption"], relayed["crypto_key"]):
        for param in value.replace(",", ";").split(";"):
            text = param.partition("=")[2]
            assert "=" not in text and '"' not in text, param
    plaintext = aesgcm_decrypt(
        b64url_decode(frame["data"]),
        registration.private_key,
        registration.auth,
        encryption=relayed["encryption"],
        crypto_key=relayed["crypto_key"],
    )
    assert plaintext == b"legacy aesgcm"
    await agent.close()


@pytest.mark.parametrize(
    ("header", "value"),
    [("encryption", "salt=not+base64/url"), ("crypto-key", "dh=AAAA$")],
)
async def test_aesgcm_salt_and_dh_must_be_base64url(
    legacy: tuple[TestAgent, Registration], header: str, value: str
) -> None:
    body, headers = aesgcm_headers(legacy[1])
    headers[header] = value
    async with httpx.AsyncClient(timeout=10) as client:
        response = await post(client, legacy[1].endpoint, body, headers)
    assert response.status_code == 400
    assert response.json()["errno"] == Errno.BAD_ENCODING


# 4. The draft VAPID forms ----------------------------------------------------------------


def draft_token(key: VapidKey, endpoint: str) -> str:
    """A draft-style JWT: `aud` and `exp`, no `sub` (the drafts made it optional)."""
    from tidings.webpush.vapid import vapid_audience

    claims = {"aud": vapid_audience(endpoint), "exp": int(__import__("time").time()) + 3600}
    return _sign(key, claims)


def _sign(key: VapidKey, claims: dict[str, Any]) -> str:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    head = b64url_encode(b'{"typ":"JWT","alg":"ES256"}')
    body = b64url_encode(json.dumps(claims).encode())
    der = key.private_key.sign(f"{head}.{body}".encode(), ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    return f"{head}.{body}.{b64url_encode(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


@pytest.mark.parametrize("scheme", ["WebPush", "Bearer"])
@pytest.mark.parametrize("separator", [";", ", "])
async def test_draft_vapid_forms_with_aesgcm_in_one_crypto_key(
    service: RunningService, scheme: str, separator: str
) -> None:
    key = VapidKey.generate()
    agent = await service.agent()
    registration = await agent.register(key.public_key_b64)
    body, headers = aesgcm_headers(registration)
    headers["authorization"] = f"{scheme} {draft_token(key, registration.endpoint)}"
    headers["crypto-key"] += f"{separator}p256ecdsa={key.public_key_b64}"
    async with httpx.AsyncClient(timeout=10) as client:
        response = await post(client, registration.endpoint, body, headers)
        assert response.status_code == 201, response.text
        # Another key in the same place is still refused.
        headers["crypto-key"] = headers["crypto-key"].replace(
            key.public_key_b64, VapidKey.generate().public_key_b64
        )
        refused = await post(client, registration.endpoint, body, headers)
        assert refused.status_code == 403
    frame = (await agent.next_notification()).frame
    assert "p256ecdsa" not in frame["headers"]["crypto_key"]
    await agent.no_frame()
    await agent.close()


# 7. autopush's body size ------------------------------------------------------------------


async def test_a_5624_byte_body_is_accepted_by_default(service: RunningService) -> None:
    """autopush accepts it (aesgcm of a 4 KB payload); Tidings once answered 413."""
    agent = await service.agent()
    registration = await agent.register()
    body = aes128gcm(registration)
    body += os.urandom(5624 - len(body))
    async with httpx.AsyncClient(timeout=10) as client:
        response = await post(client, registration.endpoint, body, {"content-encoding": "aesgcm"})
        assert response.status_code == 400  # (aesgcm without its headers: checked after size)
        response = await post(
            client, registration.endpoint, body, {"content-encoding": "aes128gcm"}
        )
    assert response.status_code == 201, response.text
    frame = await agent.expect("notification")  # (not decryptable: the filler is random)
    assert b64url_decode(frame["data"]) == body
    await agent.close()


async def test_max_body_is_followed_by_every_layer(tmp_path: Path) -> None:
    """At its highest setting a body still passes the HTTP layer, the store and the
    WebSocket frame to the user agent; one byte more is a 413; higher is refused."""
    with pytest.raises(ValueError, match="max_body"):
        ServiceConfig(max_body=65537)
    async with running_service(tmp_path, max_body=65536) as running:
        agent = await running.agent()
        registration = await agent.register()
        body = aes128gcm(registration)
        body += os.urandom(65536 - len(body))
        async with httpx.AsyncClient(timeout=10) as client:
            headers = {"content-encoding": "aes128gcm"}
            response = await post(client, registration.endpoint, body, headers)
            assert response.status_code == 201, response.text
            response = await post(client, registration.endpoint, body + b"\0", headers)
            assert response.status_code == 413
        frame = await agent.expect("notification")
        assert b64url_decode(frame["data"]) == body
        await agent.close()


# 8. A 410 may be remembered ---------------------------------------------------------------


async def test_a_410_for_a_gone_subscription_is_cacheable(service: RunningService) -> None:
    agent: TestAgent = await service.agent()
    registration = await agent.register()
    await agent.unregister(registration)
    await agent.close()
    async with httpx.AsyncClient(timeout=10) as client:
        for ttl in ("60", "0"):
            response = await post(
                client,
                registration.endpoint,
                aes128gcm(registration),
                {"content-encoding": "aes128gcm", "ttl": ttl},
            )
            assert response.status_code == 410
            assert response.json()["errno"] == Errno.SUBSCRIPTION_GONE
            assert response.headers["cache-control"] == "max-age=86400"
