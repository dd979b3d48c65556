"""A first end-to-end path: pywebpush sends, the test agent receives the plaintext."""

from __future__ import annotations

import asyncio

from pywebpush import webpush

from support.service import RunningService, pywebpush_key
from tidings.webpush import VapidKey


async def test_pywebpush_to_agent(service: RunningService) -> None:
    key = VapidKey.generate()
    agent = await service.agent()
    registration = await agent.register(key.public_key_b64)
    response = await asyncio.to_thread(
        webpush,
        registration.subscription_info(),
        data="hello from pywebpush",
        vapid_private_key=pywebpush_key(key),
        vapid_claims={"sub": "mailto:ops@example.com"},
        ttl=60,
    )
    assert response.status_code == 201, response.text
    notification = await agent.next_notification()
    assert notification.plaintext == b"hello from pywebpush"
    await agent.close()
