"""The Connector hyperty, reduced to call set-up: invite, ring, accept or decline, cancel.

Callee: a Connection invitation (`create` of a `connection://` object with the Connection
schema) rings; the Connector answers 200 (accept) or 486 (Busy Here: declined). A
`delete` of the object while it rings (the caller cancelled) stops the ring and nothing
is answered. The SDP offer and ICE candidates that follow as `update`
messages in reTHINK are out of scope here.

Caller: `call(callee)` creates the Connection URL, sends the invitation and waits for
the final answer; `invite` / `cancel` do the two halves separately.

Options (kept by the runtime, so a woken Connector behaves the same):
    answer         "accept" (default) or "decline"
    ring_seconds   how long it rings before answering (0: at once)
    name           the display name sent in the identity of calls it makes
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any

from tidings.hyperty.addresses import connection_url, object_url, user_url
from tidings.hyperty.message import Message
from tidings.hyperty.rules import is_cancel, is_invitation
from tidings.hyperty.runtime import HypertyContext

__all__ = ["CONNECTION_SCHEMA_URL", "Connector", "identity_for"]

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


class Connector:
    """Receives Connection invitations and makes calls (see the module docstring)."""

    def __init__(self, context: HypertyContext, *, on_invitation: InvitationHook | None = None):
        self.context = context
        self.url = context.url
        self.answer: str = str(context.options.get("answer", "accept"))
        self.ring_seconds = float(context.options.get("ring_seconds", 0.0))
        self.name = str(context.options.get("name", "Tidings user"))
        self.on_invitation = on_invitation
        self._ringing: dict[str, asyncio.Event] = {}

    # Callee -------------------------------------------------------------------------------

    async def on_message(self, message: Message) -> None:
        if is_invitation(message):
            await self._ring(message)
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
        else:
            self.context.log_event("accepted", connection=call, id=invitation.id)
            await self.context.reply(invitation, 200, "OK", {"status": "accepted"})

    # Caller -------------------------------------------------------------------------------

    def invitation(
        self, callee: str, *, assertion: str | None = None, extra: dict[str, Any] | None = None
    ) -> Message:
        """A Connection invitation from a fresh `connection://` object to `callee`."""
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
    ) -> Message:
        """Invite `callee` and wait for the final answer (200 accepted, 486 declined, ...)."""
        invitation = invitation or self.invitation(callee)
        self.context.log_event("invite", connection=object_url(invitation.from_), id=invitation.id)
        answer = await self.context.request(invitation, timeout, on_answer=on_answer)
        self.context.log_event(
            "answer", connection=object_url(invitation.from_), code=answer.code, id=answer.id
        )
        return answer

    async def cancel(self, invitation: Message) -> Message | None:
        """Cancel an invitation: `delete` of the Connection object to the callee."""
        call = object_url(invitation.from_)
        message = Message(
            self.context.next_id(), "delete", call, invitation.target, {"source": self.url}
        )
        self.context.log_event("cancel", connection=call, id=message.id)
        return await self.context.post(message)
