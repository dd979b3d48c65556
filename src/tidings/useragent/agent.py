"""`UserAgent`: the browser's push machinery for a Python program.

One connection to the push service carries every registration's messages. A
background task keeps it open: it connects, says hello with the stored `uaid`,
renews every subscription if the service has forgotten that uaid, then reads
deliveries until the connection dies, and starts again after an exponential backoff
with jitter. Each delivery is checked against the ids already handled, decrypted,
and given to its scope's `push` handler as a task; the ack goes out once the handler
and everything it passed to `wait_until` are done (`tidings.useragent.delivery`).
Subscriptions and their keys are kept by `tidings.useragent.subscriptions`; the W3C
objects (`tidings.useragent.api`) call this agent through their `PushAgent` protocol.

About 500 lines: life cycle, registrations and the connection loop share one state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from tidings.useragent.api import PushSubscription, Registration
from tidings.useragent.backoff import Backoff
from tidings.useragent.commands import command_handlers
from tidings.useragent.delivery import MAX_HELD_PER_SCOPE, Deliveries
from tidings.useragent.errors import (
    AbortError,
    InvalidStateError,
    NotConnectedError,
    NotSupportedError,
    SubscriptionRefused,
)
from tidings.useragent.events import (
    Handlers,
    HandlersFor,
    PushHandler,
    PushSubscriptionChangeEvent,
    SubscriptionChangeHandler,
)
from tidings.useragent.state import StateStore, StoredSubscription
from tidings.useragent.subscriptions import SubscriptionBook
from tidings.useragent.transport import (
    Connection,
    ConnectionClosed,
    Delivery,
    SubscribeRefused,
    SubscriptionLost,
    SupportsUrgency,
    Transport,
    TransportEvent,
)
from tidings.useragent.transport_choice import PushProtocol, make_transport
from tidings.useragent.websocket import DEFAULT_PING_INTERVAL, WebSocketTransport

# Handlers, HandlersFor, PushProtocol, make_transport and MAX_HELD_PER_SCOPE lived here
# before the split; they stay importable from this module under their old names.
__all__ = [
    "MAX_HELD_PER_SCOPE",
    "Handlers",
    "HandlersFor",
    "PushProtocol",
    "UserAgent",
    "make_transport",
]

log = logging.getLogger("tidings.useragent")

STABLE_CONNECTION = 10.0
"""A connection that lived this long resets the backoff when it ends."""


class UserAgent:
    """A W3C Push API user agent: registrations by scope, one shared connection.

    Use it as `async with UserAgent(url, state_path) as ua:`; register scopes with
    `await ua.register(scope, on_push=...)` and subscribe through the registration's
    `push_manager`. State (uaid, keys, subscriptions) lives in the SQLite file at
    `state_path` (or `useragent.db` inside it when it is a directory).

    `transport` picks the protocol: `"websocket"` (Firefox's), `"rfc8030"` (HTTP/2
    server push), or a `Transport` object; by default h2:// and h2c:// URLs mean RFC
    8030 and every other URL the WebSocket protocol. `ssl_context` says which
    certificates to trust over TLS.

    When the service drops a subscription (it expired, the service forgot this user
    agent), each registration's `pushsubscriptionchange` handler is called with the old
    subscription. With `resubscribe=True` (the default, as Firefox and Chrome do) the
    agent has already subscribed again with the same options and the event carries the
    new subscription; with `resubscribe=False` the event's `new_subscription` is None
    and the handler subscribes again if it wants to
    (`await registration.push_manager.subscribe(...)`), as a service worker would.
    """

    def __init__(
        self,
        service_url: str,
        state_path: str | os.PathLike[str],
        *,
        transport: Transport | PushProtocol | None = None,
        ssl_context: ssl.SSLContext | None = None,
        ping_interval: float = DEFAULT_PING_INTERVAL,
        ping_timeout: float = 10.0,
        backoff: Backoff | None = None,
        connect_timeout: float = 30.0,
        max_concurrent_events: int = 256,
        handlers_for: HandlersFor | None = None,
        resubscribe: bool = True,
    ) -> None:
        self.service_url = service_url
        self.resubscribe = resubscribe
        if transport is None or isinstance(transport, str):
            transport = make_transport(
                service_url,
                transport,
                ssl_context=ssl_context,
                ping_interval=ping_interval,
                ping_timeout=ping_timeout,
            )
        self._transport: Transport = transport
        self._state = StateStore(state_path)
        self._backoff = backoff or Backoff()
        self.connect_timeout = connect_timeout
        self._handlers_for = handlers_for
        self._registrations: dict[str, Registration] = {}
        self._subscriptions = SubscriptionBook(self._state, self)
        self._deliveries = Deliveries(
            self._state,
            self._subscriptions,
            registration_for=self._registration_for,
            connection=lambda: self._conn,
            spawn=self._spawn,
            max_concurrent_events=max_concurrent_events,
        )
        self._lock = asyncio.Lock()  # subscription changes, one at a time
        self._conn: Connection | None = None
        self._connected = asyncio.Event()
        self._stopping = asyncio.Event()
        self._run_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.connections = 0
        """How many connections were opened (a reconnect counts one more)."""

    # Life cycle ---------------------------------------------------------------------------

    @property
    def state_path(self) -> Path:
        """The SQLite state file."""
        return self._state.path

    @property
    def uaid(self) -> str | None:
        """The id the push service knows this user agent by (None before the first hello)."""
        return self._state.uaid

    @property
    def connected(self) -> bool:
        """True while a connection to the service is open and ready."""
        return self._connected.is_set()

    async def start(self) -> None:
        """Start connecting in the background (returns at once)."""
        if self._run_task is not None:
            raise InvalidStateError("the user agent is already started")
        self._state.prune_seen()
        self._run_task = asyncio.create_task(self._run(), name="tidings-useragent")

    async def close(self, grace: float = 5.0) -> None:
        """Stop: let running handlers finish (up to `grace` seconds), then disconnect."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        if self._run_task is not None:
            self._run_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._run_task
        if self._tasks:
            _, still = await asyncio.wait(list(self._tasks), timeout=grace)
            for task in still:
                task.cancel()
            await asyncio.gather(*still, return_exceptions=True)
        if self._conn is not None:
            await self._conn.close()
            self._conn = None
        self._connected.clear()
        self._state.close()

    async def __aenter__(self) -> UserAgent:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def transport(self) -> Transport:
        """The transport in use (`WebSocketTransport`, `Http2Transport`, or the one given)."""
        return self._transport

    @property
    def urgency(self) -> str | None:
        """The lowest urgency asked of the service (None: every message)."""
        transport = self._transport
        return transport.urgency if isinstance(transport, SupportsUrgency) else None

    async def set_urgency(self, level: str | None) -> None:
        """Receive only messages of at least `level` urgency, e.g. `"high"` on battery.

        The service holds the others back (RFC 8030 section 5.3) until `set_urgency(None)`
        (or a lower level) lets them through. Levels: very-low, low, normal, high. Only
        RFC 8030 can do this; over the WebSocket protocol it raises NotSupportedError.
        """
        transport = self._transport
        if not isinstance(transport, SupportsUrgency):
            raise NotSupportedError(
                "the urgency filter needs the RFC 8030 protocol (transport='rfc8030')"
            )
        await transport.set_urgency(level)

    # Megaphone broadcasts (Firefox's WebSocket protocol only) -----------------------------

    def _websocket(self) -> WebSocketTransport:
        if not isinstance(self._transport, WebSocketTransport):
            raise TypeError("broadcasts are part of Firefox's WebSocket protocol only")
        return self._transport

    @property
    def broadcasts(self) -> dict[str, str]:
        """The broadcasts followed, with the newest version the service announced."""
        transport = self._transport
        return dict(transport.broadcasts) if isinstance(transport, WebSocketTransport) else {}

    async def subscribe_broadcasts(self, versions: dict[str, str]) -> None:
        """Follow broadcast ids ({id: version known}); sent now and in every hello."""
        await self._websocket().subscribe_broadcasts(versions)

    def on_broadcast(self, listener: Callable[[dict[str, str]], None]) -> None:
        """Call `listener({id: new version})` when the service announces a change."""
        self._websocket().on_broadcast(listener)

    async def wait_connected(self, within: float | None = None) -> None:
        """Wait until a connection is ready; NotConnectedError after `within` seconds."""
        await self._wait_connection(None if within is None else time.monotonic() + within)

    # Registrations ------------------------------------------------------------------------

    async def register(
        self,
        scope: str,
        *,
        on_push: PushHandler | None = None,
        on_subscription_change: SubscriptionChangeHandler | None = None,
    ) -> Registration:
        """Register (or re-attach to) `scope`, the role of a service worker registration.

        Registrations persist in the state file; a restarted program calls `register`
        again to attach its handlers. Messages that arrived for the scope before that
        are held and handed over now.
        """
        if not scope:
            raise ValueError("scope must be a non-empty string")
        self._state.ensure_registration(scope)
        registration = self._registrations.get(scope)
        if registration is None:
            registration = Registration(self, scope, on_push, on_subscription_change)
            self._registrations[scope] = registration
        else:
            registration.on_push = on_push
            registration.on_subscription_change = on_subscription_change
        await self._deliveries.release_held(registration)
        return registration

    async def register_command(
        self, scope: str, command: str, *, time_limit: float = 60.0
    ) -> Registration:
        """Register `scope` served by a shell command, recorded in the state file.

        The daemon (`tidings agent run`) starts the command for each push with the
        message on its standard input; see `tidings.useragent.commands`.
        """
        if not command.strip():
            raise ValueError("command must not be empty")
        self._state.put_registration(scope, command)
        handlers = command_handlers(command, time_limit=time_limit)
        return await self.register(
            scope,
            on_push=handlers.on_push,
            on_subscription_change=handlers.on_subscription_change,
        )

    def get_registration(self, scope: str) -> Registration | None:
        """The registration of `scope` attached in this process, if any."""
        return self._registrations.get(scope)

    @property
    def registrations(self) -> list[Registration]:
        """The registrations attached in this process."""
        return list(self._registrations.values())

    def _registration_for(self, scope: str) -> Registration | None:
        registration = self._registrations.get(scope)
        if registration is not None or self._handlers_for is None:
            return registration
        stored = self._state.get_registration(scope)
        handlers = None if stored is None else self._handlers_for(stored)
        if handlers is None:
            return None
        registration = Registration(self, scope, handlers.on_push, handlers.on_subscription_change)
        self._registrations[scope] = registration
        return registration

    async def unregister_scope(self, scope: str) -> bool:
        """`Registration.unregister`: unsubscribe and forget `scope`."""
        existed = self._state.get_registration(scope) is not None
        stored = self._state.get_subscription(scope)
        if stored is not None:
            await self.unsubscribe_scope(scope, stored.handle)
        self._state.delete_registration(scope)
        self._registrations.pop(scope, None)
        self._deliveries.drop_held(scope)
        return existed

    # Subscriptions ------------------------------------------------------------------------

    def subscription_of(self, scope: str) -> PushSubscription | None:
        """`PushManager.get_subscription` for `scope`."""
        return self._subscriptions.of(scope)

    async def subscribe_scope(
        self, scope: str, user_visible_only: bool, application_server_key: str | None
    ) -> PushSubscription:
        """`PushManager.subscribe` for `scope` (see `tidings.useragent.api.PushAgent`)."""
        key = application_server_key
        if self._state.get_registration(scope) is None:
            raise InvalidStateError(f"scope {scope!r} is not registered")
        existing = self._subscriptions.existing(scope, key)
        if existing is not None:
            return existing
        deadline = time.monotonic() + self.connect_timeout
        while True:
            conn = await self._wait_connection(deadline)
            async with self._lock:
                existing = self._subscriptions.existing(scope, key)
                if existing is not None:
                    return existing
                if conn is not self._conn:
                    continue  # it died while we waited for the lock
                try:
                    stored = await self._subscriptions.create(conn, scope, user_visible_only, key)
                except SubscribeRefused as exc:
                    raise SubscriptionRefused(
                        exc.status,
                        f"the push service refused to subscribe scope {scope!r} "
                        f"(status {exc.status})",
                    ) from None
                except ConnectionClosed:
                    continue  # subscribe on the next connection
                self._adopt_session(conn)
            return self._subscriptions.activate(stored).subscription

    async def unsubscribe_scope(self, scope: str, handle: str) -> bool:
        """`PushSubscription.unsubscribe` for the subscription `handle` of `scope`."""
        async with self._lock:
            if not self._subscriptions.forget(scope, handle):
                return False
        conn = self._conn if self._connected.is_set() else None
        await self._subscriptions.unsubscribe_at_service(conn, handle)
        return True

    # Connection loop -------------------------------------------------------------------------

    async def _wait_connection(self, deadline: float | None) -> Connection:
        while True:
            if self._stopping.is_set():
                raise AbortError("the user agent is closed")
            conn = self._conn
            if conn is not None and self._connected.is_set():
                return conn
            timeout = None if deadline is None else deadline - time.monotonic()
            if timeout is not None and timeout <= 0:
                raise NotConnectedError(
                    f"no connection to the push service {self.service_url} in time"
                )
            waiters = [
                asyncio.ensure_future(self._connected.wait()),
                asyncio.ensure_future(self._stopping.wait()),
            ]
            try:
                await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waiters:
                    waiter.cancel()

    async def _run(self) -> None:
        while not self._stopping.is_set():
            handles = [s.handle for s in self._state.subscriptions()]
            try:
                conn = await self._transport.connect(self._state.uaid, handles)
            except ConnectionClosed as exc:
                delay = self._backoff.next_delay()
                log.info("cannot reach the push service (%s); retrying in %.2f s", exc, delay)
                await self._pause(delay)
                continue
            opened = time.monotonic()
            self._conn = conn
            self.connections += 1
            try:
                await self._after_hello(conn)
                await self._subscriptions.send_pending_unsubscribes(conn)
                self._connected.set()
                log.info("connected to %s as %s", self.service_url, conn.session_id)
                while True:
                    await self._on_event(await conn.next_event())
            except ConnectionClosed as exc:
                log.info("connection to the push service lost: %s", exc)
            finally:
                self._connected.clear()
                if not self._stopping.is_set():
                    self._conn = None
                    await conn.close()
            if time.monotonic() - opened >= STABLE_CONNECTION:
                self._backoff.reset()
            await self._pause(self._backoff.next_delay())

    async def _pause(self, delay: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), delay)

    def _adopt_session(self, conn: Connection) -> None:
        """Store a session id that a subscribe made (RFC 8030: the first one makes the set)."""
        if conn.session_id and conn.session_id != self._state.uaid:
            self._state.uaid = conn.session_id

    async def _after_hello(self, conn: Connection) -> None:
        """Adopt the service's uaid; if it forgot ours, renew every subscription."""
        known, given = self._state.uaid, conn.session_id
        if given == known or (not given and not known):
            return
        subscriptions = self._state.subscriptions()
        if subscriptions:
            log.warning(
                "the push service no longer knows uaid %s (it answered %s): "
                "renewing %d subscription(s)",
                known,
                given,
                len(subscriptions),
            )
            async with self._lock:
                for stored in subscriptions:
                    await self._renew(conn, stored)
        # Stored only once every subscription is renewed: if the connection dies midway,
        # the next hello offers the old uaid again and the renewal starts over. (Over RFC
        # 8030 the renewal made a new set: the session id is its URL now.)
        self._state.uaid = conn.session_id or None

    async def _renew(self, conn: Connection, stored: StoredSubscription) -> None:
        old = PushSubscription(stored)  # detached: it no longer exists anywhere
        self._subscriptions.deactivate(stored.handle)
        new: PushSubscription | None = None
        if not self.resubscribe:  # the handler decides whether to subscribe again
            self._state.delete_subscription(stored.scope)
            self._deliveries.fire_change(PushSubscriptionChangeEvent(old, None, scope=stored.scope))
            return
        try:
            made = await self._subscriptions.create(
                conn, stored.scope, stored.user_visible_only, stored.application_server_key
            )
            new = self._subscriptions.activate(made).subscription
        except SubscribeRefused as exc:
            log.warning("cannot renew the subscription of %s: status %d", stored.scope, exc.status)
            self._state.delete_subscription(stored.scope)
        self._deliveries.fire_change(PushSubscriptionChangeEvent(old, new, scope=stored.scope))

    async def _on_event(self, event: TransportEvent) -> None:
        if isinstance(event, Delivery):
            await self._deliveries.on_delivery(event)
        elif isinstance(event, SubscriptionLost):
            self._spawn(self._lost(event.handle))

    async def _lost(self, handle: str) -> None:
        """The service dropped one subscription: subscribe again, tell the registration."""
        conn = self._conn
        stored = self._state.subscription_by_handle(handle)
        if conn is None or stored is None:
            return
        async with self._lock:
            with contextlib.suppress(ConnectionClosed):
                await self._renew(conn, stored)
                self._adopt_session(conn)

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def __repr__(self) -> str:
        return f"UserAgent({self.service_url!r}, uaid={self.uaid!r}, connected={self.connected})"
