"""Where the push element keeps messages for connected runtimes, and who is connected.

A runtime that holds its message connection (a long-poll on `/hyperty/inbox`) gets its
messages here and is not pushed; `PushElement` (element.py) puts them, the HTTP
endpoint (http.py) takes them for the poll.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable, Iterable

from tidings.hyperty.message import Message

__all__ = ["LAST_SEEN_PRUNE_MIN", "MAILBOX_BYTES", "MAILBOX_LIMIT", "Mailboxes"]

#: Messages kept per address for a runtime that is between two polls.
MAILBOX_LIMIT = 256
#: Bytes of messages kept per address for a runtime that is between two polls.
MAILBOX_BYTES = 256 * 1024


LAST_SEEN_PRUNE_MIN = 4096  # poll times kept before a prune is worth its scan


class Mailboxes:
    """Messages for connected runtimes, taken by long-poll; who is connected.

    An address counts as connected while a poll for it is open, and for `grace`
    seconds after one returned (the runtime is about to poll again). What it keeps per
    address is bounded by what is live: an address's poll count and session only while
    a poll is open, its last poll time only until `grace` has passed (pruned whenever
    the table has doubled), its queue by `max_messages` and `max_bytes`.
    """

    def __init__(
        self,
        grace: float = 3.0,
        clock: Callable[[], float] = time.monotonic,
        *,
        max_messages: int = MAILBOX_LIMIT,
        max_bytes: int = MAILBOX_BYTES,
    ) -> None:
        self.grace = grace
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self._clock = clock
        self._queues: dict[str, collections.deque[Message]] = {}
        self._bytes: collections.Counter[str] = collections.Counter()
        self._polls: collections.Counter[str] = collections.Counter()
        self._last_seen: dict[str, float] = {}
        self._prune_at = LAST_SEEN_PRUNE_MIN
        self._sessions: collections.Counter[str] = collections.Counter()
        self._changed = asyncio.Event()
        self._closed = False

    def connected(self, address: str) -> bool:
        if self._polls[address] > 0:
            return True
        seen = self._last_seen.get(address)
        return seen is not None and self._clock() - seen < self.grace

    def put(self, address: str, message: Message) -> bool:
        """Queue a message for `address`; False (nothing queued) when its inbox is full."""
        size = len(message.encoded())
        queue = self._queues.get(address)
        if queue is not None and (
            len(queue) >= self.max_messages or self._bytes[address] + size > self.max_bytes
        ):
            return False
        if queue is None:
            queue = self._queues[address] = collections.deque()
        queue.append(message)
        self._bytes[address] += size
        self._changed.set()
        return True

    def queued(self, address: str) -> tuple[int, int]:
        """Messages and bytes waiting for `address`."""
        return len(self._queues.get(address, ())), self._bytes[address]

    def _drain(self, addresses: Iterable[str]) -> list[Message]:
        taken: list[Message] = []
        for address in addresses:
            queue = self._queues.pop(address, None)
            self._bytes.pop(address, None)
            if queue:
                taken.extend(queue)
        return taken

    async def take(self, addresses: list[str], timeout: float) -> list[Message]:
        """The messages for `addresses`, waiting up to `timeout` seconds for the first."""
        for address in addresses:
            self._polls[address] += 1
        session = [self._sessions[address] for address in addresses]
        try:
            deadline = self._clock() + timeout
            while True:
                if session != [self._sessions[address] for address in addresses]:
                    return []  # the runtime disconnected: this poll is an orphan
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
            ended = session != [self._sessions[address] for address in addresses]
            for address in addresses:
                self._polls[address] -= 1
                if not self._polls[address]:
                    del self._polls[address]
                    self._sessions.pop(address, None)  # only an open poll compares it
                if not ended:
                    self._last_seen[address] = now
            if len(self._last_seen) > self._prune_at:
                self._prune_last_seen(now)

    def disconnect(self, addresses: Iterable[str]) -> int:
        """The runtime left (it goes back to sleep): its addresses are not connected from
        now on, so the next message is pushed. Open polls for them end (a poll whose
        process exited would otherwise hold them "connected" until its timeout), and
        what was queued for them is dropped; how many messages that was."""
        dropped = 0
        for address in addresses:
            if self._polls[address]:  # ends the open polls of this address
                self._sessions[address] += 1
            self._last_seen.pop(address, None)
            dropped += len(self._queues.pop(address, ()))
            self._bytes.pop(address, None)
        self._changed.set()
        return dropped

    def _prune_last_seen(self, now: float) -> None:
        """Forget poll times older than `grace`: they no longer make anyone connected."""
        cutoff = now - self.grace
        self._last_seen = {a: seen for a, seen in self._last_seen.items() if seen > cutoff}
        self._prune_at = max(LAST_SEEN_PRUNE_MIN, 2 * len(self._last_seen))

    def close(self) -> None:
        """End every open poll (the server is stopping)."""
        self._closed = True
        self._changed.set()
