"""The push element `domain://push.<domain>`: Web Push towards sleeping Hyperty runtimes.

It sits next to the service provider's message node. Runtimes register their push
subscription and the hyperties they host; a message for a hyperty whose runtime is not
connected is kept as pending and sent as a Web Push (the reTHINK message is the payload);
the callee's answer comes back here and goes on to the caller.

"Connected" means what the message node knows: a runtime that holds its message
connection, here a long-poll on `/hyperty/inbox` (see `Mailboxes`), gets its messages
there and is not pushed. The I/O-free decisions live in `rules.py`.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from tidings.hyperty.addresses import is_hyperty, object_url, push_element_url
from tidings.hyperty.message import Message, MessageError
from tidings.hyperty.rules import (
    DEFAULT_TTL,
    MessageTooLarge,
    PushPlan,
    Route,
    classify,
    is_cancel,
    parse_registration,
    plan_push,
)
from tidings.hyperty.store import ElementStore, Pending
from tidings.sender.results import ResultKind, SendResult

__all__ = ["Delivery", "ElementEvent", "Mailboxes", "PushElement", "PushSender"]

log = logging.getLogger("tidings.hyperty.element")

#: Messages kept per address for a runtime that is between two polls.
MAILBOX_LIMIT = 256


class PushSender(Protocol):
    """What the element needs of `tidings.sender.Sender`."""

    async def send(
        self,
        subscription: Any,
        data: str | bytes | None,
        *,
        ttl: int,
        urgency: str | None = None,
        topic: str | None = None,
    ) -> SendResult: ...


@dataclass(frozen=True)
class ElementEvent:
    """Something the element did, for logs, timelines and tests."""

    kind: str  # registered, unregistered, pushed, inbox, purged, cancelled, routed, refused
    at: float
    detail: dict[str, Any] = field(default_factory=dict)


class Mailboxes:
    """Messages for connected runtimes, taken by long-poll; who is connected.

    An address counts as connected while a poll for it is open, and for `grace`
    seconds after one returned (the runtime is about to poll again).
    """

    def __init__(self, grace: float = 3.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.grace = grace
        self._clock = clock
        self._queues: dict[str, collections.deque[Message]] = {}
        self._polls: collections.Counter[str] = collections.Counter()
        self._last_seen: dict[str, float] = {}
        self._changed = asyncio.Event()
        self._closed = False

    def connected(self, address: str) -> bool:
        if self._polls[address] > 0:
            return True
        seen = self._last_seen.get(address)
        return seen is not None and self._clock() - seen < self.grace

    def put(self, address: str, message: Message) -> None:
        queue = self._queues.setdefault(address, collections.deque(maxlen=MAILBOX_LIMIT))
        queue.append(message)
        self._changed.set()

    def _drain(self, addresses: Iterable[str]) -> list[Message]:
        taken: list[Message] = []
        for address in addresses:
            queue = self._queues.pop(address, None)
            if queue:
                taken.extend(queue)
        return taken

    async def take(self, addresses: list[str], timeout: float) -> list[Message]:
        """The messages for `addresses`, waiting up to `timeout` seconds for the first."""
        for address in addresses:
            self._polls[address] += 1
        try:
            deadline = self._clock() + timeout
            while True:
                taken = self._drain(addresses)
                left = deadline - self._clock()
                if taken or left <= 0 or self._closed:
                    return taken
                self._changed.clear()
                try:
                    await asyncio.wait_for(self._changed.wait(), left)
                except TimeoutError:
                    return self._drain(addresses)
        finally:
            now = self._clock()
            for address in addresses:
                self._polls[address] -= 1
                self._last_seen[address] = now

    def close(self) -> None:
        """End every open poll (the server is stopping)."""
        self._closed = True
        self._changed.set()


@dataclass(frozen=True)
class Delivery:
    """What became of a message handed to `PushElement.deliver`."""

    answer: Message
    """The reTHINK answer for the sender: provisional 100, or an error response."""
    via: str  # "push", "inbox" or "refused"
    plan: PushPlan | None = None
    result: SendResult | None = None
    replaced: int = 0
    """Pending messages about the same object that a cancel removed."""


class PushElement:
    """The push element of one domain: registrations, delivery by push, answers back.

    `sender` is a `tidings.sender.Sender` with the element's VAPID key (the key runtimes
    subscribe with). `store` defaults to memory; give an `ElementStore(path)` to keep
    registrations across restarts.
    """

    def __init__(
        self,
        domain: str,
        sender: PushSender,
        *,
        store: ElementStore | None = None,
        ttl: int = DEFAULT_TTL,
        mailboxes: Mailboxes | None = None,
        application_server_key: str | None = None,
        on_event: Callable[[ElementEvent], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.domain = domain
        self.url = push_element_url(domain)
        self.sender = sender
        self.store = store or ElementStore()
        self.ttl = ttl
        self.mailboxes = mailboxes or Mailboxes()
        self.application_server_key = application_server_key
        self.on_event = on_event
        self._clock = clock

    def _event(self, what: str, /, **detail: Any) -> None:
        log.debug("%s %s", what, detail)
        if self.on_event is not None:
            self.on_event(ElementEvent(what, self._clock(), detail))

    def status(self, hyperty: str) -> str | None:
        """The registry status of a hyperty: `live`, `disconnected`, or None if unknown."""
        if self.mailboxes.connected(hyperty):
            return "live"
        return "disconnected" if self.store.runtime_for(hyperty) is not None else None

    # The one entry point of the HTTP endpoint ---------------------------------------------

    async def handle(self, message: Message) -> Message | None:
        """Act on a message posted to the element; the reTHINK answer (None for a response)."""
        self.store.expire(self._clock())
        try:
            route = classify(message, self.url)
        except MessageError as exc:
            return message.response(400, str(exc), from_=self.url)
        if route is Route.REGISTER:
            return self.register(message)
        if route is Route.UNREGISTER:
            return self.unregister(message)
        if route is Route.RESPONSE:
            await self.route_response(message)
            return None
        return (await self.deliver(message)).answer

    # Registrations ------------------------------------------------------------------------

    def register(self, message: Message) -> Message:
        """A runtime's `create`: keep its subscription and hyperties; answer 200."""
        try:
            registration = parse_registration(message, self.domain)
        except MessageError as exc:
            return message.response(400, str(exc), from_=self.url)
        self.store.put_runtime(registration, self._clock())
        self._event(
            "registered", runtime=registration.runtime, hyperties=list(registration.hyperties)
        )
        return message.response(
            200,
            value={"runtime": registration.runtime, "hyperties": list(registration.hyperties)},
            from_=self.url,
        )

    def unregister(self, message: Message) -> Message:
        """A runtime's `delete`: forget it; 404 when it was not registered."""
        runtime = message.from_.removesuffix("/registry")
        if not self.store.delete_runtime(runtime):
            return message.response(404, f"{runtime} is not registered", from_=self.url)
        self._event("unregistered", runtime=runtime)
        return message.response(200, from_=self.url)

    # Delivery -----------------------------------------------------------------------------

    async def deliver(self, message: Message, *, ttl: int | None = None) -> Delivery:
        """Deliver a message for a hyperty: on its inbox if connected, else by Web Push."""
        hyperty = message.target
        replaced = 0
        if is_cancel(message):
            cancelled = self.store.cancel_pending(object_url(message.from_), hyperty)
            replaced = len(cancelled)
            if cancelled:
                self._event("cancelled", object=object_url(message.from_), hyperty=hyperty)
        # A cancel is not kept: it replaces, and nobody waits for its answer.
        delivery = await self._send_to(
            hyperty, message, ttl=ttl, keep_pending=not is_cancel(message)
        )
        if replaced:
            value = dict(delivery.answer.value or {}, replaced=replaced)
            answer = delivery.answer.with_body(value=value)
            return Delivery(answer, delivery.via, delivery.plan, delivery.result, replaced)
        return delivery

    async def _send_to(
        self, hyperty: str, message: Message, *, ttl: int | None, keep_pending: bool
    ) -> Delivery:
        answering = message.target if message.target == hyperty else self.url
        if self.mailboxes.connected(hyperty):
            self.mailboxes.put(hyperty, message)
            if keep_pending and not message.is_response:
                self._keep_pending(message, ttl or self.ttl)
            self._event("inbox", hyperty=hyperty, id=message.id, type=message.type)
            return Delivery(
                message.response(100, f"delivered to {hyperty}", from_=answering)
                if not message.is_response
                else message,
                "inbox",
            )
        record = self.store.runtime_for(hyperty)
        if record is None:
            return self._refuse(message, 404, f"{hyperty} is not registered for push here")
        try:
            plan = plan_push(message, ttl=ttl or self.ttl)
        except MessageTooLarge as exc:
            self._event("refused", hyperty=hyperty, id=message.id, reason=str(exc))
            return self._refuse(message, 413, str(exc))
        pending_key = None
        if keep_pending and not message.is_response:
            pending_key = self._keep_pending(plan.message, plan.ttl)
        result = await self.sender.send(
            record.subscription, plan.payload, ttl=plan.ttl, urgency=plan.urgency, topic=plan.topic
        )
        self._event(
            "pushed",
            hyperty=hyperty,
            runtime=record.runtime,
            id=message.id,
            type=message.type,
            kind=result.kind.value,
            status=result.status,
            urgency=plan.urgency,
            topic=plan.topic,
            ttl=plan.ttl,
            bytes=len(plan.payload),
            slimmed=plan.slimmed,
        )
        if result.kind is ResultKind.ACCEPTED:
            value = {"via": "push", "topic": plan.topic, "urgency": plan.urgency}
            if plan.slimmed:
                value["slimmed"] = "identity assertion dropped"
            answer = (
                message.response(
                    100, f"pushed to the runtime of {hyperty}", value=value, from_=answering
                )
                if not message.is_response
                else message
            )
            return Delivery(answer, "push", plan, result)
        if pending_key is not None:
            self.store.remove_pending(pending_key)
        if result.kind is ResultKind.GONE:
            self.store.delete_runtime(record.runtime)
            self._event("purged", runtime=record.runtime, status=result.status)
            return self._refuse(
                message,
                410,
                f"the push subscription of {record.runtime} is gone ({result.status}); "
                f"the runtime was unregistered",
                plan,
                result,
            )
        return self._refuse(
            message, 502, f"the push service did not take the message: {result}", plan, result
        )

    def _keep_pending(self, message: Message, ttl: int) -> int:
        reply_to = message.source if message.source and is_hyperty(message.source) else None
        try:
            data_object: str | None = object_url(message.from_)
        except ValueError:
            data_object = None
        return self.store.add_pending(
            message, reply_to or message.from_, data_object, ttl, self._clock()
        )

    def _refuse(
        self,
        message: Message,
        code: int,
        description: str,
        plan: PushPlan | None = None,
        result: SendResult | None = None,
    ) -> Delivery:
        if message.is_response:
            return Delivery(message, "refused", plan, result)
        return Delivery(
            message.response(code, description, from_=self.url), "refused", plan, result
        )

    # Answers back to the caller -----------------------------------------------------------

    async def route_response(self, response: Message) -> str | None:
        """Send a callee's response on to the caller; where it went, None if nowhere."""
        pending = self.store.take_pending_for(response, self._clock())
        destination = self._reply_address(response, pending)
        if destination is None:
            self._event("refused", id=response.id, reason="no request waits for this response")
            return None
        delivery = await self._send_to(destination, response, ttl=None, keep_pending=False)
        self._event("routed", to=destination, id=response.id, code=response.code, via=delivery.via)
        return destination if delivery.via != "refused" else None

    @staticmethod
    def _reply_address(response: Message, pending: Pending | None) -> str | None:
        if pending is not None:
            return pending.reply_to if is_hyperty(pending.reply_to) else None
        return response.target if is_hyperty(response.target) else None

    def pending_for(self, hyperty: str) -> list[Message]:
        """The messages still pending for a hyperty (pushed, not yet answered or cancelled)."""
        return [p.message for p in self.store.pending_for(hyperty, self._clock())]
