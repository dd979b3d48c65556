"""What a hyperty sees of its runtime: the `Hyperty` protocol, its `HypertyContext`,
the factories that make hyperties, and the error the runtime raises.

A hyperty is made by `factory(context)` and implements `async on_message(message)`;
the context gives it its address, options and the runtime's bus. See `runtime.py`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from tidings.hyperty.addresses import parse_address
from tidings.hyperty.message import Message

if TYPE_CHECKING:
    from tidings.hyperty.runtime import HypertyRuntime

__all__ = [
    "BUILTIN_FACTORIES",
    "AnswerCallback",
    "Hyperty",
    "HypertyContext",
    "HypertyFactory",
    "HypertyRuntimeError",
    "load_factory",
]

#: Factories known by name; any other name of the form `module:attribute` is imported.
BUILTIN_FACTORIES: dict[str, str] = {"connector": "tidings.hyperty.connector:Connector"}


class HypertyRuntimeError(Exception):
    """The runtime cannot do what was asked (no state, element unreachable, ...)."""


class Hyperty(Protocol):
    """A hyperty instance: it receives the messages addressed to it."""

    async def on_message(self, message: Message) -> None: ...


HypertyFactory = Callable[["HypertyContext"], Hyperty]


class HypertyContext:
    """What a hyperty gets from its runtime: its address, options and the bus."""

    def __init__(
        self, runtime: HypertyRuntime, url: str, factory: str, options: dict[str, Any]
    ) -> None:
        self.runtime = runtime
        self.url = url
        self.factory = factory
        self.options = options

    @property
    def domain(self) -> str:
        return parse_address(self.url).domain

    def next_id(self) -> int:
        return self.runtime.next_id()

    async def post(self, message: Message) -> Message | None:
        """Send on the runtime's bus; the element's answer for a remote message."""
        return await self.runtime.post(message)

    async def request(
        self, message: Message, timeout: float = 30.0, *, on_answer: AnswerCallback | None = None
    ) -> Message:
        """Send and wait for the final response (see `HypertyRuntime.request`)."""
        return await self.runtime.request(message, timeout, on_answer=on_answer)

    async def reply(
        self, request: Message, code: int, description: str | None = None, value: Any = None
    ) -> Message | None:
        """Answer `request` with a reTHINK response from this hyperty."""
        return await self.runtime.post(request.response(code, description, value, from_=self.url))

    def log_event(self, kind: str, **detail: Any) -> None:
        self.runtime.log_event(kind, hyperty=self.url, **detail)

    async def connect(self) -> None:
        """Hold the runtime's message connection from now on (see `HypertyRuntime.connect`)."""
        await self.runtime.connect()

    def hold(self) -> None:
        """Keep the runtime awake (a call in progress) until `release`."""
        self.runtime.hold()

    def release(self) -> None:
        self.runtime.release()


AnswerCallback = Callable[[Message], None]


def load_factory(spec: str) -> HypertyFactory:
    """The factory a `module:attribute` name stands for."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise HypertyRuntimeError(f"factory {spec!r} is neither a known name nor module:attribute")
    factory = getattr(importlib.import_module(module_name), attribute)
    if not callable(factory):
        raise HypertyRuntimeError(f"factory {spec!r} is not callable")
    return factory  # type: ignore[no-any-return]
