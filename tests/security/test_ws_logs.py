"""WebSocket bounds, log injection and bad request URLs (issue 16, "WebSocket and logs").

The WebSocket tests speak RFC 6455 frames over a raw socket to a real server in this
event loop, so they can look at the server's own state (buffered bytes, fragments,
unacknowledged ids) while a hostile client does its worst.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import socket
import struct
import time
from pathlib import Path

import httpx

from service.test_http_transport import assert_json_error, exchange
from support.service import RunningService, ServiceProcess, TestAgent
from tidings.service import ws_protocol as wp
from tidings.service import ws_session
from tidings.service.errors import Errno
from tidings.service.http import websocket as ws
from tidings.service.logs import JsonFormatter
from tidings.service.store import StoredMessage
from tidings.service.ws_session import WebSocketSession


def client_frame(opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
    """A masked client frame (RFC 6455 section 5.2), payloads under 126 bytes."""
    assert len(payload) < 126
    key = os.urandom(4)
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return bytes(((0x80 if fin else 0) | opcode, 0x80 | len(payload))) + key + masked


class RawSocket:
    """A WebSocket client that writes frames byte by byte and reads only when told."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int, *, receive_buffer: int | None = None) -> RawSocket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if receive_buffer is not None:  # a client that reads slowly, if at all
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 101"), head
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def frame(self, timeout: float = 10) -> tuple[int, bytes]:
        """The next server frame: (opcode, payload)."""
        first, second = await asyncio.wait_for(self.reader.readexactly(2), timeout)
        length = second & 0x7F
        if length == 126:
            length = struct.unpack("!H", await self.reader.readexactly(2))[0]
        elif length == 127:
            length = struct.unpack("!Q", await self.reader.readexactly(8))[0]
        return first & 0x0F, await asyncio.wait_for(self.reader.readexactly(length), timeout)

    async def hello(self) -> str:
        hello = {"messageType": "hello", "broadcasts": {}, "use_webpush": True}
        await self.send(client_frame(ws.OP_TEXT, json.dumps(hello).encode()))
        opcode, payload = await self.frame()
        assert opcode == ws.OP_TEXT, payload
        uaid = json.loads(payload)["uaid"]
        assert isinstance(uaid, str)
        return uaid

    def close(self) -> None:
        self.writer.close()


def session_of(service: RunningService, uaid: str) -> WebSocketSession:
    assert service.service is not None
    (session,) = service.service.hub.agents(uaid)
    assert isinstance(session, WebSocketSession)
    return session


async def test_pongs_count_against_the_unread_cap(service: RunningService) -> None:
    raw = await RawSocket.open(service.config.port, receive_buffer=4096)
    try:
        uaid = await raw.hello()
        assert service.service is not None
        hub = service.service.hub
        channel = session_of(service, uaid).channel
        assert isinstance(channel, ws.PushWebSocket)
        pings = client_frame(ws.OP_PING, b"p" * 125) * 1000  # 131 kB in, 127 kB of pongs out
        largest = 0
        for _ in range(400):  # at most 52 MB of pings, never reading a pong
            try:
                await raw.send(pings)
            except (ConnectionError, OSError):
                break  # the server dropped us
            if not hub.is_connected(uaid):
                break
            largest = max(largest, channel.transport.get_write_buffer_size())
            assert largest <= ws.WRITE_BUFFER_LIMIT + 200, largest
        deadline = time.monotonic() + 10
        while hub.is_connected(uaid) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert not hub.is_connected(uaid), "a client that never reads its pongs was kept"
        assert channel.transport.get_write_buffer_size() <= ws.WRITE_BUFFER_LIMIT + 200
    finally:
        raw.close()


async def test_endless_empty_continuation_frames_are_cut_off(service: RunningService) -> None:
    raw = await RawSocket.open(service.config.port)
    try:
        await raw.hello()
        empty = client_frame(ws.OP_CONTINUATION, b"", fin=False)
        # 1,000 zero-length pieces of one message in one write (6 kB: one segment, so
        # the server reads them all and its close is not lost to a reset).
        await raw.send(client_frame(ws.OP_TEXT, b'{"messageType":', fin=False) + empty * 1000)
        opcode, payload = await raw.frame()
        assert opcode == ws.OP_CLOSE
        assert struct.unpack("!H", payload[:2])[0] == wp.CLOSE_POLICY_VIOLATION  # 1008
    finally:
        raw.close()


def test_the_parser_holds_at_most_max_fragments() -> None:
    parser = ws.FrameParser(max_message=4096)
    parser.feed(client_frame(ws.OP_TEXT, b"{", fin=False))
    empty = client_frame(ws.OP_CONTINUATION, b"", fin=False)
    try:
        for _ in range(10_000):
            parser.feed(empty)
            assert len(parser._fragments or ()) <= 64  # ws.MAX_FRAGMENTS
    except ws.FrameError as exc:
        assert exc.code == wp.CLOSE_POLICY_VIOLATION
    else:
        raise AssertionError("10,000 empty continuation frames were accepted")


async def test_never_acknowledged_ttl0_messages_are_not_remembered_forever(
    service: RunningService,
) -> None:
    agent = TestAgent(service.ws_url)
    await agent.connect()
    try:
        registration = await agent.register()
        assert agent.uaid is not None
        session = session_of(service, agent.uaid)
        assert service.service is not None
        count = 1024 + 500  # ws_session.MAX_UNACKED and then some
        for i in range(count):  # TTL 0: never stored, and this agent never acks
            now = time.time()
            message = StoredMessage(
                f"ttl0-{i}", agent.uaid, registration.channel_id, b"", 0, now, now
            )
            service.service.hub.offer(message)
            assert len(session._unacked or ()) <= 1024  # ws_session.MAX_UNACKED
            if i % 100 == 0:
                await asyncio.sleep(0)  # let the sends go out
        deadline = time.monotonic() + 30
        received = 0
        while received < count:  # every one was delivered, none refused
            await agent.receive(timeout=max(1.0, deadline - time.monotonic()))
            received += 1
        assert len(session._unacked) <= ws_session.MAX_UNACKED
    finally:
        await agent.close()


async def test_a_bad_request_url_is_400_not_431(service: RunningService) -> None:
    for target in (b"http://[bad", b"http://a:99999999/x", b"http://"):
        request = b"GET " + target + b" HTTP/1.1\r\nhost: a\r\n\r\n"
        (answer,) = await exchange(service, request)
        assert assert_json_error(answer, 400)["errno"] == Errno.MALFORMED_REQUEST


async def test_client_strings_cannot_forge_log_lines(tmp_path: Path) -> None:
    node = ServiceProcess(tmp_path / "node", args=["--log-level", "debug"])
    node.start()
    forged = "2026-01-01 00:00:00,000 CRITICAL tidings.access: FORGED"
    try:
        agent = TestAgent(node.ws_url)
        await agent.connect()
        try:
            registration = await agent.register()
            hostile = f"v1\r\n{forged}\x1b[2J\u2028\x85\"'"
            await agent.send({"messageType": "nack", "version": hostile, "code": 301})
            await agent.send(
                {
                    "messageType": "ack",
                    "updates": [{"channelID": registration.channel_id, "version": hostile}],
                }
            )
            await agent.send({"messageType": "ping"})  # handled after the two above
            assert await agent.receive() == {}  # the ping reply
        finally:
            await agent.close()
        async with httpx.AsyncClient() as client:
            # The ack's delete is written in the background; /health after it is enough
            # for the log lines to be there once we stop the node.
            assert (await client.get(node.url + "/health")).status_code == 200
    finally:
        node.stop()
    text = node.log_path.read_text(encoding="utf-8", errors="replace")
    lines = text.split("\n")
    assert not any(line.startswith(forged[:24]) for line in lines), text
    assert not any(line.lstrip("\r").startswith(forged) for line in lines)
    for separator in ("\r", "\x1b", "\u2028", "\x85"):
        assert separator not in text
    mentions = [line for line in lines if "FORGED" in line]
    assert len(mentions) >= 2, text  # the nack line and the ack line, each one line
    assert all(line.startswith("20") and "tidings." in line for line in mentions)


def test_json_log_lines_hold_one_record_whatever_a_client_sent() -> None:
    hostile = "v1\r\nFORGED\x1b[2J\u2028\u2029\x85\"'"
    record = logging.LogRecord(
        "tidings.test", logging.INFO, __file__, 1, "nack for %s", (hostile,), None
    )
    record.message_id = hostile
    line = JsonFormatter().format(record)
    for separator in ("\n", "\r", "\x1b", "\u2028", "\u2029", "\x85"):
        assert separator not in line
    document = json.loads(line)
    assert document["message"] == f"nack for {hostile}"  # structured: nothing lost
    assert document["message_id"] == hostile
