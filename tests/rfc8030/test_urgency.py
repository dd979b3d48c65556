"""RFC 8030 sections 5.3 and 6.1: `Urgency`, and monitors that ask for less."""

from __future__ import annotations

from rfc8030.conftest import Rfc8030
from rfc8030.helpers import drain, push, subscribe


async def test_5_3_urgency_is_validated(h2c: Rfc8030) -> None:
    """§5.3: Urgency is one of four values."""
    async with await h2c.connect() as client:
        ua = await subscribe(client)
        assert (await push(client, ua, "x", urgency="urgent"))[0] == 400
        assert (await push(client, ua, "x", urgency="high"))[0] == 201


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


async def test_5_3_user_agent_urgency_filter_holds_back_lower_messages(h2c: Rfc8030) -> None:
    """§5.3: a UA asking for `high` gets only high; the rest waits until it asks again."""
    async with await h2c.connect() as client:
        ua = await subscribe(client)
        for text, urgency in (("low", "low"), ("call", "high"), ("normal", "normal")):
            assert (await push(client, ua, text, urgency=urgency))[0] == 201
        high_only = await drain(client, ua.subscription, urgency="high")
        assert [ua.decrypt(p) for p in high_only] == ["call"]
        for pushed in high_only:
            assert (await client.request("DELETE", pushed.path)).status == 204
        rest = await drain(client, ua.subscription)
        assert [ua.decrypt(p) for p in rest] == ["low", "normal"]


async def test_6_1_set_monitor_honours_the_urgency_filter(h2c: Rfc8030) -> None:
    """§6.1: on a set too, nothing below the urgency the UA asked for is delivered."""
    async with await h2c.connect() as client:
        first = await subscribe(client)
        second = await subscribe(client, set_url=first.set)
        await push(client, first, "ad", urgency="very-low")
        await push(client, second, "call", urgency="high")
        pushed = await drain(client, first.set, urgency="high")
        assert [second.decrypt(p) for p in pushed] == ["call"]
