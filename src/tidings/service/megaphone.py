"""Keeping this node's broadcasts current, and telling connected clients of changes.

Broadcasts come from one of two places:

- the store (the default): the operator sets them through the admin API
  (`tidings broadcast set`); the node that takes the change tells its own clients at
  once and announces it on the cluster bus, on which every other node re-reads the
  store's small `broadcasts` table at once; each node also re-reads it every
  `broadcast_poll` seconds, in case an announcement was lost (Redis down);
- Mozilla's Megaphone service (`--megaphone-url`): its `/v1/broadcasts` document is
  polled every `megaphone_poll` seconds with the bearer token, as autoconnect does;
  the admin API then refuses changes (Megaphone is the source of truth).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import httpx

from tidings.service.broadcasts import MAX_BROADCASTS, BroadcastSet, parse_megaphone
from tidings.service.cluster import ClusterBus
from tidings.service.config import ServiceConfig
from tidings.service.hub import Hub
from tidings.service.store import Store, StoreUnavailable

log = logging.getLogger("tidings.broadcasts")

MAX_MEGAPHONE_DOCUMENT = 1 << 20  # bytes of a Megaphone answer read at most
# A hello arriving while the broadcasts are being read waits this long at most for the
# read to finish, so that it is answered with what was just read.
HELLO_WAIT = 2.0


class BroadcastFull(Exception):
    """The service already keeps MAX_BROADCASTS broadcasts."""


class BroadcastKeeper:
    """This node's `BroadcastSet`, its refresh loop, and the operator's changes."""

    def __init__(self, config: ServiceConfig, store: Store, bus: ClusterBus) -> None:
        self.config = config
        self.store = store
        self.bus = bus
        self.hub: Hub = bus.hub
        self._announced: asyncio.Task[None] | None = None  # a re-read asked by another node
        self.current = BroadcastSet()
        self._task: asyncio.Task[None] | None = None
        self._reading: asyncio.Event | None = None  # set when the read in flight ends

    @property
    def from_megaphone(self) -> bool:
        """True when Megaphone, not the store, says what the broadcasts are."""
        return bool(self.config.megaphone_url)

    async def start(self) -> None:
        """Load the broadcasts once, then keep them current in the background."""
        await self.refresh()
        if not self.from_megaphone:
            self.bus.on_broadcasts = self._on_announcement
        self._task = asyncio.create_task(self._watch(), name="tidings-broadcasts")

    def _on_announcement(self) -> None:
        """Another node changed the broadcasts: re-read them (one re-read at a time)."""
        if self._announced is None or self._announced.done():
            self._announced = asyncio.create_task(self.refresh(), name="tidings-broadcasts-read")

    async def stop(self) -> None:
        self.bus.on_broadcasts = None
        for task in (self._task, self._announced):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _watch(self) -> None:
        interval = self.config.megaphone_poll if self.from_megaphone else self.config.broadcast_poll
        while True:
            await asyncio.sleep(interval)
            await self.refresh()

    async def refresh(self) -> None:
        """Read the broadcasts again; clients following a changed id are told."""
        self._reading = reading = asyncio.Event()
        try:
            versions = await (self._fetch_megaphone() if self.from_megaphone else self._read())
            self._announce(self.current.replace(versions))
        except (StoreUnavailable, httpx.HTTPError, ValueError) as exc:
            log.warning("cannot read the broadcasts: %s", exc)
        finally:
            reading.set()

    async def settled(self) -> None:
        """Wait (at most HELLO_WAIT seconds) for a read in flight to end."""
        reading = self._reading
        if reading is not None and not reading.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(reading.wait(), HELLO_WAIT)

    async def _read(self) -> dict[str, str]:
        return await self.store.list_broadcasts()

    async def _fetch_megaphone(self) -> dict[str, str]:
        url = self.config.megaphone_url or ""
        headers = {"accept": "application/json"}
        if self.config.megaphone_token:
            headers["authorization"] = f"Bearer {self.config.megaphone_token}"
        async with (
            # Megaphone deployments (and the autopush suite's mock) redirect /v1/broadcasts/.
            httpx.AsyncClient(timeout=10.0, follow_redirects=True, max_redirects=3) as client,
            client.stream("GET", url, headers=headers) as response,
        ):
            response.raise_for_status()
            body = b""
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_MEGAPHONE_DOCUMENT:
                    raise ValueError("the Megaphone document is too large")
        document: Any = httpx.Response(200, content=body).json()
        return parse_megaphone(document)

    def _announce(self, changed: dict[str, str]) -> None:
        if not changed:
            return
        log.info("broadcasts changed: %s", ", ".join(sorted(changed)))
        for agent in self.hub.each_agent():
            notify = getattr(agent, "broadcasts_changed", None)
            if notify is not None:
                notify(changed)

    # The operator's side (admin API) ---------------------------------------------------

    async def set(self, broadcast_id: str, version: str) -> None:
        """Create or change a broadcast (ids and versions already checked)."""
        if not await self.store.set_broadcast(broadcast_id, version, max_broadcasts=MAX_BROADCASTS):
            raise BroadcastFull(f"the service keeps at most {MAX_BROADCASTS} broadcasts")
        self._announce(self.current.set(broadcast_id, version))
        await self.bus.announce_broadcasts()

    async def delete(self, broadcast_id: str) -> bool:
        """Remove a broadcast; True if it existed."""
        existed = await self.store.delete_broadcast(broadcast_id)
        self.current.delete(broadcast_id)
        await self.bus.announce_broadcasts()
        return existed
