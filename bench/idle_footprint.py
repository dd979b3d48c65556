"""Resident memory per idle Firefox-protocol connection in one service process.

A quick companion to `idle_connections.py` (which runs `tidings serve --workers N`
and reports for the whole node): the service runs in this process, one client process
opens N connections (hello, 1 % also register), and the process's RSS before and after
gives bytes per connection. A warm-up round (2,000 opened and closed) first, so the
allocator's start-up growth is not counted. Run it with PYTHONPATH set to the sources
to measure (e.g. main's, extracted with `git archive`, against the branch's).

    PYTHONPATH=src python bench/idle_footprint.py [--connections 15000]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from idle_connections import CLIENT_CODE, rss_kib
from tidings.service.config import ServiceConfig
from tidings.service.run import build_server, tune_garbage_collector


async def hold(port: int, count: int) -> tuple[int, int]:
    """Open `count` connections from a client process; (connections, RSS growth KiB)."""
    gc.collect()
    before = rss_kib(os.getpid())
    client = await asyncio.create_subprocess_exec(
        *(sys.executable, "-c", CLIENT_CODE, "127.0.0.1", str(port), str(count)),
        *("9", "0.01", "100"),  # source addresses 127.9.x.1, 1 % register, 100 in flight
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert client.stdout is not None
    ready = int(json.loads(await client.stdout.readline())["ready"])
    await asyncio.sleep(2)
    gc.collect()
    grown = rss_kib(os.getpid()) - before
    client.kill()
    await client.wait()
    await asyncio.sleep(2)  # the service sees them go
    return ready, grown


async def main(connections: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        config = ServiceConfig(port=0, db=f"{tmp}/t.db", log_level="warning")
        server = build_server(config)
        await server.start()
        tune_garbage_collector()
        try:
            await hold(server.port, 2000)  # warm-up
            ready, grown = await hold(server.port, connections)
        finally:
            await server.stop(grace=2)
    print(
        f"{ready} connections held: RSS +{grown} KiB, {grown * 1024 / max(ready, 1):.0f} bytes "
        f"per connection (load average {os.getloadavg()[0]:.2f})"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=15_000)
    try:
        import uvloop  # as `tidings serve` runs when it is installed

        uvloop.run(main(parser.parse_args().connections))
    except ImportError:
        asyncio.run(main(parser.parse_args().connections))
