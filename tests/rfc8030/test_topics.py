"""RFC 8030 section 5.4: `Topic`, and a message that replaces another."""

from __future__ import annotations

import asyncio

from rfc8030.conftest import Rfc8030
from rfc8030.helpers import drain, path_of, push, subscribe


async def test_5_4_topic_is_validated(h2c: Rfc8030) -> None:
    """§5.4: at most 32 characters of the base64url alphabet."""
    async with await h2c.connect() as client:
        ua = await subscribe(client)
        assert (await push(client, ua, "x", topic="a" * 33))[0] == 400
        assert (await push(client, ua, "x", topic="not ok!"))[0] == 400


async def test_5_4_topic_replaces_a_stored_message(h2c: Rfc8030) -> None:
    """§5.4: a message with the Topic of a stored one replaces it."""
    async with await h2c.connect() as client:
        ua = await subscribe(client)
        await push(client, ua, "first", topic="status")
        await push(client, ua, "unrelated")
        await push(client, ua, "second", topic="status")
        texts = [ua.decrypt(p) for p in await drain(client, ua.subscription)]
        assert texts == ["unrelated", "second"]


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
