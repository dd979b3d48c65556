"""A whole call set-up on one machine: push service, push element, caller and callee.

`CallDemo` is what `tidings demo call`, the end-to-end tests and the wake-up benchmark
run. The caller runtime lives in this process and holds its message connection (it
long-polls the element). The callee runtime is

- `asleep`: no process. `tidings agent` (a separate process, the role a browser or an
  OS plays) holds the push connection and starts `python -m tidings.hyperty.wake` per
  push; that process re-creates the Connector at its old address and answers;
- `awake`: `tidings hyperty runtime run` as a separate process whose own user agent
  wakes the Connector in-process (the app is running, but has no message connection).

The element trusts only this service's push origin and checks identity assertions
against a test identity provider (`tidings.hyperty.idp`): the caller's invitation carries Alice's
assertion, so the callee rings for a verified caller.

With `media=True` each call carries audio and video (`tidings.hyperty.media`, aiortc, ICE on
127.0.0.1 only): after the 200 the caller offers, the woken callee process holds its
message connection for the offer and candidates, both sides decode frames for
`seconds`, then the caller hangs up and the callee's process exits.

Every step is timed with the wall clock (all processes are on one machine); what a call
gives back (`CallResult`, its timeline and report) is in `demo_report.py`. The demo is
the command line's, not the library's: it starts a push service and a sender too.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any, Literal

from tidings.cli.demo_report import CallResult, Step, first_at
from tidings.hyperty.element import ElementEvent, PushElement
from tidings.hyperty.http import ElementApp, ElementServer
from tidings.hyperty.identity import IdentityVerifier, KeySet
from tidings.hyperty.idp import IdentityProvider
from tidings.hyperty.message import Message
from tidings.hyperty.runtime import HypertyRuntime
from tidings.hyperty.wake import wake_command

__all__ = ["CallDemo", "CallResult", "Step"]

Mode = Literal["asleep", "awake"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class CallDemo:
    """Start everything (`async with`), then `await demo.call()` as often as wanted."""

    def __init__(
        self,
        work_dir: str | os.PathLike[str],
        *,
        mode: Mode = "asleep",
        answer: str = "accept",
        ring_seconds: float = 0.0,
        domain: str = "example.com",
        ttl: int = 60,
        media: bool = False,
        seconds: float = 3.0,
        callee_options: dict[str, Any] | None = None,
    ) -> None:
        self.work_dir = Path(work_dir)
        self.mode = mode
        self.answer = answer
        self.ring_seconds = ring_seconds
        self.domain = domain
        self.ttl = ttl
        self.media = media
        self.seconds = seconds
        self.callee_options = dict(callee_options or {})
        self.events: list[ElementEvent] = []
        self.idp = IdentityProvider(f"https://idp.{domain}")
        self.service_ws = ""
        self.callee_url = ""
        self.caller_url = ""
        self.callee_state = self.work_dir / "callee"
        self.caller: HypertyRuntime | None = None
        self.element: PushElement | None = None
        self.element_server: ElementServer | None = None
        self.process: asyncio.subprocess.Process | None = None
        self._stack = contextlib.AsyncExitStack()

    # Set-up -------------------------------------------------------------------------------

    async def __aenter__(self) -> CallDemo:
        try:
            await self._start()
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    async def _start(self) -> None:
        from tidings.sender import RetryPolicy, Sender
        from tidings.service.config import ServiceConfig
        from tidings.service.run import build_server
        from tidings.webpush import VapidKey

        self.work_dir.mkdir(parents=True, exist_ok=True)
        config = ServiceConfig(
            port=_free_port(), db=str(self.work_dir / "service" / "tidings.db"), log_level="warning"
        )
        (self.work_dir / "service").mkdir(exist_ok=True)
        service = build_server(config)
        await service.start()
        self._stack.push_async_callback(service.stop, 2)
        self.service_ws = config.websocket_url

        key = VapidKey.generate()
        sender = Sender(key, "mailto:demo@example.com", retry=RetryPolicy.none(), timeout=10)
        await self._stack.enter_async_context(sender)
        self.element = PushElement(
            self.domain,
            sender,
            ttl=self.ttl,
            application_server_key=key.public_key_b64,
            on_event=self.events.append,
            push_origins=[config.origin],
            identity=IdentityVerifier(
                self.idp.issuer, self.domain, KeySet.from_jwks(self.idp.jwks())
            ),
        )
        self.element_server = ElementServer(ElementApp(self.element))
        await self.element_server.start()
        self._stack.push_async_callback(self.element_server.stop)
        element = self.element_server.url + "/hyperty"

        await self._start_callee(element)

        self.caller = HypertyRuntime(
            None, self.work_dir / "caller", domain=self.domain, element=element, listen=True
        )
        await self.caller.start()
        self._stack.push_async_callback(self.caller.close)
        self.caller_url = await self.caller.create_hyperty(
            "connector", options={"name": "Alice", "loopback": True}
        )
        await self.caller.wait_listening()

    async def _start_callee(self, element: str) -> None:
        options = {
            "name": "Bob",
            "answer": self.answer,
            "ring_seconds": self.ring_seconds,
            "loopback": True,  # one machine: ICE on 127.0.0.1 only
            **self.callee_options,
        }
        runtime = HypertyRuntime(
            None, self.callee_state, domain=self.domain, element=element, service=self.service_ws
        )
        if self.mode == "asleep":
            async with runtime:
                self.callee_url = await runtime.create_hyperty("connector", options=options)
                await runtime.subscribe(command=wake_command(self.callee_state))
            command = [sys.executable, "-m", "tidings", "agent", "--service", self.service_ws]
            command += ["--state", str(self.callee_state), "--command-timeout", "20"]
            ready = "connected to"
        else:
            async with runtime:
                self.callee_url = await runtime.create_hyperty("connector", options=options)
            command = [sys.executable, "-m", "tidings", "hyperty", "runtime", "run"]
            command += ["--state", str(self.callee_state)]
            ready = "runtime ready"
        self.process = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,
        )
        self._stack.push_async_callback(self._stop_process)
        await self._wait_ready(ready)

    async def _wait_ready(self, marker: str, timeout: float = 20.0) -> None:
        """Wait until the callee's process holds its push connection."""
        assert self.process is not None and self.process.stdout is not None
        lines: list[str] = []
        try:
            async with asyncio.timeout(timeout):
                while True:
                    raw = await self.process.stdout.readline()
                    if not raw:
                        raise RuntimeError("the callee process exited:\n" + "".join(lines))
                    line = raw.decode(errors="replace")
                    lines.append(line)
                    if marker in line:
                        break
        except TimeoutError:
            raise RuntimeError(
                "the callee process did not connect:\n" + "".join(lines[-20:])
            ) from None
        self._drain = asyncio.create_task(self._drain_output(self.process.stdout))

    async def _drain_output(self, stream: asyncio.StreamReader) -> None:
        log = (self.work_dir / "callee.log").open("ab")
        try:
            while raw := await stream.readline():
                log.write(raw)
                log.flush()
        finally:
            log.close()

    async def _stop_process(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, 15)
            try:
                await asyncio.wait_for(process.wait(), 5)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, 9)
                await process.wait()
        # Anything the agent started and left behind (a wake process) goes too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, 9)
        drain = getattr(self, "_drain", None)
        if drain is not None:
            drain.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await drain

    # One call -----------------------------------------------------------------------------

    def callee_events(self) -> list[dict[str, Any]]:
        return HypertyRuntime(None, self.callee_state).events()

    async def call(self, timeout: float = 20.0) -> CallResult:
        """Call the callee; the final answer and the timeline of the set-up."""
        assert self.caller is not None
        connector = self.caller.running(self.caller_url)
        assert connector is not None
        events_before = len(self.callee_events())
        element_before = len(self.events)
        assertion = self.idp.assertion(
            f"user://{self.idp.domain}/alice",
            audience=self.domain,
            name="Alice",
            username=f"alice@{self.idp.domain}",
        )
        invitation = connector.invitation(  # type: ignore[attr-defined]
            self.callee_url, assertion=assertion, media=self.media
        )
        provisional: list[tuple[float, Message]] = []
        caller_before = len(self.caller.events())
        started = time.time()
        answer = await connector.call(  # type: ignore[attr-defined]
            self.callee_url,
            timeout=timeout,
            invitation=invitation,
            on_answer=lambda m: provisional.append((time.time(), m)),
        )
        answered = time.time()
        media = None
        if self.media and answer.code == 200:
            media = await self._media(connector, invitation, started, timeout)
        callee = await self._callee_events_after(events_before, invitation.id)
        rang = next((e for e in callee if e["event"] == "ring"), None)
        result = CallResult(
            answer,
            started,
            None if rang is None else rang["at"],
            None if rang is None else rang["pid"],
        )
        result.callee_events = callee
        if media is not None:
            ended = next((e for e in callee if e["event"] == "call-ended"), {})
            media["callee"] = {
                key: ended.get(key) for key in ("frames_received", "reason", "ice_connected_ms")
            }
            media["callee_first_media_at"] = first_at(callee, "media", what="first video frame")
            media["callee_exited"] = first_at(callee, "runtime-exit") is not None
        result.media = media
        caller_events = self.caller.events()[caller_before:]
        # The caller logged the answer before it sent its offer: that is the answer's time.
        answered = first_at(caller_events, "answer", id=answer.id) or answered
        result.answered = answered
        result.steps = self._steps(
            invitation, started, answered, answer, callee, self.events[element_before:]
        )
        result.steps += self._media_steps(started, caller_events, "caller")
        result.steps += self._media_steps(started, callee, "callee")
        result.steps.sort(key=lambda step: step.at)
        return result

    async def _media(
        self, connector: Any, invitation: Message, started: float, timeout: float
    ) -> dict[str, Any]:
        """The call's media at the caller: first frames, `seconds` of call, hang-up, and the
        callee's runtime going back to sleep (its process exits)."""
        from tidings.hyperty.addresses import object_url

        connection = object_url(invitation.from_)
        active = connector.calls.get(connection) or connector.ended.get(connection)
        if active is None:
            raise RuntimeError("the call has no media")
        mono_offset = time.time() - time.monotonic()  # monotonic -> wall clock
        async with asyncio.timeout(timeout):
            await asyncio.wait(
                [
                    asyncio.ensure_future(active.media.first_frames.wait()),
                    asyncio.ensure_future(active.ended.wait()),
                ],
                return_when=asyncio.FIRST_COMPLETED,
            )
        if not active.ended.is_set():
            # The call itself: it lasts `seconds`, then the caller hangs up.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(active.ended.wait(), self.seconds)
            await connector.hangup(connection)
        stats = active.media.stats
        firsts = list(stats.first_frame_at.values())
        media: dict[str, Any] = {
            "caller": {**stats.to_json(), "reason": active.reason},
            "first_media_at": min(firsts) + mono_offset if firsts else None,
            "ice_connected_at": None
            if stats.connected_at is None
            else stats.connected_at + mono_offset,
        }
        await self._wait_callee_asleep(connection, timeout)
        return media

    async def _wait_callee_asleep(self, connection: str, timeout: float) -> None:
        """Until the callee's runtime logged the call's end and its process's exit."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            events = self.callee_events()
            ended = [i for i, e in enumerate(events) if e["event"] == "call-ended"]
            ended = [i for i in ended if events[i].get("connection") == connection]
            if ended and any(e["event"] == "runtime-exit" for e in events[ended[0] :]):
                return
            await asyncio.sleep(0.02)
        raise TimeoutError(f"the callee's runtime did not end the call {connection}")

    @staticmethod
    def _media_steps(started: float, events: list[dict[str, Any]], actor: str) -> list[Step]:
        steps = []
        for event in events:
            if event["event"] == "media":
                what = str(event["what"])
                if what.startswith("first "):
                    what += " received"
                steps.append(Step(event["at"] - started, actor, what))
            elif event["event"] == "media-started":
                steps.append(Step(event["at"] - started, actor, "media started"))
            elif event["event"] == "call-ended":
                frames = event.get("frames_received") or {}
                steps.append(
                    Step(
                        event["at"] - started,
                        actor,
                        f"call ended ({event.get('reason')}): received "
                        f"{frames.get('audio', 0)} audio, {frames.get('video', 0)} video frames",
                    )
                )
        return steps

    async def _callee_events_after(self, start: int, message_id: int) -> list[dict[str, Any]]:
        """The callee's events for this call (the answer may beat the log line by a hair)."""
        deadline = time.monotonic() + 2
        while True:
            events = self.callee_events()[start:]
            if any(
                e["event"] in ("accepted", "declined", "missed", "runtime-exit") for e in events
            ):
                return events
            if time.monotonic() > deadline:
                return events
            await asyncio.sleep(0.01)

    def _steps(
        self,
        invitation: Message,
        started: float,
        answered: float,
        answer: Message,
        callee: list[dict[str, Any]],
        element: list[ElementEvent],
    ) -> list[Step]:
        steps = [Step(0.0, "caller", f"invites {invitation.target} (create {invitation.from_})")]
        for happening in element:
            detail = happening.detail
            if happening.kind == "pushed":
                what = (
                    f"pushed the {detail['type']}: {detail['status']} {detail['kind']}, "
                    f"Urgency {detail['urgency']}, TTL {detail['ttl']}, Topic {detail['topic']}, "
                    f"{detail['bytes']} bytes"
                )
            elif happening.kind == "inbox" and detail.get("type") in ("response", "update"):
                continue  # a response is shown as "routed"; updates are the media's signals
            elif happening.kind == "inbox":
                what = f"put the {detail.get('type')} on the inbox of {detail.get('hyperty')}"
            elif happening.kind == "cancelled":
                what = f"the delete of {detail['object']} removed what was pending for it"
            elif happening.kind == "disconnected":
                what = "the callee runtime disconnected: pushed again from now on"
            elif happening.kind == "routed":
                what = f"routed the {detail['code']} response to the caller ({detail['via']})"
            else:
                what = f"{happening.kind} {detail}"
            steps.append(Step(happening.at - started, "element", what))
        texts = {
            "runtime-started": "runtime process started by `tidings agent` (pid {pid})",
            "woken": "runtime woken by the push ({type} for {to})",
            "hyperty-created": "Connector re-created at its old address {hyperty}",
            "ring": "Connector rings: {caller} is calling",
            "accepted": "Connector accepts: response 200",
            "declined": "Connector declines: response 486",
            "runtime-exit": "runtime process exits",
        }
        for event in callee:
            if event["event"] in texts:
                what = texts[event["event"]].format(**event)
                if event["event"] == "ring" and event.get("verified"):
                    what += " (verified caller)"
                steps.append(Step(event["at"] - started, "callee", what))
        steps.append(
            Step(answered - started, "caller", f"final answer {answer.code} {answer.description}")
        )
        steps.sort(key=lambda step: step.at)
        return steps
