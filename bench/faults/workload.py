"""The load of a campaign: user agents that move between nodes, and senders, all recorded.

Every user agent speaks Firefox's WebSocket protocol with real keys. It connects to a
random node, says hello with its uaid, acknowledges what it decrypts, and on any failure
reconnects to another random node. Senders POST encrypted pushes to random nodes (any
node accepts any endpoint: the token is the same everywhere), some with a Topic, some
with TTL 0, some deleted again by the sender. Each message's body carries its own id, so
the history says exactly which message reached which user agent when.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
import websockets
from cryptography.hazmat.primitives.asymmetric import ec

from tidings.webpush import b64url_decode, b64url_encode, decrypt, encrypt, public_key_bytes


@dataclass
class History:
    """Every request, answer, delivery and acknowledgement, in order, with times."""

    events: list[dict[str, Any]] = field(default_factory=list)

    def add(self, kind: str, **fields: Any) -> None:
        self.events.append({"kind": kind, "t": time.time(), **fields})

    def dump(self, path: str) -> None:
        with open(path, "w") as out:
            for event in self.events:
                out.write(json.dumps(event) + "\n")


@dataclass
class Channel:
    channel_id: str
    endpoint_path: str
    private_key: ec.EllipticCurvePrivateKey
    auth: bytes

    @property
    def p256dh(self) -> bytes:
        return public_key_bytes(self.private_key.public_key())


class Agent:
    """One user agent: a uaid, a few channels, one connection at a time."""

    def __init__(self, name: str, origins: list[str], history: History, rng: random.Random) -> None:
        self.name = name
        self.origins = origins
        self.history = history
        self.rng = rng
        self.uaid: str | None = None
        self.channels: dict[str, Channel] = {}
        self.stopping = False
        self.connected_to: str | None = None

    async def setup(self, channels: int) -> None:
        """Hello and register `channels` subscriptions, retrying nodes until it works."""
        while True:
            origin = self.rng.choice(self.origins)
            try:
                async with self._connect(origin) as ws:
                    await self._hello(ws)
                    while len(self.channels) < channels:
                        channel_id = str(uuid.uuid4())
                        await ws.send(
                            json.dumps({"messageType": "register", "channelID": channel_id})
                        )
                        reply = await self._expect(ws, "register")
                        if reply.get("status") != 200:
                            raise RuntimeError(f"register refused: {reply}")
                        path = urlsplit(reply["pushEndpoint"]).path
                        self.channels[channel_id] = Channel(
                            channel_id,
                            path,
                            ec.generate_private_key(ec.SECP256R1()),
                            os.urandom(16),
                        )
                return
            except (OSError, websockets.WebSocketException, TimeoutError, RuntimeError):
                await asyncio.sleep(0.5)

    def _connect(self, origin: str) -> Any:
        url = "ws" + origin.removeprefix("http") + "/"
        return websockets.connect(
            url, open_timeout=5, close_timeout=1, ping_interval=2, ping_timeout=4, max_size=1 << 20
        )

    async def _hello(self, ws: Any) -> None:
        message: dict[str, Any] = {"messageType": "hello", "broadcasts": {}, "use_webpush": True}
        if self.uaid:
            message["uaid"] = self.uaid
        await ws.send(json.dumps(message))
        reply = await self._expect(ws, "hello")
        if self.uaid and reply["uaid"] != self.uaid:
            self.history.add("forgotten", agent=self.name, old=self.uaid, new=reply["uaid"])
        self.uaid = reply["uaid"]

    async def _expect(self, ws: Any, kind: str) -> dict[str, Any]:
        async with asyncio.timeout(10):
            while True:
                frame = json.loads(await ws.recv())
                if frame.get("messageType") == kind:
                    return dict(frame)

    async def run(self) -> None:
        """Stay connected, moving to another node whenever the connection fails."""
        while not self.stopping:
            origin = self.rng.choice(self.origins)
            try:
                async with self._connect(origin) as ws:
                    await self._hello(ws)
                    self.connected_to = origin
                    self.history.add("connected", agent=self.name, node=origin)
                    await self._receive(ws)
            except (OSError, websockets.WebSocketException, TimeoutError, ValueError, KeyError):
                pass
            finally:
                self.connected_to = None
            await asyncio.sleep(self.rng.uniform(0.1, 0.6))

    async def _receive(self, ws: Any) -> None:
        while not self.stopping:
            try:
                async with asyncio.timeout(1.0):
                    text = await ws.recv()
            except TimeoutError:
                continue
            frame = json.loads(text)
            if frame.get("messageType") != "notification":
                continue
            channel = self.channels.get(frame.get("channelID", ""))
            message_id = None
            if channel is not None and "data" in frame:
                try:
                    plain = decrypt(b64url_decode(frame["data"]), channel.private_key, channel.auth)
                    message_id = json.loads(plain)["id"]
                except Exception as exc:  # recorded: a wrong body is a violation
                    self.history.add("undecryptable", agent=self.name, error=str(exc))
            self.history.add(
                "delivered", agent=self.name, channel=frame.get("channelID"), id=message_id,
                version=frame.get("version"),
            )  # fmt: skip
            update = {"channelID": frame["channelID"], "version": frame["version"], "code": 100}
            await ws.send(json.dumps({"messageType": "ack", "updates": [update]}))
            self.history.add("acked", agent=self.name, id=message_id)


class Senders:
    """Pushes at a steady pace to random subscriptions through random nodes."""

    def __init__(
        self, agents: list[Agent], origins: list[str], history: History, rng: random.Random
    ) -> None:
        self.agents = agents
        self.origins = origins
        self.history = history
        self.rng = rng
        self.next_id = 0
        self.stopping = False

    async def run(self, rate: float, concurrency: int = 8) -> None:
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=16)
        async with httpx.AsyncClient(timeout=httpx.Timeout(8.0), limits=limits) as client:
            pending: set[asyncio.Task[None]] = set()
            while not self.stopping:
                if len(pending) < concurrency * 4:
                    task = asyncio.create_task(self._push(client))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                await asyncio.sleep(1 / rate)
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)

    async def _push(self, client: httpx.AsyncClient) -> None:
        rng = self.rng
        agent = rng.choice(self.agents)
        channel = rng.choice(list(agent.channels.values()))
        self.next_id += 1
        message_id = f"m{self.next_id}"
        roll = rng.random()
        ttl = 0 if roll < 0.05 else (4 if roll < 0.15 else 600)
        topic = f"t{rng.randrange(3)}" if rng.random() < 0.15 else None
        body = encrypt(json.dumps({"id": message_id}).encode(), channel.p256dh, channel.auth)
        headers = {"TTL": str(ttl), "Content-Encoding": "aes128gcm"}
        if topic:
            headers["Topic"] = topic
        origin = rng.choice(self.origins)
        self.history.add(
            "push", id=message_id, agent=agent.name, uaid=agent.uaid, channel=channel.channel_id,
            ttl=ttl, topic=topic, node=origin,
        )  # fmt: skip
        try:
            answer = await client.post(
                origin + channel.endpoint_path, content=body, headers=headers
            )
        except httpx.HTTPError as exc:
            self.history.add("push-failed", id=message_id, error=type(exc).__name__)
            return
        self.history.add(
            "answer",
            id=message_id,
            status=answer.status_code,
            location=answer.headers.get("location"),
        )
        if answer.status_code in (201, 202) and ttl > 0 and rng.random() < 0.05:
            await asyncio.sleep(rng.uniform(0, 0.05))
            location = answer.headers.get("location")
            if location:
                target = rng.choice(self.origins) + urlsplit(location).path
                try:
                    deleted = await client.delete(target)
                except httpx.HTTPError:
                    return
                self.history.add("deleted", id=message_id, status=deleted.status_code)


def keys_of(channel: Channel) -> dict[str, str]:
    return {"p256dh": b64url_encode(channel.p256dh), "auth": b64url_encode(channel.auth)}
