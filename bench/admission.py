"""Cost per connection of `ConnectionAdmission` (open + close), one process or a node's
shared table: `python bench/admission.py [--workers N]` (N > 1: counts in a NodeCounts).

Run it against another tree with PYTHONPATH=that/src to compare (BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import time

from tidings.service.http.admission import ConnectionAdmission

ROUNDS = 5
CONNECTIONS = 200_000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=1)
    workers = parser.parse_args().workers
    admission = ConnectionAdmission(per_address=4096, max_connections=100_000)
    if workers > 1:
        from tidings.service.http.node_counts import NodeCounts

        admission.node = NodeCounts(workers).column(0)
    addresses = [f"198.51.{n // 256}.{n % 256}" for n in range(1000)]
    best = float("inf")
    for _ in range(ROUNDS):
        start = time.perf_counter()
        held = []
        for n in range(CONNECTIONS):
            slot = admission.open(addresses[n % 1000])
            assert slot is not None
            held.append(slot)
            if len(held) == 64:
                for slot in held:
                    admission.close(slot)
                held.clear()
        for slot in held:
            admission.close(slot)
        best = min(best, time.perf_counter() - start)
    print(f"workers={workers}: {best / CONNECTIONS * 1e9:.0f} ns per connection (open + close)")


if __name__ == "__main__":
    main()
