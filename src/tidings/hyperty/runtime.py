"""The runtime side: a Hyperty runtime that sleeps and is woken by Web Push.

Over 500 lines: one class whose bus, message connection and registration share its state.

    runtime = HypertyRuntime(None, "state/", domain="example.com",
                             element="http://127.0.0.1:8090/hyperty",
                             service="ws://127.0.0.1:8080/")
    async with runtime:
        await runtime.create_hyperty("connector")          # hyperty://example.com/<id>
        await runtime.subscribe()                           # Web Push + register at the element
        ...                                                 # pushes wake hyperties

The runtime keeps its `hyperty-runtime://` URL, its hyperties (address, factory,
options) and the credential the element issued it in `<state>/runtime.json` (0600,
`RuntimeState` in `runtime_state.py`), so
a restarted or freshly woken runtime re-creates each hyperty at its old address and
speaks for it. Hyperty addresses come from the element's address allocation
(`allocate`); the first registration, made before the first allocation, gets the
credential that every later request presents (`Authorization: Bearer`).

Its message bus is the in-process `post`: a message for a local hyperty is handed to
it, anything else goes to the push element over HTTP (`ElementClient` in
`element_client.py`, standing for the runtime's message node connection).
`listen=True` long-polls the element's inbox for the runtime's hyperties, which is how
a caller gets its answers and how the element knows the runtime is connected.

Three ways to be woken:
- in-process: `service=` set, the runtime's own `UserAgent` calls `wake` on each push;
- asleep: `subscribe(command=...)` records a command for `tidings agent`, which starts
  `python -m tidings.hyperty.wake --state DIR` per push (see `wake.py`);
- a browser: the service worker of the demo page (`web/sw.js`).

What a hosted hyperty sees of the runtime (`HypertyContext`, factories) is in `context.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import random
import time
from collections.abc import Awaitable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tidings.hyperty.addresses import (
    allocation_url,
    is_hyperty,
    parse_address,
    push_element_url,
    runtime_allocation_url,
    runtime_registry_url,
)
from tidings.hyperty.addresses import runtime_url as new_runtime_url
from tidings.hyperty.context import (
    BUILTIN_FACTORIES,
    AnswerCallback,
    Hyperty,
    HypertyContext,
    HypertyFactory,
    HypertyRuntimeError,
    load_factory,
)
from tidings.hyperty.element_client import ElementClient
from tidings.hyperty.message import Message, MessageError
from tidings.hyperty.runtime_state import EVENTS_FILE, STATE_FILE, HostedHyperty, RuntimeState

if TYPE_CHECKING:
    from tidings.useragent import PushEvent, PushSubscriptionChangeEvent, UserAgent

__all__ = [
    "BUILTIN_FACTORIES",
    "Hyperty",
    "HypertyContext",
    "HypertyFactory",
    "HypertyRuntime",
    "HypertyRuntimeError",
    "RuntimeState",
]

log = logging.getLogger("tidings.hyperty.runtime")

SCOPE = "hyperty-runtime"


class HypertyRuntime:
    """A Hyperty runtime with a persistent address, hosting hyperties made by factories."""

    def __init__(
        self,
        runtime_url: str | None,
        state_path: str | os.PathLike[str],
        *,
        domain: str | None = None,
        element: str | None = None,
        service: str | None = None,
        factories: Mapping[str, HypertyFactory | str] | None = None,
        listen: bool = False,
        poll_timeout: float = 25.0,
        http_timeout: float = 10.0,
    ) -> None:
        self.state_path = Path(state_path)
        self.state_path.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._state = RuntimeState.load(self.state_path / STATE_FILE)
        stored = self._state.runtime_url
        if runtime_url is None:
            if stored is None:
                if domain is None:
                    raise HypertyRuntimeError(
                        f"no runtime in {self.state_path}: give a runtime URL or a domain"
                    )
                runtime_url = new_runtime_url(domain)
            else:
                runtime_url = stored
        elif stored is not None and stored != runtime_url:
            raise HypertyRuntimeError(
                f"{self.state_path} holds the runtime {stored}, not {runtime_url}"
            )
        self.url: str = runtime_url
        self.domain: str = parse_address(runtime_url).domain
        self._state.runtime_url = runtime_url
        if element is not None:
            self._state.element = element.rstrip("/")
        if service is not None:
            self._state.service = service
        self._save_state()
        self.factories: dict[str, HypertyFactory | str] = {**BUILTIN_FACTORIES, **(factories or {})}
        self.listen = listen
        self.poll_timeout = poll_timeout
        self._client = ElementClient(lambda: self.element, lambda: self.credential, http_timeout)
        self._running: dict[str, Hyperty] = {}
        self._creating: dict[str, asyncio.Lock] = {}
        self._waiting: dict[
            tuple[int, str], tuple[asyncio.Future[Message], AnswerCallback | None]
        ] = {}
        self._ids = itertools.count(random.randrange(1, 2**30))
        self._started = False
        self._agent: UserAgent | None = None
        self._poller: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._holds = 0
        self._idle = asyncio.Event()
        self._idle.set()

    # State --------------------------------------------------------------------------------

    def _save_state(self) -> None:
        self._state.save(self.state_path / STATE_FILE)

    @property
    def http_timeout(self) -> float:
        """Seconds one request to the push element may take (the inbox poll aside)."""
        return self._client.timeout

    @http_timeout.setter
    def http_timeout(self, value: float) -> None:
        self._client.timeout = value

    @property
    def element(self) -> str:
        """The push element's HTTP base URL (`http://host:port/hyperty`)."""
        element = self._state.element
        if not element:
            raise HypertyRuntimeError(
                "no push element URL: pass element='http://host:port/hyperty'"
            )
        return str(element)

    @property
    def credential(self) -> str | None:
        """The credential the element issued this runtime at its first registration."""
        return self._state.credential

    @property
    def element_address(self) -> str:
        """The push element's reTHINK address, `domain://push.<domain>`."""
        return push_element_url(self.domain)

    @property
    def hyperties(self) -> dict[str, HostedHyperty]:
        """The hosted hyperties: address -> {factory, options}."""
        return dict(self._state.hyperties)

    @property
    def subscription(self) -> dict[str, Any] | None:
        """The push subscription the runtime registered (the browser's toJSON shape)."""
        value = self._state.subscription
        return dict(value) if value is not None else None

    def log_event(self, kind: str, **detail: Any) -> None:
        """Append one line to `<state>/events.jsonl` (what woke, what ran, when)."""
        record = {"event": kind, "at": time.time(), "pid": os.getpid(), **detail}
        with open(self.state_path / EVENTS_FILE, "a") as file:
            file.write(json.dumps(record) + "\n")

    def events(self) -> list[dict[str, Any]]:
        """Everything `log_event` recorded, oldest first."""
        try:
            lines = (self.state_path / EVENTS_FILE).read_text().splitlines()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in lines if line.strip()]

    def next_id(self) -> int:
        return next(self._ids)

    # Life cycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Attach the push handler and start the inbox poll, if this runtime does those.

        The runtime's own user agent is started when a push service is known and the
        runtime is not served by a command (`subscribe(command=...)`, the asleep mode).
        """
        self._started = True
        if self._state.service and self._agent is None and not self._state.command:
            from tidings.useragent import UserAgent

            self._agent = UserAgent(self._state.service, self.state_path)
            await self._agent.start()
            await self._agent.register(
                SCOPE, on_push=self._on_push, on_subscription_change=self._on_change
            )
        if self.listen:
            self._poller = asyncio.create_task(self._poll(), name="hyperty-inbox")

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None
            await self._disconnect()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)
        if self._agent is not None:
            await self._agent.close()
            self._agent = None
        self._started = False
        for future, _ in self._waiting.values():
            future.cancel()

    async def __aenter__(self) -> HypertyRuntime:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def _element_client(self) -> ElementClient:
        if not self._started:
            raise HypertyRuntimeError("the runtime is not started (use `async with` or start())")
        return self._client

    # Hyperties ----------------------------------------------------------------------------

    async def create_hyperty(
        self,
        factory: str,
        *,
        options: dict[str, Any] | None = None,
        address: str | None = None,
    ) -> str:
        """Create a hyperty from a factory (at `address` if given); returns its address.

        Without `address` the element allocates one (`allocate`). The address, factory
        name and options are kept, so the runtime re-creates the hyperty at the same
        address after a restart or a wake-up.
        """
        self._resolve(factory)  # an unknown factory fails before any address is taken
        url = address or (await self.allocate(1))[0]
        if not is_hyperty(url):
            raise HypertyRuntimeError(f"{url!r} is not a hyperty:// address")
        self._state.hyperties[url] = {"factory": factory, "options": options or {}}
        self._save_state()
        await self.get_hyperty(url)
        if self._poller is not None:  # poll for the new address too, from now on
            self._poller.cancel()
            self._poller = asyncio.create_task(self._poll(), name="hyperty-inbox")
        return url

    def _resolve(self, name: str) -> HypertyFactory:
        factory = self.factories.get(name, name)
        return load_factory(factory) if isinstance(factory, str) else factory

    async def get_hyperty(self, url: str) -> Hyperty | None:
        """The running hyperty at `url`, created from its factory if it is not running."""
        running = self._running.get(url)
        if running is not None:
            return running
        spec = self._state.hyperties.get(url)
        if spec is None:
            return None
        async with self._creating.setdefault(url, asyncio.Lock()):
            if url not in self._running:
                context = HypertyContext(self, url, spec["factory"], dict(spec["options"]))
                self._running[url] = self._resolve(spec["factory"])(context)
                self.log_event("hyperty-created", hyperty=url, factory=spec["factory"])
        return self._running[url]

    def running(self, url: str) -> Hyperty | None:
        """The hyperty instance at `url` if it is running."""
        return self._running.get(url)

    # The bus ------------------------------------------------------------------------------

    async def wake(self, message: Message) -> None:
        """A pushed message: deliver it on the bus, creating its hyperty if needed."""
        self.log_event("woken", id=message.id, type=message.type, to=message.target)
        await self.dispatch(message)

    async def dispatch(self, message: Message) -> None:
        """Hand an incoming message to whoever waits for it: a request's waiter or a hyperty."""
        if message.is_response:
            waiting = self._waiting.get((message.id, message.target))
            if waiting is not None:
                future, on_answer = waiting
                if on_answer is not None:
                    on_answer(message)
                if message.is_final and not future.done():
                    future.set_result(message)
                return
        hyperty = await self.get_hyperty(message.target)
        if hyperty is None:
            if not message.is_response:
                await self.post(
                    message.response(404, f"{message.target} is not hosted by {self.url}")
                )
            return
        await hyperty.on_message(message)

    async def post(self, message: Message) -> Message | None:
        """Send a message: to a local hyperty directly, else through the push element.

        Returns the element's reTHINK answer to a request (a provisional 100 when it was
        pushed or queued for a connected runtime), None for a response or a local message.
        """
        if message.target in self._state.hyperties:
            self._spawn(self.dispatch(message))
            return None
        status, document = await self._element_client.post_message(message)
        if message.is_response:
            if status not in (200, 202):
                log.warning("response %s not routed: %s", message.id, document)
            return None
        if status != 200:
            raise HypertyRuntimeError(
                f"the push element refused the message ({status}): {document}"
            )
        return Message.from_dict(document)

    async def request(
        self,
        message: Message,
        timeout: float = 30.0,
        *,
        on_answer: AnswerCallback | None = None,
    ) -> Message:
        """Send a request and wait for its final response (code >= 200).

        Provisional answers (100 from the element) go to `on_answer`, as do all others.
        The final response arrives on the inbox, so the runtime must `listen`, unless the
        element answers with an error at once. TimeoutError after `timeout` seconds.
        """
        key = (message.id, message.from_)
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._waiting[key] = (future, on_answer)
        try:
            answer = await self.post(message)
            if answer is not None:
                if on_answer is not None:
                    on_answer(answer)
                if answer.is_final:
                    return answer
            return await asyncio.wait_for(future, timeout)
        finally:
            self._waiting.pop(key, None)

    def _spawn(self, coroutine: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("hyperty message handling failed", exc_info=task.exception())

    async def _poll(self) -> None:
        """The runtime's message connection: long-poll the element's inbox."""
        failures = 0
        while True:
            addresses = list(self._state.hyperties)
            if not addresses:  # nothing to listen for until a hyperty is created
                await asyncio.sleep(0.05)
                continue
            try:
                status, document = await self._element_client.poll_inbox(
                    addresses, self.poll_timeout
                )
                if status != 200 or not isinstance(document, dict):
                    raise HypertyRuntimeError(f"the inbox answered {status}: {document}")
                failures = 0
            except HypertyRuntimeError as exc:
                failures += 1
                log.warning("inbox poll failed (%s); retrying", exc)
                await asyncio.sleep(min(0.2 * 2**failures, 10.0))
                continue
            for item in document.get("messages", []):
                try:
                    message = Message.from_dict(item)
                except MessageError as exc:
                    log.warning("dropped a malformed message from the inbox: %s", exc)
                    continue
                self._spawn(self.dispatch(message))

    async def connect(self) -> None:
        """Start the message connection (the inbox long-poll) if the runtime does not hold
        it yet, and wait until the element sees it. A woken runtime does this to stay in
        a call: the caller's updates then come on the inbox instead of by push."""
        if self._poller is None:
            self._poller = asyncio.create_task(self._poll(), name="hyperty-inbox")
        await self.wait_listening(within=max(5.0, self.http_timeout))

    async def _disconnect(self) -> None:
        """Tell the element the message connection ends: push again from now on."""
        addresses = list(self._state.hyperties)
        if not addresses or self.credential is None:
            return
        try:
            status, document = await self._element_client.disconnect(addresses)
        except HypertyRuntimeError as exc:
            log.warning("could not disconnect: %s", exc)
            return
        if status != 200:
            log.warning("the element refused the disconnect (%s): %s", status, document)

    def hold(self) -> None:
        """Something in progress (a call) keeps the runtime awake until `release`."""
        self._holds += 1
        self._idle.clear()

    def release(self) -> None:
        self._holds = max(0, self._holds - 1)
        if not self._holds:
            self._idle.set()

    @property
    def busy(self) -> bool:
        return self._holds > 0

    async def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until nothing holds the runtime (its calls ended); False on timeout."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def wait_listening(self, within: float = 5.0) -> None:
        """Wait until the element sees this runtime's hyperties as connected (`live`)."""
        deadline = time.monotonic() + within
        addresses = list(self._state.hyperties)
        if self._poller is None or not addresses:
            raise HypertyRuntimeError(
                "the runtime does not listen (listen=True) or hosts no hyperty"
            )
        while True:
            status, document = await self._element_client.status(addresses[0])
            if status == 200 and document.get("status") == "live":
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the push element does not see {addresses[0]} as live")
            await asyncio.sleep(0.02)

    # Push ---------------------------------------------------------------------------------

    async def element_config(self) -> dict[str, Any]:
        """The element's `/config`: its domain, address and VAPID public key."""
        status, config = await self._element_client.config()
        if status != 200 or not isinstance(config, dict):
            raise HypertyRuntimeError(f"the push element's /config answered {status}: {config}")
        return config

    async def subscribe(
        self,
        *,
        application_server_key: str | None = None,
        command: str | None = None,
        timeout: float = 15.0,
    ) -> Message:
        """Subscribe for Web Push and register at the push element; the element's answer.

        Without `command` the runtime's own user agent wakes it in this process. With
        `command` the subscription is served by that command through `tidings agent`
        (the runtime is asleep between pushes).
        """
        from tidings.useragent import UserAgent

        service = self._state.service
        if not service:
            raise HypertyRuntimeError("no push service URL: pass service='ws://host:port/'")
        key = application_server_key or (await self.element_config()).get("applicationServerKey")
        if command is not None:
            self._state.command = command
            async with UserAgent(service, self.state_path, connect_timeout=timeout) as agent:
                registration = await agent.register_command(SCOPE, command)
                subscription = await registration.push_manager.subscribe(application_server_key=key)
        else:
            if self._agent is None:
                self._agent = UserAgent(service, self.state_path, connect_timeout=timeout)
                await self._agent.start()
                await self._agent.register(
                    SCOPE, on_push=self._on_push, on_subscription_change=self._on_change
                )
            registration = await self._agent.register(
                SCOPE, on_push=self._on_push, on_subscription_change=self._on_change
            )
            subscription = await registration.push_manager.subscribe(application_server_key=key)
        self._state.subscription = subscription.to_json()
        self._save_state()
        return await self.register()

    async def register(self, subscription: dict[str, Any] | None = None) -> Message:
        """Register (again) at the push element: `create` from the runtime's registry.

        The first registration, which needs no subscription, returns the runtime's
        credential (kept in the state file); later ones present it.
        """
        if subscription is not None:
            self._state.subscription = subscription
            self._save_state()
        if self.subscription is None:
            raise HypertyRuntimeError("the runtime has no push subscription yet: subscribe() first")
        answer = await self._register(self.subscription, list(self._state.hyperties))
        self.log_event("registered", element=self.element_address)
        return answer

    async def _register(self, subscription: dict[str, Any] | None, hyperties: list[str]) -> Message:
        value: dict[str, Any] = {"hyperties": hyperties, "user": self._state.user}
        if subscription is not None:
            value["subscription"] = subscription
        message = Message(
            self.next_id(),
            "create",
            runtime_registry_url(self.url),
            self.element_address,
            {"value": value},
        )
        answer = await self.post(message)
        assert answer is not None
        if answer.code != 200:
            raise HypertyRuntimeError(
                f"the push element refused the registration: {answer.description}"
            )
        credential = (answer.value or {}).get("credential")
        if isinstance(credential, str):
            self._state.credential = credential
            self._save_state()
        return answer

    async def ensure_credential(self) -> str:
        """The runtime's credential, registering (without push) first if it has none."""
        if self.credential is None:
            await self._register(None, [])
        if self.credential is None:
            raise HypertyRuntimeError("the push element issued no credential")
        return self.credential

    async def allocate(self, number: int = 1) -> list[str]:
        """Ask the domain for `number` hyperty addresses (reTHINK address allocation)."""
        await self.ensure_credential()
        message = Message(
            self.next_id(),
            "create",
            runtime_allocation_url(self.url),
            allocation_url(self.domain),
            {"scheme": "hyperty", "value": {"number": number, "allocationKey": self.url}},
        )
        answer = await self.post(message)
        assert answer is not None
        allocated = (answer.value or {}).get("allocated") if answer.code == 200 else None
        if (
            not isinstance(allocated, list)
            or len(allocated) != number
            or not all(isinstance(a, str) and is_hyperty(a) for a in allocated)
        ):
            raise HypertyRuntimeError(
                f"the address allocation answered {answer.code}: {answer.description}"
            )
        return allocated

    async def unregister(self) -> Message:
        """`delete` the runtime's registration at the push element."""
        message = Message(
            self.next_id(), "delete", runtime_registry_url(self.url), self.element_address
        )
        answer = await self.post(message)
        assert answer is not None
        return answer

    async def _on_push(self, event: PushEvent) -> None:
        if event.data is None:
            return
        try:
            message = Message.from_json(event.data.bytes())
        except MessageError as exc:
            log.warning("a push that is not a reTHINK message: %s", exc)
            return
        await self.wake(message)

    async def _on_change(self, event: PushSubscriptionChangeEvent) -> None:
        if event.new_subscription is not None:
            await self.register(event.new_subscription.to_json())
