"""Fixtures for the sender tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from sender.helpers import ScriptedService
from tidings.webpush import VapidKey


@pytest.fixture
def vapid_key() -> VapidKey:
    return VapidKey.generate()


@pytest.fixture
async def push_service() -> AsyncIterator[ScriptedService]:
    service = await ScriptedService().start()
    try:
        yield service
    finally:
        await service.stop()
