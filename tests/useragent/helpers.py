"""Shared helpers for the user agent tests: a collecting handler and quick senders."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from pywebpush import webpush

from support.service import pywebpush_key
from tidings.useragent import Backoff, PushEvent, UserAgent
from tidings.webpush import VapidKey, encrypt


def make_agent(url: str, state: Path, **kwargs: Any) -> UserAgent:
    """A user agent with test-friendly timings (fast reconnects)."""
    kwargs.setdefault("backoff", Backoff(0.05, 0.5))
    kwargs.setdefault("connect_timeout", 10.0)
    return UserAgent(url, state, **kwargs)


@dataclass
class Inbox:
    """A push handler that records events and lets a test wait for them."""

    events: list[PushEvent] = field(default_factory=list)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def __call__(self, event: PushEvent) -> None:
        self.events.append(event)
        self._changed.set()

    @property
    def texts(self) -> list[str]:
        return [e.data.text() if e.data is not None else "" for e in self.events]

    async def wait_for(self, count: int, timeout: float = 5.0) -> list[PushEvent]:
        async with asyncio.timeout(timeout):
            while len(self.events) < count:
                self._changed.clear()
                await self._changed.wait()
        return self.events


async def send_pywebpush(
    subscription: dict[str, Any], data: str | bytes, key: VapidKey | None = None, ttl: int = 60
) -> int:
    """Send with pywebpush in a thread; return the HTTP status."""
    key = key or VapidKey.generate()
    response = await asyncio.to_thread(
        webpush,
        subscription,
        data=data,
        vapid_private_key=pywebpush_key(key),
        vapid_claims={"sub": "mailto:ops@example.com"},
        ttl=ttl,
    )
    return int(response.status_code)


async def send_raw(
    subscription: dict[str, Any], data: bytes, *, ttl: int = 60, body: bytes | None = None
) -> httpx.Response:
    """POST an aes128gcm body (unsigned: for unrestricted subscriptions)."""
    keys = subscription["keys"]
    payload = body if body is not None else encrypt(data, keys["p256dh"], keys["auth"])
    async with httpx.AsyncClient() as client:
        return await client.post(
            subscription["endpoint"],
            content=payload,
            headers={"TTL": str(ttl), "Content-Encoding": "aes128gcm"},
        )
