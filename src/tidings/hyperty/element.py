"""The push element `domain://push.<domain>`: Web Push towards sleeping Hyperty runtimes.

Over 500 lines: one class, whose access checks, registrations and deliveries share a store.

It sits next to the service provider's message node. Runtimes register their push
subscription and the hyperties they host; a message for a hyperty whose runtime is not
connected is kept as pending and sent as a Web Push (the reTHINK message is the payload);
the callee's answer comes back here and goes on to the caller.

"Connected" means what the message node knows: a runtime that holds its message
connection, here a long-poll on `/hyperty/inbox` (see `Mailboxes` in `mailboxes.py`),
gets its messages there and is not pushed. The I/O-free decisions live in `rules.py`;
the limits and the refusals (`ElementLimits`, `Refused`) in `element_limits.py`.

Who may do what (`admit`, `poll`): a runtime's first registration gets a credential
(256 random bits, returned once, stored hashed); everything it does afterwards carries
it. Hyperty addresses are allocated by the element and belong to that runtime; a
message's `from` must be an address of the sending runtime, or a data object URL bound
to it (on first use). Identity assertions are verified when an identity provider is
configured; pushes go only to trusted push service origins. See docs/hyperty.md.
"""

from __future__ import annotations

import collections
import logging
import secrets
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any, Protocol

from tidings.hyperty.addresses import (
    AddressError,
    allocation_url,
    hyperty_url,
    is_data_object,
    is_hyperty,
    object_url,
    push_element_url,
)
from tidings.hyperty.element_limits import (
    ERRNO_POLLS,
    ERRNO_RATE,
    ElementLimits,
    Refused,
    forbidden,
    unauthorized,
)
from tidings.hyperty.identity import IdentityError, IdentityVerifier, strip_verified
from tidings.hyperty.mailboxes import LAST_SEEN_PRUNE_MIN, Mailboxes
from tidings.hyperty.message import Message, MessageError
from tidings.hyperty.rules import (
    DEFAULT_TTL,
    MessageTooLarge,
    PushPlan,
    Route,
    check_endpoint,
    classify,
    is_cancel,
    parse_allocation,
    parse_registration,
    plan_push,
    runtime_of,
)
from tidings.hyperty.store import ElementStore, Pending
from tidings.sender.results import ResultKind, SendResult
from tidings.service.limits import Rule, TokenBucket

__all__ = [
    "LAST_SEEN_PRUNE_MIN",
    "Admitted",
    "Delivery",
    "ElementEvent",
    "ElementLimits",
    "Mailboxes",
    "PushElement",
    "PushSender",
    "Refused",
]

log = logging.getLogger("tidings.hyperty.element")


@dataclass(frozen=True)
class Admitted:
    """A message the element will act on, as it will pass it on."""

    message: Message
    runtime: str | None
    """The authenticated sending runtime; None only for a new runtime's first registration."""


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
    registrations across restarts. `push_origins` are the push services it pushes to
    (default: the co-located Tidings service, `http://127.0.0.1:8080`); `identity`
    checks `body.identity` assertions (None: not checked, and never marked verified).
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
        push_origins: Collection[str] | None = None,
        identity: IdentityVerifier | None = None,
        limits: ElementLimits | None = None,
    ) -> None:
        from tidings.webpush.vapid import vapid_audience

        self.domain = domain
        self.url = push_element_url(domain)
        self.allocation = allocation_url(domain)
        self.sender = sender
        self.store = store or ElementStore()
        self.ttl = ttl
        self.limits = limits or ElementLimits()
        self.mailboxes = mailboxes or Mailboxes(
            max_messages=self.limits.inbox_messages, max_bytes=self.limits.inbox_bytes
        )
        self.application_server_key = application_server_key
        self.on_event = on_event
        self._clock = clock
        if push_origins is None:
            from tidings.service.config import ServiceConfig

            push_origins = (ServiceConfig().origin,)
        self.push_origins = frozenset(vapid_audience(origin) for origin in push_origins)
        self.identity = identity
        self._buckets: collections.OrderedDict[tuple[str, str], TokenBucket] = (
            collections.OrderedDict()
        )
        self._polls: collections.Counter[str] = collections.Counter()

    def _event(self, what: str, /, **detail: Any) -> None:
        log.debug("%s %s", what, detail)
        if self.on_event is not None:
            self.on_event(ElementEvent(what, self._clock(), detail))

    def status(self, hyperty: str) -> str | None:
        """The registry status of a hyperty: `live`, `disconnected`, or None if unknown."""
        if self.mailboxes.connected(hyperty):
            return "live"
        return "disconnected" if self.store.runtime_for(hyperty) is not None else None

    # Who may do what ----------------------------------------------------------------------

    def _take(self, kind: str, key: str, rule: Rule | None, what: str) -> None:
        """Take a token from a rate limit bucket; Refused (429) when it is empty."""
        if rule is None:
            return
        now = time.monotonic()
        slot = (kind, key)
        bucket = self._buckets.get(slot)
        if bucket is None:
            bucket = self._buckets[slot] = TokenBucket(rule.burst, now)
            if len(self._buckets) > self.limits.buckets:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(slot)
        wait = bucket.take(rule, now)
        if wait > 0:
            raise Refused(429, ERRNO_RATE, "too many requests", f"too many {what}; slow down", wait)

    def authenticate(self, credential: str | None) -> str:
        """The runtime a credential belongs to; Refused (401) for none or an unknown one."""
        if not credential:
            raise unauthorized(
                "present the runtime credential the registration returned "
                "(Authorization: Bearer <credential>)"
            )
        runtime = self.store.runtime_by_credential(credential)
        if runtime is None:
            raise unauthorized("the credential is not valid here")
        return runtime

    def owns(self, runtime: str, address: str) -> bool:
        """Whether `runtime` may send from `address`: an address allocated to it, the
        runtime itself or one of its functions, or a data object bound to it (a data
        object nobody holds yet becomes its)."""
        if is_hyperty(address):
            return self.store.owner_of(address) == runtime
        if address == runtime or address.startswith(runtime + "/"):
            return True
        if is_data_object(address):
            try:
                data_object = object_url(address)
            except AddressError:
                return False
            owner = self.store.claim_object(
                data_object, runtime, self._clock(), self.limits.objects_per_runtime
            )
            return owner == runtime
        return False

    async def admit(
        self, message: Message, *, credential: str | None, client: str = "-"
    ) -> Admitted:
        """Check that the sender may send `message`; the message as it will be passed on.

        Refused: 401 without a valid credential, 403 when the credential is another
        runtime's or `from` (or `body.source`) is not the sender's, 429 over a rate limit.
        A registration from a runtime the element does not know needs no credential (it
        is where the credential comes from).
        """
        try:
            route = classify(message, self.url, self.allocation)
        except MessageError:
            return Admitted(message, None)  # `handle` answers it with a 400, doing nothing
        if route in (Route.REGISTER, Route.UNREGISTER):
            self._take("client", client, self.limits.registrations_per_client, "registrations")
            claimed = runtime_of(message.from_)
            if (
                route is Route.REGISTER
                and not credential
                and not self.store.runtime_exists(claimed)
            ):
                return Admitted(message, None)
        runtime = self.authenticate(credential)
        self._take("runtime", runtime, self.limits.messages_per_runtime, "messages")
        if route in (Route.REGISTER, Route.UNREGISTER, Route.ALLOCATE):
            if runtime_of(message.from_) != runtime:
                raise forbidden(f"the credential is not the one of {runtime_of(message.from_)}")
            return Admitted(message, runtime)
        source = message.source  # checked first: a refused message binds no data object
        if source is not None and is_hyperty(source) and not self.owns(runtime, source):
            raise forbidden(f"body.source {source} is not an address of the sending runtime")
        if not self.owns(runtime, message.from_):
            raise forbidden(f"{message.from_} is not an address of the sending runtime")
        identity = message.identity
        if identity is not None:
            if self.identity is None:
                checked = strip_verified(identity)
            else:
                try:
                    checked = await self.identity.check(identity)
                except IdentityError as exc:
                    self._event("refused", id=message.id, reason=f"identity: {exc}")
                    raise forbidden(f"body.identity.assertion: {exc}") from None
            message = message.with_body(identity=checked)
        return Admitted(message, runtime)

    def open_polls(self, runtime: str) -> int:
        """Inbox long-polls `runtime` holds open now."""
        return self._polls[runtime]

    async def poll(
        self, credential: str | None, addresses: list[str], timeout: float
    ) -> list[Message]:
        """A runtime's long-poll on its inbox: only its own addresses, a few polls at once."""
        runtime = self.authenticate(credential)
        foreign = [a for a in addresses if not is_hyperty(a) or self.store.owner_of(a) != runtime]
        if foreign:
            raise forbidden(f"{foreign[0]} is not an address of this runtime")
        if self._polls[runtime] >= self.limits.polls_per_runtime:
            raise Refused(
                429,
                ERRNO_POLLS,
                "too many polls",
                f"at most {self.limits.polls_per_runtime} open inbox polls per runtime",
                1.0,
            )
        self._polls[runtime] += 1
        try:
            return await self.mailboxes.take(addresses, timeout)
        finally:
            self._polls[runtime] -= 1
            if not self._polls[runtime]:
                del self._polls[runtime]

    def disconnect(self, credential: str | None, addresses: list[str]) -> int:
        """A runtime ends its message connection for its `addresses` (only its own);
        the number of queued messages dropped (see `Mailboxes.disconnect`)."""
        runtime = self.authenticate(credential)
        foreign = [a for a in addresses if not is_hyperty(a) or self.store.owner_of(a) != runtime]
        if foreign:
            raise forbidden(f"{foreign[0]} is not an address of this runtime")
        self._take("runtime", runtime, self.limits.messages_per_runtime, "messages")
        dropped = self.mailboxes.disconnect(addresses)
        self._event("disconnected", runtime=runtime, addresses=addresses, dropped=dropped)
        return dropped

    # The one entry point of the HTTP endpoint ---------------------------------------------

    async def handle(self, message: Message, *, runtime: str | None = None) -> Message | None:
        """Act on an admitted message (`admit`); the reTHINK answer (None for a response).

        `runtime` is the authenticated sender (None: a new runtime registering).
        """
        self.store.expire(self._clock())
        try:
            route = classify(message, self.url, self.allocation)
        except MessageError as exc:
            return message.response(400, str(exc), from_=self.url)
        if route is Route.REGISTER:
            return self.register(message, runtime)
        if route is Route.UNREGISTER:
            return self.unregister(message)
        if route is Route.ALLOCATE:
            return self.allocate(message, runtime)
        if route is Route.RESPONSE:
            await self.route_response(message)
            return None
        return (await self.deliver(message)).answer

    # Registrations ------------------------------------------------------------------------

    def register(self, message: Message, runtime: str | None = None) -> Message:
        """A runtime's `create`: keep its subscription and hyperties; answer 200.

        `runtime` None registers a new runtime: the answer carries its credential
        (`body.value.credential`), the only time the element reveals it.
        """
        try:
            registration = parse_registration(message, self.domain)
            if registration.subscription is not None:
                check_endpoint(registration.subscription["endpoint"], self.push_origins)
        except MessageError as exc:
            return message.response(400, str(exc), from_=self.url)
        for hyperty in registration.hyperties:
            owner = self.store.owner_of(hyperty)
            if owner is not None and owner != registration.runtime:
                return message.response(
                    409, f"{hyperty} belongs to another runtime", from_=self.url
                )
            if owner is None:
                return message.response(
                    403,
                    f"{hyperty} was not allocated to {registration.runtime}: ask "
                    f"{self.allocation} for addresses",
                    from_=self.url,
                )
        credential = None
        if runtime is None:
            if self.store.runtime_count() >= self.limits.max_runtimes:
                text = "the element holds all the runtimes it can"
                return message.response(503, text, from_=self.url)
            credential = secrets.token_urlsafe(32)
            if not self.store.create_runtime(registration.runtime, credential, self._clock()):
                return message.response(
                    409, f"{registration.runtime} is registered already", from_=self.url
                )
        self.store.put_runtime(registration, self._clock())
        self._event(
            "registered", runtime=registration.runtime, hyperties=list(registration.hyperties)
        )
        value: dict[str, Any] = {
            "runtime": registration.runtime,
            "hyperties": list(registration.hyperties),
        }
        if credential is not None:
            value["credential"] = credential
        return message.response(200, value=value, from_=self.url)

    def unregister(self, message: Message) -> Message:
        """A runtime's `delete`: stop pushing to it; 404 when it was not registered.

        The runtime keeps its credential and its addresses, to register again.
        """
        runtime = runtime_of(message.from_)
        if not self.store.delete_runtime(runtime):
            return message.response(404, f"{runtime} is not registered", from_=self.url)
        self._event("unregistered", runtime=runtime)
        return message.response(200, from_=self.url)

    def allocate(self, message: Message, runtime: str | None) -> Message:
        """Address allocation: fresh hyperty addresses, owned by the asking runtime."""
        answering = self.allocation
        if runtime is None:
            return message.response(401, "register first", from_=answering)
        try:
            number = parse_allocation(message, self.limits.allocation_batch)
        except MessageError as exc:
            return message.response(400, str(exc), from_=answering)
        held = self.store.address_count(runtime)
        if held + number > self.limits.hyperties_per_runtime:
            return message.response(
                429,
                f"a runtime holds at most {self.limits.hyperties_per_runtime} hyperty "
                f"addresses ({held} allocated)",
                from_=answering,
            )
        allocated = [hyperty_url(self.domain) for _ in range(number)]
        self.store.allocate(runtime, allocated)
        self._event("allocated", runtime=runtime, addresses=allocated)
        return message.response(200, value={"allocated": allocated}, from_=answering)

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
            if not self.mailboxes.put(hyperty, message):
                self._event("refused", hyperty=hyperty, id=message.id, reason="inbox full")
                return self._refuse(message, 503, f"the inbox of {hyperty} is full")
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
                f"the push subscription of {record.runtime} is gone; the runtime was unregistered",
                plan,
                result,
            )
        # A fixed text: what the push service answered stays here (it is in the event).
        return self._refuse(message, 502, "the push service did not take the message", plan, result)

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
