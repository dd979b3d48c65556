"""The store interface: what the push service keeps, independent of the engine.

The service talks to storage only through `Store`; SQLite (embedded default) and
PostgreSQL (scale-out) implement it. Every method is one short transaction.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from tidings.service.records import record

# A user agent's last-seen time is written at most once per this many seconds.
SEEN_RESOLUTION = 3600.0


class StoreError(Exception):
    """Base of the store's own errors."""


class StoreUnavailable(StoreError):
    """The store cannot take the request now (disk full, read-only, connection lost)."""


class SubscriptionGone(StoreError):
    """The subscription no longer exists (unregistered, or its user agent forgotten)."""


class TooManyMessages(StoreError):
    """A stored-message quota of a subscription or a user agent is reached.

    `scope` says which: "subscription" (messages of the channel), "user_agent" (messages
    of every channel of the user agent) or "bytes" (bytes of the user agent's bodies);
    `limit` is that quota.
    """

    def __init__(self, scope: str, limit: int) -> None:
        super().__init__(f"{scope} quota of {limit} reached")
        self.scope = scope
        self.limit = limit


class StoreFull(StoreError):
    """The whole store holds its configured maximum of messages (a ceiling for all)."""


class TooManySubscriptions(StoreError):
    """The user agent already holds the maximum number of subscriptions."""


@dataclass(frozen=True, slots=True)
class MessageQuota:
    """How many unexpired messages may be stored, checked in the insert's transaction.

    Per subscription, so that one site filling its channel does not block the user
    agent's other sites; per user agent (count and body bytes), so that one browser
    cannot take the store; and for the whole store (every stored message, expired
    or not, until the sweep removes it).
    """

    per_subscription: int = 100
    per_user_agent: int = 1000
    bytes_per_user_agent: int = 1 << 20
    stored_messages: int = 10_000_000


@dataclass(frozen=True, slots=True)
class SubscriptionRecord:
    """One push message subscription of a user agent."""

    uaid: str
    channel_id: str
    vapid_hash: bytes | None
    created_at: float


@record
class StoredMessage:
    """A push message as kept until the user agent acknowledges it or it expires.

    `headers` are what the user agent needs to decrypt (content encoding and, for the
    legacy `aesgcm` coding, the Encryption and Crypto-Key values); never TTL, Topic,
    Urgency or VAPID data, which stay with the service.
    """

    message_id: str
    uaid: str
    channel_id: str
    body: bytes
    ttl: int
    created_at: float
    expires_at: float
    urgency: str = "normal"
    topic: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    receipt_id: str | None = None  # the application server's receipt subscription
    # The id of the request that pushed it, for logs; kept in memory only (a message
    # read back from the store is followed by its message id).
    request_id: str | None = field(default=None, compare=False)
    # The `traceparent` of the span that accepted it, when tracing is on; in memory (and
    # on the cluster bus) only, like request_id.
    traceparent: str | None = field(default=None, compare=False)
    # The hash of the VAPID key that signed the push: a signed push gets a status row
    # (MessageStatus) in the insert's transaction. In memory only: a message read back
    # from the store has None (whether it has a status is then unknown).
    vapid_hash: bytes | None = field(default=None, compare=False)
    # True or False when known (a push just accepted on this node), None when read back
    # from the store or the cluster bus: its delivery is then recorded in case.
    has_status: bool | None = field(default=None, compare=False)


@record
class Receipt:
    """A delivery receipt waiting for its application server (RFC 8030 section 6.3).

    `status` is 204 when the user agent acknowledged the message and 410 when the
    service gave up (its TTL ran out before an acknowledgement).
    """

    seq: int
    receipt_id: str
    uaid: str
    channel_id: str
    message_id: str
    status: int
    created_at: float


# The states of a message's status (docs/rfc8030.md, "Message status"); the last four
# are final: the row is forgotten `message_status_retention` seconds after reaching one.
STORED = "stored"
DELIVERED = "delivered"
ACKNOWLEDGED = "acknowledged"
EXPIRED = "expired"
DELETED = "deleted"
REPLACED = "replaced"
FINAL_STATES = frozenset((ACKNOWLEDGED, EXPIRED, DELETED, REPLACED))


@record
class MessageStatus:
    """What its sender may learn about a VAPID-signed push (GET on its message resource).

    While the message is stored its status lives in its row; when it leaves the store
    (acknowledged, cancelled, expired, replaced) a final status row is written in the
    same transaction. `delivered_via` is "websocket" or "http2" once a connection
    carried it; `final_at`
    is when it reached a final state (acknowledged, expired, deleted, replaced);
    `ends_at` is when the row starts its retention: `final_at`, or `expires_at` while
    the message is still stored (a message removed with its subscription ends there).
    """

    message_id: str
    vapid_hash: bytes
    state: str
    ttl: int
    created_at: float
    expires_at: float
    delivered_via: str | None = None
    delivered_at: float | None = None
    final_at: float | None = None

    @property
    def ends_at(self) -> float:
        return self.expires_at if self.final_at is None else self.final_at


def status_columns(status: MessageStatus) -> tuple[object, ...]:
    """A status as the stores persist it: message_id, vapid_hash, state, ttl,
    created_at, expires_at, delivered_via, delivered_at, final_at, ends_at."""
    return (
        status.message_id,
        status.vapid_hash,
        status.state,
        status.ttl,
        status.created_at,
        status.expires_at,
        status.delivered_via,
        status.delivered_at,
        status.final_at,
        status.ends_at,
    )


def message_columns(message: StoredMessage) -> tuple[object, ...]:
    """A message as the stores persist it: message_id, uaid, channel_id, body, ttl,
    created_at, expires_at, urgency, topic, headers (compact JSON), receipt_id."""
    return (
        message.message_id,
        message.uaid,
        message.channel_id,
        message.body,
        message.ttl,
        message.created_at,
        message.expires_at,
        message.urgency,
        message.topic,
        encode_headers(message.headers),
        message.receipt_id,
    )


# Nearly every message carries the same delivery headers ({"encoding": "aes128gcm"}):
# their JSON text is remembered both ways instead of encoded and parsed per message.
# Only single-header sets are kept (aesgcm's carry per-message salts: never the same).
_HEADER_CACHE_SIZE = 16
_encoded_headers: dict[tuple[tuple[str, str], ...], str] = {}
_decoded_headers: dict[str, dict[str, str]] = {}


def encode_headers(headers: dict[str, str]) -> str:
    """A message's delivery headers as the compact JSON the stores keep."""
    key = tuple(headers.items())
    text = _encoded_headers.get(key)
    if text is None:
        text = json.dumps(headers, separators=(",", ":"))
        if len(key) == 1 and len(_encoded_headers) < _HEADER_CACHE_SIZE:
            _encoded_headers[key] = text
    return text


def decode_headers(text: str) -> dict[str, str]:
    """The delivery headers kept as `text` (a new dict each time: callers may change it)."""
    cached = _decoded_headers.get(text)
    if cached is not None:
        return dict(cached)
    headers: dict[str, str] = json.loads(text)
    if len(headers) == 1 and len(_decoded_headers) < _HEADER_CACHE_SIZE:
        _decoded_headers[text] = dict(headers)
    return headers


class Store(Protocol):
    """Persistence for user agents, subscriptions and messages."""

    async def open(self) -> None:
        """Connect and apply schema migrations."""

    async def close(self) -> None:
        """Release connections; pending writes are complete when this returns."""

    async def ping(self) -> None:
        """Raise StoreUnavailable unless the store answers a trivial query."""

    async def get_meta(self, key: str) -> str | None:
        """A value from the service's own metadata table."""

    async def set_meta(self, key: str, value: str) -> None:
        """Write a metadata value."""

    async def list_broadcasts(self) -> dict[str, str]:
        """Every broadcast (Megaphone id -> version) the operator has set."""

    async def set_broadcast(self, broadcast_id: str, version: str, *, max_broadcasts: int) -> bool:
        """Create or change a broadcast; False (and nothing written) when it is new and
        `max_broadcasts` already exist."""

    async def delete_broadcast(self, broadcast_id: str) -> bool:
        """Remove a broadcast; True if it existed."""

    async def has_user_agent(self, uaid: str) -> bool:
        """True when the service knows this user agent id."""

    async def add_user_agent(self, uaid: str, now: float) -> None:
        """Record a new user agent (idempotent); either way it was seen at `now`."""

    async def touch_user_agent(self, uaid: str, now: float) -> bool:
        """True when the user agent exists; it is then recorded as seen at `now`
        (written only when the last record is older than SEEN_RESOLUTION: cheap)."""

    async def touch_user_agents(self, uaids: Sequence[str], now: float) -> None:
        """`touch_user_agent` for many (those connected right now), one transaction."""

    async def delete_stale_user_agents(self, seen_before: float, limit: int) -> int:
        """Forget at most `limit` user agents not seen since `seen_before`, with their
        subscriptions and messages; return how many."""

    async def add_subscription(
        self, record: SubscriptionRecord, *, max_per_user_agent: int | None = None
    ) -> SubscriptionRecord:
        """Create a subscription, or return the existing one with that channel id.

        Raises TooManySubscriptions when the user agent already holds
        `max_per_user_agent` others; the count and the insert are one atomic step.
        """

    async def get_subscription(self, uaid: str, channel_id: str) -> SubscriptionRecord | None:
        """The subscription, or None when it does not exist."""

    async def delete_subscription(self, uaid: str, channel_id: str) -> bool:
        """Delete a subscription and its stored messages; True if it existed."""

    async def delete_user_agent(self, uaid: str) -> int:
        """Forget a user agent (a subscription set): its subscriptions and messages.

        Returns how many subscriptions it had.
        """

    async def list_subscriptions(self, uaid: str) -> list[SubscriptionRecord]:
        """Every subscription of a user agent (a subscription set)."""

    async def count_subscriptions(self, uaid: str) -> int:
        """How many subscriptions a user agent holds."""

    async def store_message(self, message: StoredMessage, *, quota: MessageQuota) -> list[str]:
        """Store a message; replace a stored one of the same subscription and topic.

        Returns the ids of replaced messages. A message with a `vapid_hash` has a
        status: kept in its row while stored; the replaced ones leave a final
        "replaced" status, in the same transaction.
        Raises SubscriptionGone when the
        subscription does not exist, TooManyMessages when a quota of its subscription
        or user agent is reached, StoreFull when the whole store is. The quotas are
        checked in the insert's transaction: concurrent pushes never exceed them
        (the whole-store ceiling may be passed by the pushes in flight at once on
        PostgreSQL: see the store's notes).
        """

    async def check_message(self, message: StoredMessage, *, quota: MessageQuota) -> bool:
        """Whether `store_message` would store `message` now, read without storing it:
        True, or it raises what `store_message` would. False when this store cannot
        tell without storing (the push is then stored first: live_acks.py). A push
        stored concurrently may still fill a quota before this one's insert."""

    async def replace_topic(self, uaid: str, channel_id: str, topic: str, at: float) -> list[str]:
        """Delete the stored messages of a subscription with `topic`, as a newer push of
        that topic that is not stored (TTL 0) replaces them (RFC 8030 section 5.4);
        return their ids. Signed ones leave a final "replaced" status, as in
        `store_message`, under the same per-user-agent lock."""

    async def pending_messages(self, uaid: str, now: float, limit: int) -> list[StoredMessage]:
        """Unexpired stored messages of a user agent, oldest first."""

    async def mark_delivered(self, uaid: str, message_id: str) -> None:
        """Record that a message was sent to its user agent (for receipts)."""

    async def delete_message(self, uaid: str, message_id: str) -> StoredMessage | None:
        """Delete a stored message (acknowledged or cancelled); return it if it existed.

        If the message wants a receipt and was delivered, a 204 receipt is queued in the
        same transaction. Its status becomes "acknowledged" if it was delivered, else
        "deleted" (the sender cancelled it).
        """

    async def delete_messages(self, keys: Sequence[tuple[str, str]]) -> list[StoredMessage | None]:
        """`delete_message` for each (uaid, message_id), in one transaction; one result
        per key, in order (acknowledgements arriving together). Statuses become
        "acknowledged" (delivered, if that was not recorded yet)."""

    async def delete_expired(self, now: float) -> int:
        """Delete every message whose TTL has passed; return how many.

        Messages that wanted a receipt get a 410 receipt in the same transaction, and
        statuses become "expired".
        """

    async def add_message_status(self, status: MessageStatus) -> None:
        """Record the status of a signed push that was never stored (TTL 0: delivered
        live or dropped); a stored one gets its status from `store_message`."""

    async def mark_statuses_delivered(
        self, deliveries: Sequence[tuple[str, str, str, float]]
    ) -> None:
        """For each (uaid, message_id, via, at): the message went out on a connection of
        kind `via` at `at` (only the first delivery counts; a final state stays, but for
        a TTL-0 push's "expired", which becomes "delivered")."""

    async def get_message_status(self, uaid: str, message_id: str) -> MessageStatus | None:
        """The status of a message of user agent `uaid`, or None (unsigned, unknown or
        forgotten): while it is stored, from its row ("stored" or "delivered")."""

    async def delete_old_statuses(self, ended_before: float, limit: int) -> int:
        """Forget at most `limit` statuses whose `ends_at` is before `ended_before`;
        return how many."""

    async def add_receipt_subscription(self, receipt_id: str, now: float) -> None:
        """Create a receipt subscription for an application server."""

    async def has_receipt_subscription(self, receipt_id: str) -> bool:
        """True when the receipt subscription exists."""

    async def use_receipt_subscription(self, receipt_id: str, now: float) -> bool:
        """True when the receipt subscription exists; it is then marked used at `now`
        (its `created_at` becomes the time of its last use)."""

    async def delete_stale_receipt_subscriptions(self, unused_since: float) -> int:
        """Delete receipt subscriptions not used since `unused_since` that no stored
        message names and that hold no receipt; return how many."""

    async def delete_receipt_subscription(self, receipt_id: str) -> bool:
        """Remove a receipt subscription and its waiting receipts; True if it existed.

        Messages that named it produce no receipt afterwards.
        """

    async def add_receipt(self, receipt: Receipt) -> None:
        """Queue a receipt for a message that was never stored (a TTL-0 push); its `seq`
        is ignored. Nothing is queued if the receipt subscription no longer exists."""

    async def add_receipts(self, receipts: Sequence[Receipt]) -> None:
        """`add_receipt` of each, in order, in one transaction (a node giving up its live
        receipts writes thousands at once)."""

    async def pending_receipts(self, receipt_id: str, limit: int) -> list[Receipt]:
        """Receipts not yet handed to the application server, oldest first."""

    async def delete_receipt(self, seq: int) -> None:
        """Forget a receipt once it reached its application server."""

    async def count_messages(self) -> int:
        """How many messages are stored in all (for metrics and health)."""

    async def count_all_subscriptions(self) -> int:
        """How many subscriptions exist in all (for metrics and the dashboard)."""
