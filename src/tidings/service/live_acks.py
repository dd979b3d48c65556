"""Pushes written to their user agent before they are stored, answered by its ack.

A push to a user agent whose WebSocket on this node has been acknowledging quickly is
written to it at once; if the acknowledgement comes within `live_ack_wait`, the push is
answered 201 and never stored: the user agent has it, which is all the store would have
kept it for (RFC 8030 section 6.2), so its insert and its delete are both saved. If no
acknowledgement comes in time the push is stored like any other and answered only once
committed. No 201 is ever sent for a message that is neither acknowledged nor durable;
a crash in between leaves the sender without an answer, so it retries (at least once).

An acknowledgement arriving while the push is being stored is kept here and queued as
a delete once the insert is committed, so that no engine can run the delete first.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

__all__ = ["MAX_AWAITING_ACK", "LiveAcks", "ack_wait"]

# How long a push waits for its ack: this many of the connection's last ack round trips,
# plus a margin for the loop's turn, at most `live_ack_wait`. A user agent that acks at
# once is waited for a few milliseconds, so that one that cannot (a client awaiting the
# push's answer before it reads) costs little more than a store-first push.
ACK_WAIT_ROUND_TRIPS = 4
ACK_WAIT_MARGIN = 0.002  # seconds


def ack_wait(round_trip: float, limit: float) -> float:
    """Seconds to wait for the ack of a connection whose last ack took `round_trip`;
    0 when that was longer than `limit` (the push is stored first)."""
    if round_trip > limit:
        return 0.0
    return min(limit, ACK_WAIT_ROUND_TRIPS * round_trip + ACK_WAIT_MARGIN)


# Pushes awaiting their acknowledgement at once per process: each is a request being
# answered (bounded by the connection caps); past it pushes are stored first as before.
MAX_AWAITING_ACK = 10_000


class _Awaited:
    """One push written before it was stored: its user agent and the ack it waits for."""

    __slots__ = ("code", "future", "uaid")

    def __init__(self, uaid: str, future: asyncio.Future[int]) -> None:
        self.uaid = uaid
        self.future = future
        self.code: int | None = None  # an ack that came after the wait, while storing


class _Answer:
    """In place of the future of a push that a callback waits for (`expect_answer`):
    the same calls, but the callback runs as the result is set, where a future's done
    callback runs a turn of the loop later."""

    __slots__ = ("_callback", "_done", "timer")

    def __init__(self, callback: Callable[[int | None], None]) -> None:
        self._callback = callback
        self._done = False
        self.timer: asyncio.TimerHandle | None = None

    def done(self) -> bool:
        return self._done

    def set_result(self, code: int) -> None:
        self._finish(code)

    def cancel(self) -> bool:
        if self._done:
            return False
        self._finish(None)
        return True

    def _finish(self, code: int | None) -> None:
        if self._done:
            return
        self._done = True
        if self.timer is not None:
            self.timer.cancel()
        self._callback(code)


def _expire(future: asyncio.Future[int]) -> None:
    if not future.done():
        future.cancel()


class LiveAcks:
    """The pushes of this node written to their user agent and not yet answered."""

    __slots__ = ("_awaited",)

    def __init__(self) -> None:
        self._awaited: dict[str, _Awaited] = {}

    def __len__(self) -> int:
        return len(self._awaited)

    def __contains__(self, message_id: object) -> bool:
        return message_id in self._awaited

    def has_room(self) -> bool:
        return len(self._awaited) < MAX_AWAITING_ACK

    def expect(self, uaid: str, message_id: str) -> None:
        """Before the push is offered: its acknowledgement is to be caught here."""
        future = asyncio.get_running_loop().create_future()
        self._awaited[message_id] = _Awaited(uaid, future)

    def expect_answer(
        self,
        uaid: str,
        message_id: str,
        seconds: float,
        callback: Callable[[int | None], None],
    ) -> None:
        """`expect` and `wait` without a coroutine: `callback(code)` as the ack is read,
        if it comes within `seconds`, else `callback(None)` once they are over (or when
        the push is settled first); the push stays known here until `settle`."""
        answer = _Answer(callback)
        answer.timer = asyncio.get_running_loop().call_later(seconds, answer.cancel)
        future: Any = answer  # the calls of a future that `acknowledged` and `settle` make
        self._awaited[message_id] = _Awaited(uaid, future)

    async def wait(self, message_id: str, seconds: float) -> int | None:
        """The acknowledgement's code if it comes within `seconds`, else None; the push
        stays known here (being stored) until `settle`."""
        awaited = self._awaited[message_id]
        loop = asyncio.get_running_loop()
        timer = loop.call_later(seconds, _expire, awaited.future)
        try:
            return await awaited.future
        except asyncio.CancelledError:
            # Cancelling the request cancels the future it awaits too: only a future
            # cancelled while its request is not being cancelled means the time ran out
            # (or the push was settled).
            task = asyncio.current_task()
            if awaited.future.cancelled() and (task is None or not task.cancelling()):
                return None
            raise  # the request itself was cancelled
        finally:
            timer.cancel()

    def acknowledged(self, uaid: str, message_id: str, code: int) -> bool:
        """An acknowledgement from `uaid`: True when it answers a push known here (the
        caller then deletes nothing now); False for a message that was stored first."""
        awaited = self._awaited.get(message_id)
        if awaited is None or awaited.uaid != uaid:
            return False
        if not awaited.future.done():
            awaited.future.set_result(code)
        elif awaited.code is None:
            awaited.code = code  # being stored: deleted once committed (`settle`)
        return True

    def settle(self, message_id: str) -> int | None:
        """The push is answered (acknowledged, stored, or refused): forget it, and return
        the code of an acknowledgement that came while it was being stored."""
        awaited = self._awaited.pop(message_id, None)
        if awaited is None:
            return None
        if not awaited.future.done():
            awaited.future.cancel()
        return awaited.code
