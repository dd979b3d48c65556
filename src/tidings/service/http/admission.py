"""How many connections one client address, and the whole node, may hold open (no I/O).

A connection is counted from the moment its protocol sees it (for TLS: once the
handshake is done) until it is lost, whatever it became meanwhile (HTTP/1.1, HTTP/2, a
WebSocket): the protocols hand their `Slot` on when they switch and give it back in
`connection_lost`, the one callback every close path ends in.

`open` answers one of three ways:

- a `Slot` with `refused` False: the connection is served;
- a `Slot` with `refused` True: the address holds its maximum; the connection is kept
  just long enough to answer its first request with 429 (and `Retry-After`), then closed.
  At most `REFUSING_PER_ADDRESS` such answers are pending per address, past that:
- None: close at once, without reading anything. The node-wide cap always answers so:
  at the edge of the process's file descriptors a refusal must not hold one.

The table holds one entry per address with a connection open, removed at zero, so it is
bounded by the open connections themselves.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["REFUSING_PER_ADDRESS", "UNCOUNTED", "ConnectionAdmission", "Slot"]

REFUSING_PER_ADDRESS = 16  # 429 answers pending per address; more are closed at once


class Slot:
    """One counted connection: its address key ("" when exempt) and whether it is refused."""

    __slots__ = ("key", "refused")

    def __init__(self, key: str, refused: bool) -> None:
        self.key = key
        self.refused = refused


UNCOUNTED = Slot("", False)
"""The slot of every connection the per-address cap skips (shared: it holds no state)."""


class ConnectionAdmission:
    """The open-connection counts of one process, per address key and in all.

    `key_of` maps a peer address to what is counted (an IPv6 address to its /64, say),
    or None for addresses the per-address cap skips (loopback, trusted proxies).
    """

    def __init__(
        self,
        *,
        per_address: int | None,
        max_connections: int | None,
        key_of: Callable[[str], str | None] = lambda address: address,
    ) -> None:
        self.per_address = per_address
        self.max_connections = max_connections
        self.key_of = key_of
        self.total = 0  # open connections this process counts (served and refusing)
        self._open: dict[str, int] = {}
        self._refusing: dict[str, int] = {}
        self.refused_address = 0  # connections refused for their address (ever)
        self.refused_node = 0  # connections closed at once, the node being full (ever)

    def __len__(self) -> int:
        """Address keys in the table (at most the open connections)."""
        return len(self._open) + len(self._refusing)

    def count(self, address: str) -> int:
        """Connections served for the key of `address` right now."""
        key = self.key_of(address)
        return self._open.get(key, 0) if key else 0

    def open(self, address: str) -> Slot | None:
        """Count a new connection from `address`: its slot, or None to close it now."""
        if self.max_connections is not None and self.total >= self.max_connections:
            self.refused_node += 1
            return None
        cap = self.per_address
        key = self.key_of(address) if cap is not None and address else None
        if cap is None or not key:
            self.total += 1
            return UNCOUNTED
        held = self._open.get(key, 0)
        if held < cap:
            self._open[key] = held + 1
            self.total += 1
            return Slot(key, False)
        self.refused_address += 1
        refusing = self._refusing.get(key, 0)
        if refusing >= REFUSING_PER_ADDRESS:
            return None
        self._refusing[key] = refusing + 1
        self.total += 1
        return Slot(key, True)

    def close(self, slot: Slot) -> None:
        """The connection of `slot` is gone (call once per slot: the holder drops it)."""
        self.total -= 1
        if not slot.key:
            return
        table = self._refusing if slot.refused else self._open
        left = table[slot.key] - 1
        if left:
            table[slot.key] = left
        else:
            del table[slot.key]
