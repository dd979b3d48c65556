"""pywebpush as a real application server against the service: both content codings.

The test agent decrypts what it receives: aes128gcm with `tidings.webpush.decrypt`
(inside `next_notification`), the legacy aesgcm with `aesgcm_decrypt` and the
Encryption / Crypto-Key values the service forwarded in the frame's headers.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from py_vapid import Vapid01
from pywebpush import WebPushException, webpush, webpush_async

from support.service import Registration, RunningService, pywebpush_key
from tidings.webpush import VapidKey, aesgcm_decrypt, b64url_decode

CLAIMS = {"sub": "mailto:ops@example.com"}
PLAINTEXT = "pywebpush says héllo ✓"


def aesgcm_plaintext(frame: dict[str, Any], registration: Registration) -> bytes:
    headers = frame["headers"]
    assert headers["encoding"] == "aesgcm"
    assert "p256ecdsa" not in headers["crypto_key"]
    return aesgcm_decrypt(
        b64url_decode(frame["data"]),
        registration.private_key,
        registration.auth,
        encryption=headers["encryption"],
        crypto_key=headers["crypto_key"],
    )


async def send(registration: Registration, vapid: Any, **options: Any) -> Any:
    return await asyncio.to_thread(
        webpush,
        registration.subscription_info(),
        data=PLAINTEXT,
        vapid_private_key=vapid,
        vapid_claims=dict(CLAIMS),
        ttl=60,
        **options,
    )


async def test_pywebpush_aes128gcm(service: RunningService) -> None:
    key = VapidKey.generate()
    agent = await service.agent()
    registration = await agent.register(key.public_key_b64)
    response = await send(registration, pywebpush_key(key))
    assert response.status_code == 201, response.text
    assert response.headers["location"].startswith(service.url + "/m/")
    notification = await agent.next_notification()
    assert notification.frame["headers"] == {"encoding": "aes128gcm"}
    assert notification.plaintext == PLAINTEXT.encode()
    await agent.close()


async def test_pywebpush_aesgcm(service: RunningService) -> None:
    key = VapidKey.generate()
    agent = await service.agent()
    registration = await agent.register(key.public_key_b64)
    response = await send(registration, pywebpush_key(key), content_encoding="aesgcm")
    assert response.status_code == 201, response.text
    notification = await agent.next_notification()
    assert aesgcm_plaintext(notification.frame, registration) == PLAINTEXT.encode()
    await agent.close()


async def test_pywebpush_aesgcm_with_legacy_webpush_vapid(service: RunningService) -> None:
    # Vapid01 signs `Authorization: WebPush <jwt>` with `Crypto-Key: p256ecdsa=...`, to
    # which pywebpush appends `;dh=...`: the service must check the key, then strip it.
    key = VapidKey.generate()
    agent = await service.agent()
    registration = await agent.register(key.public_key_b64)
    legacy = Vapid01.from_string(private_key=pywebpush_key(key))
    response = await send(registration, legacy, content_encoding="aesgcm")
    assert response.status_code == 201, response.text
    notification = await agent.next_notification()
    assert aesgcm_plaintext(notification.frame, registration) == PLAINTEXT.encode()
    assert key.public_key_b64 not in str(notification.frame)
    await agent.close()


async def test_pywebpush_with_the_wrong_key_is_refused(service: RunningService) -> None:
    agent = await service.agent()
    registration = await agent.register(VapidKey.generate().public_key_b64)
    with pytest.raises(WebPushException) as raised:
        await send(registration, pywebpush_key(VapidKey.generate()))
    assert raised.value.response is not None
    assert raised.value.response.status_code == 403
    assert raised.value.response.json()["errno"] == 107
    await agent.no_frame()
    await agent.close()


async def test_pywebpush_async_many(service: RunningService) -> None:
    key = VapidKey.generate()
    agent = await service.agent()
    registration = await agent.register(key.public_key_b64)
    texts = [f"message {index}" for index in range(10)]
    for text in texts:
        response = await webpush_async(
            registration.subscription_info(),
            data=text,
            vapid_private_key=pywebpush_key(key),
            vapid_claims=dict(CLAIMS),
            ttl=60,
        )
        assert response.status == 201
    received = [(await agent.next_notification()).plaintext for _ in texts]
    assert received == [text.encode() for text in texts]
    await agent.close()
