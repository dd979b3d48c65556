"""Per-address connection counts shared by the workers of one node (`--workers N`).

The parent makes a `NodeCounts` before forking: a fixed-size shared anonymous mapping
(inherited by every worker), so memory does not grow with the addresses seen. Each
worker has its own column of cells and is the only writer of it; a count is the sum of
one bucket's cells across the columns, so no lock is needed.

An address key is hashed (keyed BLAKE2b, the key drawn by the parent) to one bucket in
each of `ROWS` rows; its node-wide count is the least of its rows' sums (a count-min
sketch). Another address in the same bucket only adds to the count, so a collision
refuses early and never admits past a cap. Between one worker's read and its write
another worker may admit the same address, so the node may hold at most N - 1 over a cap.

A worker's cells are zeroed when it starts and, by the parent, when it exits, so a
killed worker's counts do not stay behind.
"""

from __future__ import annotations

import functools
import hashlib
import mmap
import secrets

__all__ = ["BUCKETS", "HANDSHAKING", "OPEN", "REFUSING", "ROWS", "NodeColumn", "NodeCounts"]

OPEN = 0  # connections counted against max_connections_per_address
REFUSING = 1  # connections held to answer 429 (REFUSING_PER_ADDRESS)
HANDSHAKING = 2  # TLS handshakes in progress (max_tls_handshakes_per_address)
KINDS = 3
ROWS = 2
BUCKETS = 16384  # per row: 3 x 2 x 16384 x 4 bytes = 384 KiB a worker
CELL = 4  # bytes (a signed 32-bit count)


class NodeCounts:
    """The shared table of a node of `workers` processes (made before forking)."""

    def __init__(self, workers: int, *, buckets: int = BUCKETS) -> None:
        self.workers = workers
        self.buckets = buckets
        self._map = mmap.mmap(-1, KINDS * ROWS * buckets * workers * CELL)
        self.cells = memoryview(self._map).cast("i")
        self.hash_key = secrets.token_bytes(16)

    def column(self, worker: int) -> NodeColumn:
        """The view worker `worker` counts through (its cells zeroed first)."""
        self.reset(worker)
        return NodeColumn(self, worker)

    def reset(self, worker: int) -> None:
        """Zero the cells of `worker` (it has exited, or is starting)."""
        cells, step = self.cells, self.workers
        for index in range(worker, len(cells), step):
            cells[index] = 0


class NodeColumn:
    """One worker's side of a `NodeCounts`: it writes its own cells, reads all."""

    def __init__(self, table: NodeCounts, worker: int) -> None:
        self.cells = table.cells
        self.workers = table.workers
        self.worker = worker
        buckets, key = table.buckets, table.hash_key
        row_size = buckets * table.workers
        self._kind_size = ROWS * row_size

        @functools.lru_cache(maxsize=4096)
        def bases(address_key: str) -> tuple[int, int]:
            digest = hashlib.blake2b(address_key.encode(), digest_size=8, key=key).digest()
            first = int.from_bytes(digest[:4]) % buckets
            second = int.from_bytes(digest[4:]) % buckets
            return first * table.workers, row_size + second * table.workers

        self._bases = bases

    def held(self, kind: int, key: str) -> int:
        """The node-wide count of `key` (never below the true one)."""
        cells, width = self.cells, self.workers
        offset = kind * self._kind_size
        first, second = self._bases(key)
        first += offset
        second += offset
        return min(sum(cells[first : first + width]), sum(cells[second : second + width]))

    def add(self, kind: int, key: str, delta: int) -> None:
        """Add `delta` to this worker's count of `key`."""
        cells = self.cells
        offset = kind * self._kind_size + self.worker
        first, second = self._bases(key)
        cells[first + offset] += delta
        cells[second + offset] += delta
