"""The runtime's HTTP calls to the push element (`http://host:port/hyperty`).

    client = ElementClient(lambda: "http://127.0.0.1:8090/hyperty", lambda: credential)
    status, answer = await client.post_message(message)

Each call is one request with the standard library in a thread, carrying the runtime's
credential (`Authorization: Bearer`); the answer is (HTTP status, parsed JSON body).
Unreachable: `HypertyRuntimeError`. The endpoint is described in docs/hyperty.md.

The request is `http.client`'s (`element_request`), not `urllib.request`'s: a woken
runtime imports this on every push, and urllib.request costs about 9 ms more to import
(its redirect, cookie, proxy and file handlers: tempfile, shutil, ipaddress,
email.utils...); the element answers one request with one response, no redirects. See
BENCHMARKS.md, hyperty wake-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import threading
import urllib.parse
from collections.abc import Callable, Iterable
from typing import Any

from tidings.hyperty.context import HypertyRuntimeError
from tidings.hyperty.message import Message

__all__ = ["ElementClient", "ElementUnreachable", "element_request"]


class ElementUnreachable(OSError):
    """No HTTP answer from the element (refused, reset, timed out, not HTTP)."""


def element_request(
    method: str, url: str, body: bytes | None, headers: dict[str, str], timeout: float
) -> tuple[int, Any]:
    """One request: (status, parsed JSON body); a body that is not JSON in an error
    answer becomes `{"message": text}`. Blocking: run it on a thread."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https":
        connection: http.client.HTTPConnection = http.client.HTTPSConnection(
            parts.hostname or "", parts.port, timeout=timeout
        )
    elif parts.scheme == "http":
        connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=timeout)
    else:
        raise ElementUnreachable(f"not an http(s) URL: {url}")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        connection.request(method, target, body=body, headers=headers)
        response = connection.getresponse()
        raw = response.read()
    except (OSError, http.client.HTTPException) as exc:
        raise ElementUnreachable(str(exc) or type(exc).__name__) from None
    finally:
        connection.close()
    if response.status < 400:
        return response.status, json.loads(raw or b"null")
    try:
        return response.status, json.loads(raw)
    except ValueError:
        return response.status, {"message": raw.decode(errors="replace")}


class ElementClient:
    """HTTP calls to one push element, as the runtime whose credential it presents.

    `element` and `credential` are read at each call: the runtime learns its credential
    at its first registration.
    """

    def __init__(
        self,
        element: Callable[[], str],
        credential: Callable[[], str | None],
        timeout: float = 10.0,
    ) -> None:
        self._element = element
        self._credential = credential
        self.timeout = timeout

    @property
    def element(self) -> str:
        """The push element's HTTP base URL."""
        return self._element()

    def _authorization(self) -> dict[str, str]:
        credential = self._credential()
        return {"authorization": f"Bearer {credential}"} if credential else {}

    async def post_message(self, message: Message) -> tuple[int, Any]:
        """`POST /messages`: hand the element a reTHINK message; its reTHINK answer."""
        return await self.call("POST", "/messages", message.encoded())

    async def poll_inbox(self, addresses: Iterable[str], timeout: float) -> tuple[int, Any]:
        """`GET /inbox`: the long-poll for `addresses`, held up to `timeout` seconds.

        On a daemon thread of its own (see `call`), allowed 10 s beyond `timeout`.
        """
        query = urllib.parse.urlencode(
            [("address", a) for a in addresses] + [("timeout", str(timeout))]
        )
        return await self.call("GET", "/inbox", query=query, timeout=timeout + 10, own_thread=True)

    async def disconnect(self, addresses: Iterable[str]) -> tuple[int, Any]:
        """`DELETE /inbox`: the message connection for `addresses` ends."""
        query = urllib.parse.urlencode([("address", a) for a in addresses])
        return await self.call("DELETE", "/inbox", query=query)

    async def status(self, address: str) -> tuple[int, Any]:
        """`GET /status`: whether the element sees `address` as connected (`live`)."""
        return await self.call("GET", "/status", query=urllib.parse.urlencode({"address": address}))

    async def config(self) -> tuple[int, Any]:
        """`GET /config`: the element's domain, address and VAPID public key."""
        return await self.call("GET", "/config")

    async def call(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        query: str = "",
        *,
        timeout: float | None = None,
        own_thread: bool = False,
    ) -> tuple[int, Any]:
        """One request to the push element: (status, parsed JSON body).

        The standard library in a thread: a woken runtime answers without loading an
        HTTP client library (the answer is one small POST; see docs/hyperty.md).
        `own_thread` runs it on a daemon thread of its own rather than the loop's
        executor: the inbox long-poll, which must neither hold an executor worker for
        its whole length nor keep the process from exiting once it is abandoned.
        """
        url = self.element + path + (f"?{query}" if query else "")
        headers = {"content-type": "application/json"} if body is not None else {}
        headers.update(self._authorization())
        limit = self.timeout if timeout is None else timeout

        def run() -> tuple[int, Any]:
            try:
                return element_request(method, url, body, headers, limit)
            except ElementUnreachable as exc:
                raise HypertyRuntimeError(
                    f"the push element at {self.element} is unreachable: {exc}"
                ) from None

        if not own_thread:
            return await asyncio.to_thread(run)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[int, Any]] = loop.create_future()

        def settle(outcome: tuple[int, Any] | None, error: BaseException | None) -> None:
            if future.done():
                return
            if error is not None:
                future.set_exception(error)
            elif outcome is not None:
                future.set_result(outcome)

        def thread() -> None:
            outcome: tuple[int, Any] | None = None
            error: BaseException | None = None
            try:
                outcome = run()
            except BaseException as exc:  # handed to the waiting coroutine
                error = exc
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits
                loop.call_soon_threadsafe(settle, outcome, error)

        threading.Thread(target=thread, name="hyperty-inbox", daemon=True).start()
        return await future
