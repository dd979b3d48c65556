"""A minimal client for Firefox's Marionette protocol: navigate, run script, screenshot.

Firefox started with `--marionette` listens on `marionette.port`; each message is
`<length>:<json>`. Commands are `[0, id, name, params]`, answers `[1, id, error, result]`.
Enough of WebDriver to read a page's DOM and take a picture of it in a test.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from typing import Any


class MarionetteError(AssertionError):
    """Marionette answered a command with an error."""


class Marionette:
    """One Marionette connection with a WebDriver session."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._next_id = 0

    async def connect(self, timeout: float = 60) -> None:
        """Connect (Firefox may still be starting) and open a session."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._reader, self._writer = await asyncio.open_connection("127.0.0.1", self.port)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)
        await self._read()  # the greeting: {"applicationType": "gecko", ...}
        await self.command("WebDriver:NewSession", {"capabilities": {}})

    async def _read(self) -> Any:
        assert self._reader is not None
        length = await self._reader.readuntil(b":")
        return json.loads(await self._reader.readexactly(int(length[:-1])))

    async def command(self, name: str, params: dict[str, Any] | None = None) -> Any:
        """Send one command and return its result (raise MarionetteError on error)."""
        assert self._writer is not None
        self._next_id += 1
        data = json.dumps([0, self._next_id, name, params or {}]).encode()
        self._writer.write(str(len(data)).encode() + b":" + data)
        await self._writer.drain()
        while True:
            message = await self._read()
            if message[0] == 1 and message[1] == self._next_id:
                break
        if message[2]:
            raise MarionetteError(f"{name}: {message[2]}")
        return message[3]

    async def navigate(self, url: str) -> None:
        await self.command("WebDriver:Navigate", {"url": url})

    async def execute(self, script: str, *args: Any) -> Any:
        """Run `script` (a function body; `arguments` holds args) in the page."""
        result = await self.command("WebDriver:ExecuteScript", {"script": script, "args": args})
        return result.get("value")

    async def wait_for(self, script: str, timeout: float = 30, what: str = "") -> Any:
        """Poll `script` until it returns something truthy; return that."""
        deadline = time.monotonic() + timeout
        value = None
        while time.monotonic() < deadline:
            value = await self.execute(script)
            if value:
                return value
            await asyncio.sleep(0.2)
        state = await self.execute(
            "return document.body ? document.body.innerText.slice(0, 2000) : ''"
        )
        raise AssertionError(f"timed out waiting for {what or script} (last {value!r}):\n{state}")

    async def set_window_size(self, width: int, height: int) -> None:
        await self.command("WebDriver:SetWindowRect", {"width": width, "height": height})

    async def screenshot(self, full: bool = True) -> bytes:
        """A PNG of the page (the whole document when `full`)."""
        result = await self.command("WebDriver:TakeScreenshot", {"full": full, "hash": False})
        return base64.b64decode(result["value"])

    async def quit(self) -> None:
        """Ask Firefox to quit (it saves its state and exits)."""
        with contextlib.suppress(OSError, asyncio.IncompleteReadError, MarionetteError):
            await self.command("Marionette:Quit", {"flags": ["eForceQuit"]})
        await self.close()

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
