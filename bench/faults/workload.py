"""The load of a campaign: user agents that move between nodes, and senders, all recorded.

Most user agents speak Firefox's WebSocket protocol (`Agent`), some RFC 8030 over
HTTP/2 with the project's own client (`Rfc8030Agent`: a subscription set monitored by
server push, DELETE to acknowledge), all with real keys. Each connects to a random node,
acknowledges what it decrypts, and on any failure reconnects to another random node;
it also moves on its own after a random 5 to 30 seconds on one connection.
Senders POST encrypted pushes to random nodes (any node accepts any endpoint: the token
is the same everywhere), some with a Topic, some with TTL 0, some deleted again by the
sender, some asking for a receipt (`Prefer: respond-async`, all on one receipt
subscription whose receipts a monitor records). Each message's body carries its own id,
so the history says exactly which message reached which user agent when, through which
node.
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

from tidings.sender.receipts import Receipt, ReceiptMonitor
from tidings.useragent.rfc8030 import Http2Connection, Http2Transport
from tidings.useragent.transport import ConnectionClosed, Delivery
from tidings.webpush import b64url_decode, b64url_encode, decrypt, encrypt, public_key_bytes
from tidings.webpush.links import REL_RECEIPT, link_target


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


def stay_for(rng: random.Random) -> float:
    """Seconds a user agent stays on one connection before it moves to another node."""
    return rng.uniform(5.0, 30.0)


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
        moving_at = time.monotonic() + stay_for(self.rng)
        while not self.stopping and time.monotonic() < moving_at:
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
                version=frame.get("version"), node=self.connected_to,
            )  # fmt: skip
            update = {"channelID": frame["channelID"], "version": frame["version"], "code": 100}
            await ws.send(json.dumps({"messageType": "ack", "updates": [update]}))
            self.history.add("acked", agent=self.name, id=message_id)


def message_id_of(body: bytes, channel: Channel) -> str:
    """The campaign's id a pushed body carries (raises if it does not decrypt)."""
    return str(json.loads(decrypt(body, channel.private_key, channel.auth))["id"])


class Rfc8030Agent:
    """One RFC 8030 user agent: a subscription set, monitored on one node at a time."""

    def __init__(self, name: str, origins: list[str], history: History, rng: random.Random) -> None:
        self.name = name
        self.origins = origins
        self.history = history
        self.rng = rng
        self.uaid: str | None = None  # the subscription set URL (path)
        self.channels: dict[str, Channel] = {}  # by subscription id (its path)
        self._by_path: dict[str, Channel] = {}  # subscription and push resource paths
        self.stopping = False
        self.connected_to: str | None = None

    def _transport(self, origin: str) -> Http2Transport:
        return Http2Transport(origin, ping_interval=2, ping_timeout=4, request_timeout=8)

    async def setup(self, channels: int) -> None:
        """Subscribe `channels` times into one set, retrying nodes until it works."""
        while True:
            origin = self.rng.choice(self.origins)
            connection: Http2Connection | None = None
            try:
                connection = await self._transport(origin).connect(self._set(origin), [])
                while len(self.channels) < channels:
                    made = await connection.subscribe(str(uuid.uuid4()), None)
                    channel = Channel(
                        urlsplit(made.handle).path,
                        urlsplit(made.endpoint).path,
                        ec.generate_private_key(ec.SECP256R1()),
                        os.urandom(16),
                    )
                    self.channels[channel.channel_id] = channel
                    self._by_path[channel.channel_id] = channel
                    self._by_path[channel.endpoint_path] = channel
                    self.uaid = urlsplit(connection.session_id).path
                return
            except (ConnectionClosed, OSError, TimeoutError, RuntimeError):
                await asyncio.sleep(0.5)
            finally:
                if connection is not None:
                    await connection.close()

    def _set(self, origin: str) -> str | None:
        return None if self.uaid is None else origin + self.uaid

    async def run(self) -> None:
        """Monitor the set, moving to another node whenever the connection fails."""
        while not self.stopping:
            origin = self.rng.choice(self.origins)
            connection: Http2Connection | None = None
            try:
                connection = await self._transport(origin).connect(self._set(origin), [])
                self.connected_to = origin
                self.history.add("connected", agent=self.name, node=origin)
                await self._receive(connection)
            except (ConnectionClosed, OSError, TimeoutError):
                pass
            finally:
                self.connected_to = None
                if connection is not None:
                    await connection.close()
            await asyncio.sleep(self.rng.uniform(0.1, 0.6))

    async def _receive(self, connection: Http2Connection) -> None:
        # Acknowledgements go out in order from a task of their own: awaiting each DELETE
        # here would stamp the next delivery with the time its predecessor's answer came
        # (a node cut off from Redis holds the DELETE), not when the push arrived.
        acks: asyncio.Queue[tuple[str, str | None]] = asyncio.Queue()
        acking = asyncio.create_task(self._acknowledge(connection, acks))
        try:
            await self._read_deliveries(connection, acks, acking)
        finally:
            acking.cancel()
            await asyncio.gather(acking, return_exceptions=True)

    async def _read_deliveries(
        self,
        connection: Http2Connection,
        acks: asyncio.Queue[tuple[str, str | None]],
        acking: asyncio.Task[None],
    ) -> None:
        moving_at = time.monotonic() + stay_for(self.rng)
        while not self.stopping and time.monotonic() < moving_at:
            if acking.done():
                acking.result()  # its failure ends the connection, as a failed read does
            try:
                async with asyncio.timeout(1.0):
                    event = await connection.next_event()
            except TimeoutError:
                continue
            if not isinstance(event, Delivery):
                continue
            channel = self._by_path.get(urlsplit(event.handle).path)
            message_id = None
            if channel is not None:
                try:
                    message_id = message_id_of(event.body, channel)
                except Exception as exc:  # recorded: a wrong body is a violation
                    self.history.add("undecryptable", agent=self.name, error=str(exc))
            self.history.add(
                "delivered", agent=self.name, channel=channel and channel.channel_id,
                id=message_id, version=urlsplit(event.message_id).path, node=self.connected_to,
            )  # fmt: skip
            acks.put_nowait((event.message_id, message_id))

    async def _acknowledge(
        self, connection: Http2Connection, acks: asyncio.Queue[tuple[str, str | None]]
    ) -> None:
        while True:
            url, message_id = await acks.get()
            # The DELETE's answer decides whether the service took the acknowledgement (a
            # 503 leaves the message stored); `acknowledge` does not return it.
            _, answer = await connection._request("DELETE", url)
            if 200 <= answer.status < 300:
                self.history.add("acked", agent=self.name, id=message_id)


class Senders:
    """Pushes at a steady pace to random subscriptions through random nodes."""

    def __init__(
        self,
        agents: list[Agent | Rfc8030Agent],
        origins: list[str],
        history: History,
        rng: random.Random,
        receipt_share: float = 0.1,
    ) -> None:
        self.agents = agents
        self.origins = origins
        self.history = history
        self.rng = rng
        self.receipt_share = receipt_share
        self.next_id = 0
        self.stopping = False
        self.receipts: ReceiptMonitor | None = None  # one receipt subscription for all
        self._receipt_queue: asyncio.Queue[Receipt | Exception | None] = asyncio.Queue()
        self._receipt_task: asyncio.Task[None] | None = None

    def _follow_receipts(self, url: str) -> None:
        """Monitor the receipt subscription (made by the first push that asked for one)."""
        if self.receipts is not None:
            return
        self.receipts = ReceiptMonitor(url, retry_delay=0.25, max_retry_delay=2.0)
        # Pushes answered before this one made receipt subscriptions of their own, which
        # nobody monitors: the checker holds to receipts only those naming this one.
        self.history.add("receipts-monitored", subscription=urlsplit(url).path)
        self.receipts.attach(self._receipt_queue)
        self._receipt_task = asyncio.create_task(self._record_receipts())

    async def _record_receipts(self) -> None:
        while True:
            receipt = await self._receipt_queue.get()
            if receipt is None:
                return
            if isinstance(receipt, Receipt):
                path = urlsplit(receipt.message_url).path
                self.history.add("receipt", path=path, status=receipt.status)

    async def close(self) -> None:
        if self.receipts is not None:
            await self.receipts.close()
        if self._receipt_task is not None:
            await self._receipt_task

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
        receipt = ttl > 0 and rng.random() < self.receipt_share
        body = encrypt(json.dumps({"id": message_id}).encode(), channel.p256dh, channel.auth)
        headers = {"TTL": str(ttl), "Content-Encoding": "aes128gcm"}
        if topic:
            headers["Topic"] = topic
        if receipt:
            headers["Prefer"] = "respond-async"
            if self.receipts is not None:
                headers["Link"] = f'<{self.receipts.url}>; rel="{REL_RECEIPT}"'
        origin = rng.choice(self.origins)
        self.history.add(
            "push", id=message_id, agent=agent.name, uaid=agent.uaid, channel=channel.channel_id,
            ttl=ttl, topic=topic, node=origin, receipt=receipt,
        )  # fmt: skip
        try:
            answer = await client.post(
                origin + channel.endpoint_path, content=body, headers=headers
            )
        except httpx.HTTPError as exc:
            self.history.add("push-failed", id=message_id, error=type(exc).__name__)
            return
        location = answer.headers.get("location")
        subscription = link_target(answer.headers.get("link", ""), REL_RECEIPT)
        self.history.add(
            "answer",
            id=message_id,
            status=answer.status_code,
            location=location and urlsplit(location).path,
            receipts=subscription and urlsplit(subscription).path,
        )
        if answer.status_code == 202 and subscription:
            self._follow_receipts(subscription)
        if answer.status_code in (201, 202) and ttl > 0 and rng.random() < 0.05:
            await asyncio.sleep(rng.uniform(0, 0.05))
            location = answer.headers.get("location")
            if location:
                target = rng.choice(self.origins) + urlsplit(location).path
                try:
                    deleted = await client.delete(target)
                except httpx.HTTPError:  # no answer: it may have been deleted or not
                    self.history.add("deleted", id=message_id, status=None)
                    return
                self.history.add("deleted", id=message_id, status=deleted.status_code)


def keys_of(channel: Channel) -> dict[str, str]:
    return {"p256dh": b64url_encode(channel.p256dh), "auth": b64url_encode(channel.auth)}
