"""The Connector hyperty: invite, ring, accept or decline, cancel, and the call's media.

Callee: a Connection invitation (`create` of a `connection://` object with the Connection
schema) rings; the Connector answers 200 (accept) or 486 (Busy Here: declined). A
`delete` of the object while it rings (the caller cancelled) stops the ring and nothing
is answered: a missed call.

Caller: `call(callee)` creates the Connection URL, sends the invitation and waits for
the final answer; `invite` / `cancel` do the two halves separately.

Media (`call(callee, media=True)`, the invitation's `value.media` is true): after the
200 the caller makes the WebRTC offer (`media.MediaCall`, aiortc). The signals travel as
reTHINK `update` messages of the Connection object, `body` = `{source, attribute,
value}` with `attribute` `connectionDescription` or `iceCandidates`:

- the caller's come from the object (`connection://<d>/<id>/changes`), which the push
  element bound to the caller's runtime when the invitation was sent;
- the callee's come from the callee's own hyperty URL with the object in
  `body.resource`: the element lets a runtime send only from its own addresses and
  objects, and the object is the caller's.

Each side takes updates only from its peer (the caller: from the invited hyperty about
its object; the callee: from the object it accepted). Hang-up is a `delete` of the object
by either side (the caller's from the object, as a cancel; the callee's from its
hyperty with `body.resource`), and both sides close their media. A callee accepting a
media call takes its runtime's message connection first (so the offer comes on its
inbox, not by push) and holds the runtime awake until the call ends: a woken process
then exits (`wake.py`).

Options (kept by the runtime, so a woken Connector behaves the same):
    answer            "accept" (default) or "decline"
    ring_seconds      how long it rings before answering (0: at once)
    name              the display name sent in the identity of calls it makes
    loopback          true: ICE on 127.0.0.1 only (one-machine demos and tests)
    ice_servers       [{urls, username, credential}]: STUN/TURN for a deployment
    media_timeout     seconds from the answer to the first frames before giving up (30)
    max_call_seconds  a call is hung up after this long (3600)
    hangup_seconds    the callee hangs up this long after the first frames (0: never)
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from tidings.hyperty.addresses import (
    AddressError,
    connection_url,
    is_data_object,
    is_hyperty,
    object_url,
    user_url,
)
from tidings.hyperty.context import HypertyContext, HypertyRuntimeError
from tidings.hyperty.message import Message
from tidings.hyperty.rules import is_cancel, is_invitation

if TYPE_CHECKING:
    from tidings.hyperty.media import MediaCall, Signal

__all__ = ["CONNECTION_SCHEMA_URL", "ActiveCall", "Connector", "identity_for"]

CONNECTION_SCHEMA_URL = "hyperty-catalogue://catalogue.{domain}/.well-known/dataschema/Connection"

InvitationHook = Callable[[Message], Awaitable[None] | None]


def identity_for(name: str, domain: str, assertion: str | None = None) -> dict[str, Any]:
    """A reTHINK identity body: `{idp, assertion, userProfile: {username, userURL, name}}`."""
    login = name.lower().replace(" ", ".")
    identity: dict[str, Any] = {
        "idp": domain,
        "userProfile": {
            "username": f"{login}@{domain}",
            "userURL": user_url(domain, login),
            "name": name,
        },
    }
    if assertion is not None:
        identity["assertion"] = assertion
    return identity


@dataclass
class ActiveCall:
    """A call with media in progress: its object, the peer hyperty, our side's media."""

    connection: str
    peer: str
    role: Literal["caller", "callee"]
    media: MediaCall
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    reason: str | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    watch: asyncio.Task[None] | None = None


class Connector:
    """Receives Connection invitations and makes calls (see the module docstring)."""

    def __init__(self, context: HypertyContext, *, on_invitation: InvitationHook | None = None):
        self.context = context
        self.url = context.url
        self.answer: str = str(context.options.get("answer", "accept"))
        self.ring_seconds = float(context.options.get("ring_seconds", 0.0))
        self.name = str(context.options.get("name", "Tidings user"))
        self.on_invitation = on_invitation
        self.loopback = context.options.get("loopback") is True
        servers = context.options.get("ice_servers")
        self.ice_servers: list[dict[str, Any]] = servers if isinstance(servers, list) else []
        self.media_timeout = float(context.options.get("media_timeout", 30.0))
        self.max_call_seconds = float(context.options.get("max_call_seconds", 3600.0))
        self.hangup_seconds = float(context.options.get("hangup_seconds", 0.0))
        self._ringing: dict[str, asyncio.Event] = {}
        self.calls: dict[str, ActiveCall] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        """Calls with media in progress, by Connection object URL."""
        self.ended: dict[str, ActiveCall] = {}
        """The last calls that ended (at most 16), by Connection object URL."""

    # Callee -------------------------------------------------------------------------------

    async def on_message(self, message: Message) -> None:
        if is_invitation(message):
            await self._ring(message)
        elif message.type == "update":
            await self._on_update(message)
        elif message.type == "delete" and self._call_of(message) is not None:
            active = self._call_of(message)
            assert active is not None
            await self._end(active, "hung up by the peer", notify=False)
        elif is_cancel(message):
            call = object_url(message.from_)
            stop = self._ringing.get(call)
            self.context.log_event("cancelled", connection=call, ringing=stop is not None)
            if stop is not None:
                stop.set()
        elif not message.is_response:
            await self.context.reply(message, 400, f"the Connector does not take {message.type}")

    async def _ring(self, invitation: Message) -> None:
        call = object_url(invitation.from_)
        self.context.log_event(
            "ring",
            connection=call,
            id=invitation.id,
            caller=invitation.caller_name or invitation.source,
            source=invitation.source,
            verified=(invitation.identity or {}).get("verified") is True,
        )
        if self.on_invitation is not None:
            result = self.on_invitation(invitation)
            if inspect.isawaitable(result):
                await result
        busy = self.answer != "accept"
        media = _wants_media(invitation)
        prepared: asyncio.Future[Any] | None = None
        if media and not busy:
            # While it rings: load the media stack and take the message connection (the
            # offer must come on the inbox, not by push), both at once.
            prepared = asyncio.gather(asyncio.to_thread(_import_media), self.context.connect())
        cancelled = asyncio.Event()
        self._ringing[call] = cancelled
        try:
            if self.ring_seconds > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(cancelled.wait(), self.ring_seconds)
            if cancelled.is_set():
                self.context.log_event("missed", connection=call)
                return
        finally:
            self._ringing.pop(call, None)
        if busy:
            self.context.log_event("declined", connection=call, id=invitation.id)
            await self.context.reply(invitation, 486, "Busy Here")
            return
        value: dict[str, Any] = {"status": "accepted"}
        if media:
            peer = invitation.source
            try:
                assert prepared is not None
                await prepared
            except (ImportError, HypertyRuntimeError, TimeoutError) as exc:
                self.context.log_event("declined", connection=call, id=invitation.id, why=str(exc))
                await self.context.reply(invitation, 488, "Not Acceptable Here: no media here")
                return
            if peer is None or not is_hyperty(peer) or call in self.calls:
                await self.context.reply(invitation, 400, "a media call needs body.source")
                return
            self._start_media(call, peer, "callee")
            value["media"] = True
        self.context.log_event("accepted", connection=call, id=invitation.id)
        await self.context.reply(invitation, 200, "OK", value)

    # Media --------------------------------------------------------------------------------

    def _start_media(
        self, connection: str, peer: str, role: Literal["caller", "callee"]
    ) -> ActiveCall:
        from tidings.hyperty.media import MediaCall, use_loopback_candidates

        if self.loopback:
            use_loopback_candidates()
        holder: list[ActiveCall] = []

        async def send(signal: Signal) -> None:
            await self._signal(holder[0], signal)

        def on_event(what: str) -> None:
            self.context.log_event("media", connection=connection, role=role, what=what)
            if what == "ice failed" and holder:
                task = asyncio.ensure_future(self._end(holder[0], "ICE failed", notify=True))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

        media = MediaCall(send, on_event=on_event, ice_servers=self.ice_servers or None)
        active = ActiveCall(connection, peer, role, media)
        holder.append(active)
        self.calls[connection] = active
        self.context.hold()
        active.watch = asyncio.ensure_future(self._watch(active))
        self.context.log_event("media-started", connection=connection, role=role, peer=peer)
        return active

    async def _signal(self, active: ActiveCall, signal: Signal) -> None:
        """Send one signal to the peer as an `update` of the Connection object."""
        if self.calls.get(active.connection) is not active:
            return  # ended
        body: dict[str, Any] = {"source": self.url, **signal.to_json()}
        if active.role == "caller":
            from_ = active.connection + "/changes"
        else:
            from_, body["resource"] = self.url, active.connection
        message = Message(self.context.next_id(), "update", from_, active.peer, body)
        try:
            answer = await self.context.post(message)
        except HypertyRuntimeError as exc:
            self.context.log_event(
                "media", connection=active.connection, what=f"signal lost: {exc}"
            )
            return
        if answer is not None and (answer.code or 0) >= 300:
            self.context.log_event(
                "media", connection=active.connection, what=f"signal refused: {answer.code}"
            )

    def _call_of(self, message: Message) -> ActiveCall | None:
        """The call a message from its peer is about (None: not from a peer of ours)."""
        if is_data_object(message.from_):  # the caller, from its object: we are the callee
            try:
                active = self.calls.get(object_url(message.from_))
            except AddressError:
                return None
            return active if active is not None and active.role == "callee" else None
        resource = message.body.get("resource")
        active = self.calls.get(resource) if isinstance(resource, str) else None
        if active is None or active.role != "caller" or active.peer != message.from_:
            return None
        return active

    async def _on_update(self, message: Message) -> None:
        from tidings.hyperty.media import Signal

        active = self._call_of(message)
        if active is None:
            self.context.log_event("media", what="ignored an update", id=message.id)
            return
        try:
            signal = Signal.from_json(message.body)
        except ValueError as exc:
            self.context.log_event("media", connection=active.connection, what=f"bad signal: {exc}")
            return
        async with active.lock:  # in the order they came: the description first
            try:
                await active.media.receive(signal)
            except Exception as exc:  # aiortc refuses what it cannot use
                self.context.log_event(
                    "media", connection=active.connection, what=f"signal failed: {exc}"
                )
                await self._end(active, "signalling failed", notify=True)

    async def _watch(self, active: ActiveCall) -> None:
        """No media within `media_timeout`, or the call's time is up: hang up."""
        try:
            await asyncio.wait_for(active.media.first_frames.wait(), self.media_timeout)
        except TimeoutError:
            await self._end(active, "no media", notify=True)
            return
        limit = self.max_call_seconds
        if active.role == "callee" and self.hangup_seconds > 0:
            limit = min(limit, self.hangup_seconds)
        try:
            await asyncio.wait_for(active.ended.wait(), limit)
        except TimeoutError:
            await self._end(active, "hung up", notify=True)

    async def _end(self, active: ActiveCall, reason: str, *, notify: bool) -> None:
        """End a call: tell the peer (`delete`), close the media, release the runtime."""
        if self.calls.get(active.connection) is not active:
            return  # ended already, or ending
        del self.calls[active.connection]  # from here on, signals are not sent or taken
        active.reason = reason
        if notify:
            if active.role == "caller":
                message = Message(
                    self.context.next_id(),
                    "delete",
                    active.connection,
                    active.peer,
                    {"source": self.url},
                )
            else:
                message = Message(
                    self.context.next_id(),
                    "delete",
                    self.url,
                    active.peer,
                    {"source": self.url, "resource": active.connection},
                )
            with contextlib.suppress(HypertyRuntimeError):
                await self.context.post(message)
        await active.media.close()
        if active.watch is not None and active.watch is not asyncio.current_task():
            active.watch.cancel()
        self.ended[active.connection] = active
        while len(self.ended) > 16:
            del self.ended[next(iter(self.ended))]
        self.context.log_event(
            "call-ended",
            connection=active.connection,
            role=active.role,
            reason=reason,
            **active.media.stats.to_json(),
        )
        self.context.release()
        active.ended.set()  # last: whoever waits for it finds the media released

    async def hangup(self, connection: str) -> bool:
        """End a call with media from this side; False when no such call is in progress."""
        active = self.calls.get(connection)
        if active is None:
            return False
        await self._end(active, "hung up", notify=True)
        return True

    # Caller -------------------------------------------------------------------------------

    def invitation(
        self,
        callee: str,
        *,
        assertion: str | None = None,
        extra: dict[str, Any] | None = None,
        media: bool = False,
    ) -> Message:
        """A Connection invitation from a fresh `connection://` object to `callee`
        (`media`: the caller will offer audio and video after the answer)."""
        if media:
            extra = {**(extra or {}), "media": True}
        domain = self.context.domain
        call = connection_url(domain)
        return Message(
            self.context.next_id(),
            "create",
            call + "/subscription",
            callee,
            {
                "source": self.url,
                "schema": CONNECTION_SCHEMA_URL.format(domain=domain),
                "identity": identity_for(self.name, domain, assertion),
                "value": {
                    "name": "call",
                    "owner": self.url,
                    "status": "created",
                    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    **(extra or {}),
                },
            },
        )

    async def invite(self, invitation: Message) -> Message | None:
        """Send an invitation; the element's immediate answer (100 when pushed)."""
        self.context.log_event("invite", connection=object_url(invitation.from_), id=invitation.id)
        return await self.context.post(invitation)

    async def call(
        self,
        callee: str,
        *,
        timeout: float = 30.0,
        invitation: Message | None = None,
        on_answer: Callable[[Message], None] | None = None,
        media: bool = False,
    ) -> Message:
        """Invite `callee` and wait for the final answer (200 accepted, 486 declined, ...).

        With `media` (or an `invitation` made with it) a 200 starts the media: the offer
        is sent, and the call is in `calls` until `hangup` or the peer's.
        """
        invitation = invitation or self.invitation(callee, media=media)
        loaded = None
        if _wants_media(invitation):  # load the media stack while it rings
            loaded = asyncio.ensure_future(asyncio.to_thread(_import_media))
        self.context.log_event("invite", connection=object_url(invitation.from_), id=invitation.id)
        try:
            answer = await self.context.request(invitation, timeout, on_answer=on_answer)
        finally:
            if loaded is not None:
                await loaded  # ImportError: no media here (the `media` extra)
        self.context.log_event(
            "answer", connection=object_url(invitation.from_), code=answer.code, id=answer.id
        )
        if loaded is not None and answer.code == 200:
            active = self._start_media(object_url(invitation.from_), invitation.target, "caller")
            async with active.lock:
                await active.media.offer()
        return answer

    async def cancel(self, invitation: Message) -> Message | None:
        """Cancel an invitation: `delete` of the Connection object to the callee."""
        call = object_url(invitation.from_)
        message = Message(
            self.context.next_id(), "delete", call, invitation.target, {"source": self.url}
        )
        self.context.log_event("cancel", connection=call, id=message.id)
        return await self.context.post(message)


def _wants_media(invitation: Message) -> bool:
    value = invitation.value
    return isinstance(value, dict) and value.get("media") is True


def _import_media() -> None:
    """Import the media stack (aiortc, PyAV: slow to load); ImportError without it."""
    import tidings.hyperty.media  # noqa: F401
