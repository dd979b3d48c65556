"""Stand-ins for the HTTP/2 side of an RFC 8030 monitor, to drive `PushMonitor` alone."""

from __future__ import annotations

import asyncio

from tidings.service.http.messages import Response


class PushingChannel:
    """A monitor's stream whose peer takes every push; the paths pushed, in order."""

    def __init__(self) -> None:
        self.closed = asyncio.Event()
        self.pushed: list[str] = []

    def push(self, path: str, response: Response, promised: dict[str, str]) -> bool:
        self.pushed.append(path)
        return True
