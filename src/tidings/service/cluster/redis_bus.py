"""The Redis cluster bus: presence of user agents, and messages between nodes.

Over 500 lines: one bus class; presence, routing and the listener share its Redis connections.

Presence: `<prefix>ua:<uaid>` holds "<stamp>|<node id>" with an expiry, where the
stamp is when that connection said hello (milliseconds). A node claims a user agent
when it connects, refreshes its claims by heartbeat, and releases them when the
connection ends. A claim never overwrites a newer one from another node, and a
release deletes only the node's own entry, so a node that still believes it holds a
user agent that has moved on (its old connection not yet noticed dead) cannot win.

Delivery: each node subscribes to `<prefix>node:<id>`. Routing is one script call for
all the messages routed together (`Batcher`: those of one step of the event loop, then
those queued while that call was under way): it reads each one's presence entry and
PUBLISHes to each holding node, once, the messages for it as a JSON array; zero
receivers means the node is gone and the message simply waits in the store. A push is
answered once its route is published, so that a DELETE sent after the answer (to any
node) reaches the holder behind the message. Pub/sub rather than streams: the store is
the durable copy, so the bus only needs to be fast (measured in docs/scaling.md).

Live offers (live_acks.py across nodes): a push that its ack may answer unstored is
offered to the holding node first, as a `LiveOffer` in the same script call and queue
as routes; the holder answers (`OfferAnswer`) on this node's channel, the answers of
one step of its loop in one PUBLISH per node. No answer within the wait plus
OFFER_MARGIN (the holder gone, an old node that drops the unknown kind, the bus slow)
and the push is stored and routed as any other.

Failure: whenever this node (re)subscribes it re-claims every user agent it holds and
re-offers their stored messages (Redis restarted, or the subscription dropped);
pushes that could not be routed while Redis was away are remembered and their holders
poked once it is back. Nothing here is needed for a message to survive.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from tidings.service.cluster import LIVE_FORGET_BATCH, OfferTaker, Redeliver
from tidings.service.cluster.batch import Batcher, Publisher, ScriptCaller
from tidings.service.cluster.wire import (
    MAX_BUS_BATCH,
    MAX_BUS_MESSAGE,
    BadBusMessage,
    BroadcastsChanged,
    BusEvent,
    Deliver,
    LiveOffer,
    OfferAnswer,
    Poke,
    PokeAll,
    ReceiptsQueued,
    Superseded,
    Withdrawn,
    decode_bus_messages,
    encode_broadcasts_changed,
    encode_message,
    encode_offer,
    encode_offer_answer,
    encode_poke,
    encode_poke_all,
    encode_receipts_queued,
    encode_superseded,
    encode_withdrawn,
)
from tidings.service.hub import ConnectedAgent, Hub
from tidings.service.logs import escape
from tidings.service.store import StoredMessage
from tidings.service.ws_protocol import CLOSE_REPLACED

log = logging.getLogger("tidings.cluster")

DEFAULT_PREFIX = "tidings:"
HEARTBEAT = 10.0  # seconds between presence refreshes
PRESENCE_TTL = 35  # seconds a claim lives without a refresh (a dead node's claims go)
CLAIM_BATCH = 500  # user agents per claim script call
MAX_MISSED = 10_000  # user agents remembered for a poke; past it, everyone is poked
REDELIVER_CONCURRENCY = 16
# A message that reaches this node over the bus later than this after it was accepted
# (this node, its link to Redis or Redis stalled: a pause, a black hole) is not trusted
# as live: a DELETE or a newer push of its Topic may have come since, and its notice
# may be right behind it. The store says whether it still stands. (Nodes' clocks must
# agree to well within this, as NTP keeps them.)
BUS_LATE = 1.0
# After a claim, stored messages this much older than the hello are not offered again:
# the connection's own first read of the store already had them (margin for clocks and
# for a push accepted just before the hello but committed just after that read).
CLAIM_REDELIVERY_WINDOW = 5.0
# A shared live receipt's key outlives the wait for its acknowledgement (LIVE_ACK_WAIT).
LIVE_KEY_TTL = 120
# Receipt notices being published at once; past it (Redis slow) a notice is skipped and
# the monitors' polls find its receipt, so a burst of receipts cannot pile up tasks.
MAX_NOTICES_IN_FLIGHT = 256

# KEYS: presence keys; ARGV: node, ttl, then one stamp per key.
_CLAIM = """
local taken = 0
for i, key in ipairs(KEYS) do
  local stamp = ARGV[2 + i]
  local current = redis.call('GET', key)
  local take = true
  if current then
    local sep = string.find(current, '|', 1, true)
    if sep and string.sub(current, sep + 1) ~= ARGV[1]
       and tonumber(string.sub(current, 1, sep - 1)) > tonumber(stamp) then
      take = false
    end
  end
  if take then
    redis.call('SET', key, stamp .. '|' .. ARGV[1], 'EX', ARGV[2])
    taken = taken + 1
  end
end
return taken
"""

# One claim (a hello): KEYS: presence key; ARGV: node, ttl, stamp. Returns the node that
# held the user agent before, when it was another one now superseded, else "".
_CLAIM_ONE = """
local current = redis.call('GET', KEYS[1])
local previous = ''
if current then
  local sep = string.find(current, '|', 1, true)
  if sep then
    local node = string.sub(current, sep + 1)
    if node ~= ARGV[1] then
      if tonumber(string.sub(current, 1, sep - 1)) > tonumber(ARGV[3]) then return '' end
      previous = node
    end
  end
end
redis.call('SET', KEYS[1], ARGV[3] .. '|' .. ARGV[1], 'EX', ARGV[2])
return previous
"""

# KEYS: presence key; ARGV: the value this node wrote.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS: presence keys; ARGV: this node, channel prefix, the largest payload to PUBLISH,
# then one message per key. Each other node's messages go to it in one PUBLISH, as a
# JSON array in their order (a lone message as itself; past the size, in several).
# Returns per key -2 (nobody holds it), -1 (this node does), else the receiver count.
_ROUTE_MANY = """
local results, batches = {}, {}
local limit = tonumber(ARGV[3])
local function publish(node, batch)
  local payload = batch.payloads[1]
  if #batch.payloads > 1 then payload = '[' .. table.concat(batch.payloads, ',') .. ']' end
  local receivers = redis.call('PUBLISH', ARGV[2] .. node, payload)
  for _, i in ipairs(batch.members) do results[i] = receivers end
  batches[node] = nil
end
for i, key in ipairs(KEYS) do
  local current = redis.call('GET', key)
  local sep = current and string.find(current, '|', 1, true)
  local node = sep and string.sub(current, sep + 1)
  if not node then
    results[i] = -2
  elseif node == ARGV[1] then
    results[i] = -1
  else
    local message = ARGV[3 + i]
    local batch = batches[node]
    if batch and batch.size + #message + 1 > limit then
      publish(node, batch)
      batch = nil
    end
    if not batch then
      batch = {payloads = {}, members = {}, size = 2}
      batches[node] = batch
    end
    table.insert(batch.payloads, message)
    table.insert(batch.members, i)
    batch.size = batch.size + #message + 1
  end
end
for node, batch in pairs(batches) do publish(node, batch) end
return results
"""
ROUTE_BATCH = 256  # messages per route script call at most (Redis runs a script alone)
# Routes waiting for Redis at most (it is slow or away): past this the holders are poked
# instead, once it answers, as when it is down; the queue's memory stays bounded.
MAX_QUEUED_ROUTES = 10_000

# A live offer waits for its answer this much longer than the holder waits for the ack
# (the bus's two hops and both loops' turns); no answer by then: it is stored.
OFFER_MARGIN = 0.05
# Live offers of this node awaiting their answer at once; past it pushes are stored first.
MAX_PENDING_OFFERS = 10_000
# A user agent that no node held when a push was offered or routed is not offered the
# next pushes for this long (seconds; they are stored first, as before live offers):
# a push to a user agent connected nowhere pays the offer's round trip, and the check
# before it, once in that time, not each time. Remembered for this many at most.
NOT_HELD_FOR = 5.0
MAX_NOT_HELD = 10_000
# Answers to other nodes' offers queued for the next PUBLISH; past it an answer is
# dropped (its push is stored by the node that waits for it in vain: never lost).
MAX_PENDING_ANSWERS = 10_000

# KEYS: presence key; ARGV: this node, channel prefix, payload.
# Returns -2 (nobody holds it), -1 (this node does), else PUBLISH's receiver count.
_ROUTE = """
local current = redis.call('GET', KEYS[1])
if not current then return -2 end
local sep = string.find(current, '|', 1, true)
if not sep then return -2 end
local node = string.sub(current, sep + 1)
if node == ARGV[1] then return -1 end
return redis.call('PUBLISH', ARGV[2] .. node, ARGV[3])
"""


def _unanswered(answer: asyncio.Future[Any]) -> None:
    if not answer.done():
        answer.set_result(None)


def default_node_id() -> str:
    """host-pid-random: unique per process, readable in logs."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"


def split_url(url: str) -> tuple[str, str]:
    """(Redis URL for the client, key prefix) from `redis://host/0?prefix=name:`."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query)
    prefix = next((v for k, v in query if k == "prefix"), DEFAULT_PREFIX)
    rest = urlencode([(k, v) for k, v in query if k != "prefix"])
    return urlunsplit(parts._replace(query=rest)), prefix


class ClusterHub(Hub):
    """A hub that tells the bus when a user agent connects to or leaves this node."""

    def __init__(self, bus: RedisBus) -> None:
        super().__init__()
        self._bus = bus

    def attach(self, uaid: str, agent: ConnectedAgent) -> None:
        super().attach(uaid, agent)
        self._bus.claim(uaid)

    def detach(self, uaid: str, agent: ConnectedAgent) -> None:
        super().detach(uaid, agent)
        if not self.is_connected(uaid):
            self._bus.release(uaid)


class RedisBus:
    """`ClusterBus` over Redis: presence keys with expiry, a pub/sub channel per node."""

    def __init__(
        self,
        url: str,
        *,
        node_id: str | None = None,
        heartbeat: float = HEARTBEAT,
        presence_ttl: int = PRESENCE_TTL,
        timeout: float = 2.0,
    ) -> None:
        self.url, self.prefix = split_url(url)
        self.node_id = node_id or default_node_id()
        self.channel = f"{self.prefix}node:{self.node_id}"
        self._heartbeat = heartbeat
        self._ttl = presence_ttl
        no_retry = Retry(NoBackoff(), 0)  # failures are handled here, not hidden
        # A burst of hellos (a node restarting, thousands reconnecting) waits for one of
        # the 64 connections instead of failing with "Too many connections".
        pool = aioredis.BlockingConnectionPool.from_url(
            self.url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=no_retry,
            max_connections=64,
            timeout=timeout,
        )
        self._redis = aioredis.Redis(connection_pool=pool)
        self._shared_live: set[str] = set()  # message ids of this node's live receipts
        self._notices = 0  # receipt notices being published (MAX_NOTICES_IN_FLIGHT)
        self.notices_skipped = 0  # left to the monitors' polls (Redis slow or down)
        # The subscriber blocks reading, so it has no read timeout of its own.
        self._subscriber = aioredis.from_url(
            self.url,
            socket_connect_timeout=timeout,
            socket_keepalive=True,
            retry=no_retry,
            client_name=f"tidings-bus-{self.node_id}"[:100],
        )
        self._claim_script = self._redis.register_script(_CLAIM)
        self._claim_one_script = self._redis.register_script(_CLAIM_ONE)
        self._release_script = self._redis.register_script(_RELEASE)
        self._route_script = self._redis.register_script(_ROUTE)
        self._route_many_script = ScriptCaller(self._redis, _ROUTE_MANY)  # the Batcher's
        # Routes and withdrawals share one queue: a withdrawal never overtakes its message.
        self._routes: Batcher[tuple[str, str], int] = Batcher(self._route_many, ROUTE_BATCH)
        self._hub = ClusterHub(self)
        # uaid -> the stamp this node claimed it with (an int: 32 bytes a user agent, not 62)
        self._stamps: dict[str, int] = {}
        self._last_stamp = 0
        self._missed: set[str] = set()
        self._missed_all = False
        # User agents whose stored messages are being read again after a late bus
        # message; True: read once more when done (more came meanwhile).
        self._rereading: dict[str, bool] = {}
        self._down_until = 0.0  # after a failure, routes skip Redis for a moment
        self.on_broadcasts: Callable[[], None] | None = None  # broadcasts changed
        self.offer_taker: OfferTaker | None = None  # the service's (live_offers.py)
        # This node's live offers awaiting their answer: message id -> (offered, code),
        # or None when the wait ran out.
        self._offers: dict[str, asyncio.Future[tuple[bool, int | None] | None]] = {}
        self._answers: dict[str, list[str]] = {}  # node -> answers to publish
        self._not_held: OrderedDict[str, float] = OrderedDict()  # uaid -> until (monotonic)
        self._answers_queued = 0
        self._answerer: asyncio.Task[None] | None = None
        self._publish = Publisher(self._redis)  # the answers' (one batch at a time)
        self.offers_unanswered = 0  # offers whose answer did not come in time
        self.answers_dropped = 0  # answers past MAX_PENDING_ANSWERS or not published
        self._subscribed = False
        self.dropped = 0  # bad bus messages logged and dropped
        self.restarts = 0  # times the listener lost its subscription and started again
        self.late = 0  # messages that came over the bus after BUS_LATE: read from the store
        self._redeliver: Redeliver | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loops: list[asyncio.Task[None]] = []
        self._started = asyncio.Event()

    offers_live = True

    @property
    def hub(self) -> Hub:
        return self._hub

    def status(self) -> str:
        return "ok" if self._subscribed and time.monotonic() >= self._down_until else "degraded"

    def _key(self, uaid: str) -> str:
        return f"{self.prefix}ua:{uaid}"

    # Life cycle -----------------------------------------------------------------------

    async def start(self, redeliver: Redeliver) -> None:
        self._redeliver = redeliver
        self._loops = [
            asyncio.create_task(self._listen(), name="tidings-cluster-listen"),
            asyncio.create_task(self._beat(), name="tidings-cluster-heartbeat"),
        ]
        # Serve even if Redis is away (delivery falls back to the store); say so.
        try:
            await asyncio.wait_for(self._started.wait(), 5)
        except TimeoutError:
            log.warning(
                "cluster: Redis at %s not reachable yet; delivering from the store", self.url
            )
        log.info("cluster: node %s on %s", self.node_id, self.url)

    async def stop(self) -> None:
        """Leave the cluster; never raises (whatever became of the loops or of Redis)."""
        for task in self._loops:
            task.cancel()
        for task in self._loops:
            try:
                await task
            except asyncio.CancelledError:
                pass
            except Exception:
                log.exception("cluster: a background loop had failed")
        self._subscribed = False
        # Release what this node holds, so pushes stop being routed here at once.
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            async with self._redis.pipeline(transaction=False) as pipe:
                for uaid, stamp in self._stamps.items():
                    await self._release_script(
                        keys=[self._key(uaid)], args=[f"{stamp}|{self.node_id}"], client=pipe
                    )
                await pipe.execute()
        await self._routes.close()
        await self._route_many_script.close()
        if self._answerer is not None:
            self._answerer.cancel()
        await self._publish.close()
        for task in list(self._tasks):
            task.cancel()
        for client in (self._redis, self._subscriber):
            with contextlib.suppress(Exception):
                await client.aclose()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _failed(self, what: str, exc: BaseException) -> None:
        if time.monotonic() >= self._down_until:
            log.warning("cluster: %s failed: %s", what, escape(str(exc) or type(exc).__name__))
        self._down_until = time.monotonic() + 1.0

    # Presence -------------------------------------------------------------------------

    def _new_stamp(self) -> int:
        stamp = max(int(time.time() * 1000), self._last_stamp + 1)
        self._last_stamp = stamp
        return stamp

    def claim(self, uaid: str) -> None:
        """A connection of `uaid` said hello here: make this node its holder."""
        self._stamps[uaid] = self._new_stamp()
        self._spawn(self._claim_now(uaid))

    def release(self, uaid: str) -> None:
        """The last connection of `uaid` here has gone."""
        stamp = self._stamps.pop(uaid, None)
        if stamp is not None:
            self._spawn(self._release_now(uaid, stamp))

    async def _claim_now(self, uaid: str) -> None:
        stamp = self._stamps.get(uaid)
        if stamp is None:
            return
        try:
            previous = await self._claim_one_script(
                keys=[self._key(uaid)], args=[self.node_id, self._ttl, stamp]
            )
            if previous:
                # The node that held it keeps the old connection until it notices it is
                # dead; meanwhile its pushes would go there. Tell it to let go now.
                node = previous.decode() if isinstance(previous, bytes) else str(previous)
                await self._redis.publish(
                    f"{self.prefix}node:{node}", encode_superseded(uaid, int(stamp))
                )
        except (RedisError, OSError) as exc:
            self._failed("claim", exc)  # the next (re)subscription claims it again
            return
        # Messages routed to the previous holder, or stored while the claim was on its
        # way, would otherwise wait for the next connection: offer them now.
        await self._redeliver_one(uaid, int(stamp) / 1000 - CLAIM_REDELIVERY_WINDOW)

    async def _let_go(self, uaid: str, stamp: int) -> None:
        """A newer connection of `uaid` said hello on another node: close ours (as a local
        newer hello would) and have that node offer what ours was sent and not acked."""
        held = self._stamps.get(uaid)
        if held is None or int(held) >= stamp:
            return  # gone already, or ours is the newer one
        for agent in self._hub.agents(uaid):
            if agent.exclusive:
                await agent.close(CLOSE_REPLACED, "another connection took over this uaid")
        try:
            await self._route_script(
                keys=[self._key(uaid)],
                args=[self.node_id, f"{self.prefix}node:", encode_poke(uaid)],
            )
        except (RedisError, OSError) as exc:
            self._failed("poke", exc)

    async def _release_now(self, uaid: str, stamp: int) -> None:
        try:
            await self._release_script(keys=[self._key(uaid)], args=[f"{stamp}|{self.node_id}"])
        except (RedisError, OSError) as exc:
            self._failed("release", exc)  # the claim expires on its own

    async def _claim_all(self) -> None:
        """Refresh (or re-create, after a Redis restart) every claim of this node."""
        held = list(self._stamps.items())
        for start in range(0, len(held), CLAIM_BATCH):
            batch = held[start : start + CLAIM_BATCH]
            await self._claim_script(
                keys=[self._key(uaid) for uaid, _ in batch],
                args=[self.node_id, self._ttl, *(stamp for _, stamp in batch)],
            )

    async def _redeliver_one(self, uaid: str, since: float = 0.0) -> None:
        if self._redeliver is not None and self._hub.is_connected(uaid):
            await self._redeliver(uaid, since)

    async def _redeliver_all(self) -> None:
        limit = asyncio.Semaphore(REDELIVER_CONCURRENCY)

        async def one(uaid: str) -> None:
            async with limit:
                await self._redeliver_one(uaid)

        await asyncio.gather(*(one(uaid) for uaid in list(self._stamps)))

    # Routing --------------------------------------------------------------------------

    async def _route_many(self, routes: list[tuple[str, str]]) -> list[int]:
        """(uaid, payload) each to its holder, in one script call: receivers for each."""
        results = await self._route_many_script(
            keys=[self._key(uaid) for uaid, _ in routes],
            args=[
                self.node_id,
                f"{self.prefix}node:",
                MAX_BUS_MESSAGE,
                *(payload for _, payload in routes),
            ],
        )
        return [int(result) for result in results]

    async def route(self, message: StoredMessage) -> bool:
        if time.monotonic() < self._down_until or len(self._routes) >= MAX_QUEUED_ROUTES:
            self._remember_missed(message.uaid)
            return False
        try:
            receivers = await self._routes.call((message.uaid, encode_message(message)))
        except (RedisError, OSError) as exc:
            self._failed("route", exc)
            self._remember_missed(message.uaid)
            return False
        if receivers == -2 and self.offers_live:
            self._note_not_held(message.uaid)
        return receivers > 0

    def may_hold(self, uaid: str) -> bool:
        not_held = self._not_held
        if not not_held:
            return True
        until = not_held.get(uaid)
        if until is None:
            return True
        if time.monotonic() < until:
            return False
        del not_held[uaid]
        return True

    def _note_not_held(self, uaid: str) -> None:
        """No node held `uaid` a moment ago: `may_hold` says so for NOT_HELD_FOR."""
        not_held = self._not_held
        not_held[uaid] = time.monotonic() + NOT_HELD_FOR
        not_held.move_to_end(uaid)
        if len(not_held) > MAX_NOT_HELD:
            not_held.popitem(last=False)

    async def offer_live(self, message: StoredMessage, wait: float) -> int | None:
        message_id = message.message_id
        if (
            not self._subscribed  # an answer could not reach this node
            or time.monotonic() < self._down_until
            or len(self._offers) >= MAX_PENDING_OFFERS
            or len(self._routes) >= MAX_QUEUED_ROUTES
            or message_id in self._offers
        ):
            return None
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[tuple[bool, int | None] | None] = loop.create_future()
        self._offers[message_id] = answer
        try:
            payload = encode_offer(message, self.node_id, wait)
            receivers = await self._routes.call((message.uaid, payload))
            if receivers <= 0:
                if receivers == -2:
                    self._note_not_held(message.uaid)
                return None  # nobody holds it, this node does, or its holder is gone
            timer = loop.call_later(wait + OFFER_MARGIN, _unanswered, answer)
            try:
                answered = await answer
            finally:
                timer.cancel()
        except (RedisError, OSError) as exc:
            self._failed("live offer", exc)
            return None
        finally:
            del self._offers[message_id]
        if answered is None:
            self.offers_unanswered += 1
            return None
        return answered[1]

    def _answer_offer(self, node: str, message_id: str, offered: bool, code: int | None) -> None:
        """Queue the answer to node `node`'s live offer; published with the others of
        this step of the loop, one PUBLISH per node."""
        if self._answers_queued >= MAX_PENDING_ANSWERS:
            self.answers_dropped += 1
            return
        self._answers.setdefault(node, []).append(encode_offer_answer(message_id, offered, code))
        self._answers_queued += 1
        if self._answerer is None:
            self._answerer = asyncio.ensure_future(self._publish_answers())

    async def _publish_answers(self) -> None:
        try:
            while self._answers:
                answers, self._answers = self._answers, {}
                count, self._answers_queued = self._answers_queued, 0
                messages = []
                for node, payloads in answers.items():
                    for start in range(0, len(payloads), MAX_BUS_BATCH):
                        batch = payloads[start : start + MAX_BUS_BATCH]
                        payload = batch[0] if len(batch) == 1 else f"[{','.join(batch)}]"
                        messages.append((f"{self.prefix}node:{node}", payload))
                try:
                    await self._publish(messages)
                except (RedisError, OSError) as exc:
                    self.answers_dropped += count  # their pushes are stored: never lost
                    self._failed("offer answers", exc)
        finally:
            self._answerer = None

    async def withdraw(self, uaid: str, message_id: str) -> bool:
        """Tell the node holding `uaid` that its sender deleted the message; False if
        Redis could not be asked (a copy held there may still go out)."""
        if time.monotonic() < self._down_until:
            return False  # the bus is down
        try:
            await self._routes.call((uaid, encode_withdrawn(uaid, message_id)))
        except (RedisError, OSError) as exc:
            self._failed("withdraw", exc)
            return False
        return True

    # Receipts of TTL-0 messages sent live: `<prefix>live:<message id>` = receipt id, so
    # that the acknowledgement may come to any node. Whoever deletes the key first (a
    # DELETE elsewhere, or this node's own ack or give-up) sends the one receipt. The
    # expiry bounds what Redis holds; this node's table stays bounded as before. Given
    # up together (a node stopping), the keys are deleted by a pipeline of DELs, one per
    # key: its replies say which keys this node deleted, where one DEL of many keys would
    # only count them.

    async def share_live_receipt(self, message_id: str, receipt_id: str) -> None:
        if time.monotonic() < self._down_until:
            return  # acknowledged here only, as without a cluster
        try:
            await self._redis.set(f"{self.prefix}live:{message_id}", receipt_id, ex=LIVE_KEY_TTL)
        except (RedisError, OSError) as exc:
            self._failed("live receipt", exc)
            return
        self._shared_live.add(message_id)  # bounded by the service's table: each is forgotten

    async def take_live_receipt(self, message_id: str) -> str | None:
        try:
            taken = await self._redis.getdel(f"{self.prefix}live:{message_id}")
        except (RedisError, OSError) as exc:
            self._failed("live receipt", exc)
            return None
        return None if taken is None else taken.decode() if isinstance(taken, bytes) else taken

    async def forget_live_receipt(self, message_id: str) -> bool:
        (ours,) = await self.forget_live_receipts([message_id])
        return ours

    async def forget_live_receipts(self, message_ids: Sequence[str]) -> list[bool]:
        # True where never shared (Redis was down): only this node knows it.
        ours = [True] * len(message_ids)
        shared = [(i, m) for i, m in enumerate(message_ids) if m in self._shared_live]
        self._shared_live.difference_update(m for _, m in shared)
        for start in range(0, len(shared), LIVE_FORGET_BATCH):
            batch = shared[start : start + LIVE_FORGET_BATCH]
            try:
                # Not retried (no_retry): a DEL run twice would say another node took it.
                async with self._redis.pipeline(transaction=False) as pipe:
                    for _, message_id in batch:
                        pipe.delete(f"{self.prefix}live:{message_id}")
                    deleted = await pipe.execute()
            except (RedisError, OSError) as exc:
                self._failed("live receipt", exc)
                continue  # not known to be claimed: this node's receipts go
            for (index, _), count in zip(batch, deleted, strict=True):
                ours[index] = bool(count)
        return ours

    def announce_receipt(self, receipt_id: str) -> None:
        """Wake the monitors of `receipt_id` on every other node (they poll slowly when
        many are open): one PUBLISH per receipt, not awaited."""
        if time.monotonic() < self._down_until or self._notices >= MAX_NOTICES_IN_FLIGHT:
            self.notices_skipped += 1
            return  # their polls find it
        payload = encode_receipts_queued(receipt_id, self.node_id)
        self._notices += 1
        self._spawn(self._publish_notice(payload))

    async def _publish_notice(self, payload: str) -> None:
        try:
            await self._redis.publish(f"{self.prefix}all", payload)
        except (RedisError, OSError) as exc:
            self._failed("receipt notice", exc)
        finally:
            self._notices -= 1

    async def announce_broadcasts(self) -> None:
        """Every node re-reads the broadcasts now (else at its next broadcast_poll)."""
        try:
            await self._redis.publish(f"{self.prefix}all", encode_broadcasts_changed())
        except (RedisError, OSError) as exc:
            self._failed("broadcast announcement", exc)

    def _remember_missed(self, uaid: str) -> None:
        if len(self._missed) < MAX_MISSED:
            self._missed.add(uaid)
        else:
            self._missed_all = True

    async def _poke_missed(self) -> None:
        """Redis is back: ask the holders of user agents we could not reach to look."""
        if self._missed_all:
            self._missed.clear()
            self._missed_all = False
            await self._redis.publish(f"{self.prefix}all", encode_poke_all())
            return
        while self._missed:
            uaid = self._missed.pop()
            payload = encode_poke(uaid)
            try:
                await self._route_script(
                    keys=[self._key(uaid)], args=[self.node_id, f"{self.prefix}node:", payload]
                )
            except BaseException:
                self._missed.add(uaid)
                raise

    def _on_bus_message(self, raw: bytes) -> None:
        """Act on a bus payload (one message or several); a bad one is logged (its
        reason, not its bytes) and dropped."""
        try:
            events = decode_bus_messages(raw)
        except BadBusMessage as exc:
            events = [exc]
        for event in events:
            if isinstance(event, BadBusMessage):
                self.dropped += 1
                log.warning("cluster: dropped a bad bus message: %s", escape(str(event)))
            else:
                self._on_event(event)

    def _on_event(self, event: BusEvent) -> None:
        if isinstance(event, Deliver):
            message = event.message
            taker = self.offer_taker
            if taker is not None and taker.routed(message):
                return  # offered here before it was stored: settled
            late = time.time() - message.created_at > BUS_LATE
            if late:
                self.late += 1
            if message.ttl and (late or message.uaid in self._rereading):
                # From the store; later ones too while it is read, so they keep their order.
                self._read_again(message.uaid, message.created_at - BUS_LATE)
            elif not late:  # a late TTL 0 message is dropped: it was for then
                self._hub.offer(message)  # not here any more: it is stored
        elif isinstance(event, Poke):
            self._spawn(self._redeliver_one(event.uaid))
        elif isinstance(event, PokeAll):
            self._spawn(self._redeliver_all())
        elif isinstance(event, BroadcastsChanged) and self.on_broadcasts is not None:
            self.on_broadcasts()
        elif isinstance(event, Superseded):
            self._spawn(self._let_go(event.uaid, event.stamp))
        elif isinstance(event, Withdrawn):
            self._hub.withdraw(event.uaid, event.message_id)
        elif isinstance(event, ReceiptsQueued) and event.node != self.node_id:
            self._hub.notify_receipt(event.receipt_id)
        elif isinstance(event, LiveOffer):
            self._take_offer(event)
        elif isinstance(event, OfferAnswer):
            answer = self._offers.get(event.message_id)
            if answer is not None and not answer.done():
                answer.set_result((event.offered, event.code))

    def _take_offer(self, offer: LiveOffer) -> None:
        node, message_id = offer.node, offer.message.message_id

        def answer(offered: bool, code: int | None) -> None:
            self._answer_offer(node, message_id, offered, code)

        if time.time() - offer.message.created_at > BUS_LATE:
            # As a late route (`_on_event`): a DELETE answered since may be right behind
            # it. Its sender gave up waiting long ago and stores it.
            self.late += 1
            answer(False, None)
        elif self.offer_taker is None:
            answer(False, None)
        else:
            self.offer_taker.take(offer, answer)

    def _read_again(self, uaid: str, since: float) -> None:
        """Offer `uaid` its stored messages created at `since` or later, from the store."""
        if uaid in self._rereading:
            self._rereading[uaid] = True  # after the read under way, which may miss it
            return
        self._rereading[uaid] = False
        self._spawn(self._reread(uaid, since))

    async def _reread(self, uaid: str, since: float) -> None:
        try:
            while True:
                await self._redeliver_one(uaid, since)
                if not self._rereading.get(uaid):
                    return
                self._rereading[uaid] = False
        finally:
            self._rereading.pop(uaid, None)

    # Background loops -------------------------------------------------------------------

    async def _listen(self) -> None:
        """Stay subscribed to this node's channel; after every (re)subscription, catch up."""
        backoff = 0.05
        while True:
            pubsub = self._subscriber.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel, f"{self.prefix}all")
                # From here on every route to this node arrives; claim and catch up on
                # whatever was routed (or stored) while this node was not listening.
                await self._claim_all()
                self._subscribed = True
                self._down_until = 0.0
                self._started.set()
                if self._stamps:
                    log.info("cluster: subscribed; catching up %d user agents", len(self._stamps))
                    self._spawn(self._redeliver_all())
                backoff = 0.05
                async for item in pubsub.listen():
                    if item.get("type") == "message":
                        try:
                            self._on_bus_message(item["data"])
                        except Exception:
                            log.exception("cluster: failed to handle a bus message")
            except asyncio.CancelledError:
                self._subscribed = False
                raise
            except Exception as exc:
                # Redis went away, the connection was killed, or a bug: stay alive, say
                # "degraded" on /health, and subscribe again after a backoff.
                if self._subscribed:
                    self.restarts += 1
                    log.warning(
                        "cluster: lost the Redis subscription (%s); subscribing again",
                        escape(str(exc) or type(exc).__name__),
                    )
                self._subscribed = False
                self._failed("subscription", exc)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call,unused-ignore]  # typed from redis 6
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 1.0)

    async def _beat(self) -> None:
        """Refresh claims; once Redis answers again, poke the holders of missed pushes."""
        last_beat = 0.0
        while True:
            await asyncio.sleep(0.25 if self._missed or self._missed_all else 1.0)
            try:
                if time.monotonic() - last_beat >= self._heartbeat:
                    await self._claim_all()
                    last_beat = time.monotonic()
                if self._missed or self._missed_all:
                    if time.monotonic() < self._down_until:
                        continue
                    await self._poke_missed()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the heartbeat must outlive any one failure
                self._failed("heartbeat", exc)
