"""How many connections one client address, and the whole node, may hold open (no I/O).

A connection is counted from the moment it is accepted (on a TLS listener too: its
handshake is counted, see below) until it is lost, whatever it became meanwhile
(HTTP/1.1, HTTP/2, a WebSocket): the protocols hand their `Slot` on when they switch and
give it back in `connection_lost`, the one callback every close path ends in.

`open` answers one of three ways:

- a `Slot` with `refused` False: the connection is served;
- a `Slot` with `refused` True: the address holds its maximum; the connection is kept
  just long enough to answer its first request with 429 (and `Retry-After`), then closed.
  At most `REFUSING_PER_ADDRESS` such answers are pending per address, past that:
- None: close at once, without reading anything. The node-wide cap always answers so:
  at the edge of the process's file descriptors a refusal must not hold one.

A TLS connection is opened with `handshake=True`: it counts against both caps from
accept, and also against `handshakes_per_address` (TLS handshakes in progress per
address; past it: None) until `handshake_done`. `close` ends an unfinished handshake too,
so a handshake that fails, times out or is reset gives everything back in one call.

The tables hold one entry per address with a connection open, removed at zero, so they
are bounded by the open connections themselves.

With `--workers N` each worker also counts in the node's shared table (`node`, a
`NodeColumn`, see node_counts.py) and the per-address caps are checked against its
node-wide counts; `max_connections` stays per process (each has its own descriptors).
"""

from __future__ import annotations

from collections.abc import Callable

from tidings.service.http.node_counts import HANDSHAKING, OPEN, REFUSING, NodeColumn

__all__ = ["REFUSING_PER_ADDRESS", "UNCOUNTED", "ConnectionAdmission", "Slot"]

REFUSING_PER_ADDRESS = 16  # 429 answers pending per address; more are closed at once


class Slot:
    """One counted connection: its address key ("" when exempt), whether it is refused,
    and whether its TLS handshake is still counted (under `handshake_key`, "" if not
    per address)."""

    __slots__ = ("handshake_key", "handshaking", "key", "refused")

    def __init__(self, key: str, refused: bool) -> None:
        self.key = key
        self.refused = refused
        self.handshaking = False
        self.handshake_key = ""


UNCOUNTED = Slot("", False)
"""The slot of every plain connection the per-address caps skip (shared: it holds no state)."""


class ConnectionAdmission:
    """The open-connection counts of one process, per address key and in all.

    `key_of` maps a peer address to what is counted (an IPv6 address to its /64, say),
    or None for addresses the per-address caps skip (loopback, trusted proxies).
    """

    def __init__(
        self,
        *,
        per_address: int | None,
        max_connections: int | None,
        key_of: Callable[[str], str | None] = lambda address: address,
        handshakes_per_address: int | None = None,
    ) -> None:
        self.per_address = per_address
        self.max_connections = max_connections
        self.handshakes_per_address = handshakes_per_address
        self.key_of = key_of
        self.total = 0  # open connections this process counts (served, refusing, handshaking)
        self.handshakes = 0  # of which TLS handshakes in progress
        self._open: dict[str, int] = {}
        self._refusing: dict[str, int] = {}
        self._handshaking: dict[str, int] = {}
        self.node: NodeColumn | None = None  # the node's shared counts (--workers N)
        self.refused_address = 0  # connections refused for their address (ever)
        self.refused_node = 0  # connections closed at once, the node being full (ever)
        self.refused_handshake = 0  # closed at once: their address's handshakes at the cap

    def __len__(self) -> int:
        """Address keys in the tables (at most three per open connection)."""
        return len(self._open) + len(self._refusing) + len(self._handshaking)

    def count(self, address: str) -> int:
        """Connections served for the key of `address` right now (handshakes included)."""
        key = self.key_of(address)
        return self._open.get(key, 0) if key else 0

    def handshaking(self, address: str) -> int:
        """TLS handshakes in progress counted for the key of `address` right now."""
        key = self.key_of(address)
        return self._handshaking.get(key, 0) if key else 0

    def open(self, address: str, *, handshake: bool = False) -> Slot | None:
        """Count a new connection from `address`: its slot, or None to close it now.

        `handshake`: a TLS connection just accepted, counted as handshaking until
        `handshake_done` (or `close`).
        """
        if self.max_connections is not None and self.total >= self.max_connections:
            self.refused_node += 1
            return None
        key = self._key(address, handshake)
        if handshake and key and self._handshakes_full(key):
            self.refused_handshake += 1
            return None
        slot = self._open_slot(key)
        if slot is None:
            return None
        self.total += 1
        if handshake:
            if slot is UNCOUNTED:
                slot = Slot("", False)  # its own: the handshake state is per connection
            slot.handshaking = True
            self.handshakes += 1
            if key and self.handshakes_per_address is not None:
                self._handshaking[key] = self._handshaking.get(key, 0) + 1
                slot.handshake_key = key
                if self.node is not None:
                    self.node.add(HANDSHAKING, key, 1)
        return slot

    def _handshakes_full(self, key: str) -> bool:
        cap = self.handshakes_per_address
        if cap is None:
            return False
        if self.node is not None:
            return self.node.held(HANDSHAKING, key) >= cap
        return self._handshaking.get(key, 0) >= cap

    def _key(self, address: str, handshake: bool) -> str:
        """The key `address` counts under ("" when no per-address cap applies to it)."""
        capped = self.per_address is not None or (
            handshake and self.handshakes_per_address is not None
        )
        return (self.key_of(address) or "") if capped and address else ""

    def _open_slot(self, key: str) -> Slot | None:
        """The per-address cap on open connections (not counted in `total` yet)."""
        cap = self.per_address
        if cap is None or not key:
            return UNCOUNTED
        node = self.node
        held = self._open.get(key, 0)
        if (node.held(OPEN, key) if node is not None else held) < cap:
            self._open[key] = held + 1
            if node is not None:
                node.add(OPEN, key, 1)
            return Slot(key, False)
        self.refused_address += 1
        refusing = self._refusing.get(key, 0)
        if (node.held(REFUSING, key) if node is not None else refusing) >= REFUSING_PER_ADDRESS:
            return None
        self._refusing[key] = refusing + 1
        if node is not None:
            node.add(REFUSING, key, 1)
        return Slot(key, True)

    def handshake_done(self, slot: Slot) -> None:
        """The TLS handshake of `slot` is over (no-op if it was); the connection stays."""
        if not slot.handshaking:
            return
        slot.handshaking = False
        self.handshakes -= 1
        if slot.handshake_key:
            _decrement(self._handshaking, slot.handshake_key)
            if self.node is not None:
                self.node.add(HANDSHAKING, slot.handshake_key, -1)
            slot.handshake_key = ""

    def close(self, slot: Slot) -> None:
        """The connection of `slot` is gone (call once per slot: the holder drops it)."""
        self.handshake_done(slot)
        self.total -= 1
        if slot.key:
            _decrement(self._refusing if slot.refused else self._open, slot.key)
            if self.node is not None:
                self.node.add(REFUSING if slot.refused else OPEN, slot.key, -1)


def _decrement(table: dict[str, int], key: str) -> None:
    """One less for `key`, its entry removed at zero (the table stays bounded)."""
    left = table[key] - 1
    if left:
        table[key] = left
    else:
        del table[key]
