"""A tiny round-robin TCP load balancer for trying a Tidings cluster on one machine.

    python examples/cluster/proxy.py --listen 8080 127.0.0.1:8081 127.0.0.1:8082 ...

Each incoming connection (HTTP or WebSocket alike) goes to the next backend that
accepts it; a backend that refuses is skipped, so killing a node just moves its user
agents to the others when they reconnect. For production use haproxy or nginx.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools


async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    with contextlib.suppress(Exception):
        while data := await src.read(65536):
            dst.write(data)
            await dst.drain()
    with contextlib.suppress(Exception):
        dst.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", type=int, default=8080)
    parser.add_argument("backends", nargs="+", help="host:port of each node")
    args = parser.parse_args()
    backends = [(b.rsplit(":", 1)[0], int(b.rsplit(":", 1)[1])) for b in args.backends]
    turn = itertools.cycle(range(len(backends)))

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in backends:
            host, port = backends[next(turn)]
            try:
                up_reader, up_writer = await asyncio.open_connection(host, port)
            except OSError:
                continue
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
            return
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", args.listen)
    print(f"proxy on 127.0.0.1:{args.listen} -> {', '.join(args.backends)}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
