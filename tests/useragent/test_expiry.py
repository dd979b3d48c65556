"""The service's expiry sweep forgets a user agent; the Python user agent notices on its
next connection and fires `pushsubscriptionchange`, resubscribing itself or leaving it
to the handler."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from support.service import RunningService
from tidings.useragent import PushSubscriptionChangeEvent

from .helpers import Inbox, make_agent, send_raw


async def _forget_everyone(service: RunningService) -> None:
    """Run the service's user-agent sweep as if the expiry time had passed."""
    assert service.service is not None
    later = time.time() + service.config.user_agent_expiry + 60
    assert await service.service.sweep_user_agents(later) == 1


async def test_an_expired_user_agent_is_resubscribed_and_told(
    service: RunningService, tmp_path: Path
) -> None:
    state = tmp_path / "ua"
    async with make_agent(service.ws_url, state) as ua:
        old = await (await ua.register("app")).push_manager.subscribe()
        old_uaid = ua.uaid
    await _forget_everyone(service)
    assert (await send_raw(old.to_json(), b"to nobody")).status_code in (404, 410)

    changes: asyncio.Queue[PushSubscriptionChangeEvent] = asyncio.Queue()
    inbox = Inbox()
    async with make_agent(service.ws_url, state) as ua:
        registration = await ua.register(
            "app", on_push=inbox, on_subscription_change=changes.put_nowait
        )
        event = await asyncio.wait_for(changes.get(), 10)
        assert event.old_subscription == old
        new = event.new_subscription
        assert new is not None and new.endpoint != old.endpoint
        assert ua.uaid != old_uaid
        assert await registration.push_manager.get_subscription() == new
        assert (await send_raw(new.to_json(), b"welcome back")).status_code == 201
        assert (await inbox.wait_for(1))[0].data.text() == "welcome back"  # type: ignore[union-attr]


async def test_with_resubscribe_off_the_handler_subscribes_again(
    service: RunningService, tmp_path: Path
) -> None:
    state = tmp_path / "ua"
    async with make_agent(service.ws_url, state, resubscribe=False) as ua:
        old = await (await ua.register("app")).push_manager.subscribe()
    await _forget_everyone(service)

    inbox = Inbox()
    renewed: asyncio.Future[dict[str, object]] = asyncio.get_running_loop().create_future()
    async with make_agent(service.ws_url, state, resubscribe=False) as ua:

        async def on_change(event: PushSubscriptionChangeEvent) -> None:
            assert event.old_subscription == old and event.new_subscription is None
            assert await registration.push_manager.get_subscription() is None
            fresh = await registration.push_manager.subscribe()
            renewed.set_result(fresh.to_json())

        registration = await ua.register("app", on_push=inbox, on_subscription_change=on_change)
        info = await asyncio.wait_for(renewed, 10)
        assert info["endpoint"] != old.endpoint
        assert (await send_raw(info, b"chosen by the handler")).status_code == 201
        assert (await inbox.wait_for(1))[0].data.text() == "chosen by the handler"  # type: ignore[union-attr]
