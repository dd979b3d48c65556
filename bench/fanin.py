"""Fan-in of stored messages (issue 9.4): many user agents reconnect at once, each with
stored messages waiting; how long until every message is delivered and acknowledged?

    python bench/fanin.py [--agents 10000] [--messages 10] [--clients 3]

1. the agents (WebSocket clients in `--clients` processes) connect, say hello,
   subscribe once each, remember their uaid, and disconnect;
2. `--messages` pushes per agent are stored (posted over keep-alive connections);
3. every agent reconnects at the same moment with its uaid; the clock runs until all
   agents have received and acknowledged all their messages.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import rawws  # noqa: E402
from benchkit import free_port, start_tidings  # noqa: E402

CLIENT_CODE = (
    rawws.client_prelude()
    + r"""
import asyncio, json, sys, time, uuid
host, port, count, src = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
expect = int(sys.argv[5])

from rawws import HANDSHAKE, frame, frames

async def open_ws():
    reader, writer = await asyncio.open_connection(host, port, local_addr=(src, 0))
    writer.write(HANDSHAKE.format(host=host).encode())
    await reader.readuntil(b"\r\n\r\n")
    return reader, writer

async def request(reader, writer, message, buf=b""):
    writer.write(frame(json.dumps(message)))
    while True:
        got, buf = frames(buf)
        if got:
            return json.loads(got[0]), buf
        buf += await reader.read(4096)

async def setup(sem, agents):
    async with sem:
        reader, writer = await open_ws()
        hello, _ = await request(reader, writer, {"messageType": "hello", "use_webpush": True})
        reg, _ = await request(
            reader, writer, {"messageType": "register", "channelID": str(uuid.uuid4())})
        writer.close()
        agents.append((hello["uaid"], reg["pushEndpoint"]))

async def reconnect(uaid, done):
    reader, writer = await open_ws()
    writer.write(frame(json.dumps({"messageType": "hello", "uaid": uaid, "use_webpush": True})))
    buf, got = b"", 0
    while got < expect:
        data = await reader.read(65536)
        if not data:
            break
        buf += data
        texts, buf = frames(buf)
        updates = []
        for text in texts:
            m = json.loads(text)
            if m.get("messageType") == "notification":
                got += 1
                updates.append({"channelID": m["channelID"], "version": m["version"], "code": 100})
        if updates:
            writer.write(frame(json.dumps({"messageType": "ack", "updates": updates})))
    done.append(got)
    return reader, writer

async def main():
    agents, sem = [], asyncio.Semaphore(200)
    await asyncio.gather(*(setup(sem, agents) for _ in range(count)))
    print(json.dumps(agents), flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.readline)
    done = []
    started = time.perf_counter()
    conns = await asyncio.gather(*(reconnect(uaid, done) for uaid, _ in agents))
    elapsed = time.perf_counter() - started
    print(json.dumps({"agents": len(done), "messages": sum(done), "seconds": elapsed,
                      "complete": sum(1 for d in done if d >= expect)}), flush=True)
asyncio.run(main())
"""
)


async def store_messages(port: int, paths: list[str], per_agent: int, body: bytes) -> float:
    """POST every message over 32 keep-alive connections; return the seconds it took."""
    queue: asyncio.Queue[str] = asyncio.Queue()
    for _ in range(per_agent):
        for path in paths:
            queue.put_nowait(path)
    head = "POST {} HTTP/1.1\r\nHost: b\r\nTTL: 3600\r\nContent-Encoding: aes128gcm\r\n"
    tail = f"Content-Length: {len(body)}\r\n\r\n".encode() + body

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while not queue.empty():
            writer.write(head.format(queue.get_nowait()).encode() + tail)
            status = await reader.readuntil(b"\r\n\r\n")
            if b" 201 " not in status.split(b"\r\n", 1)[0]:
                raise RuntimeError(status[:200])
        writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(32)))
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=10_000)
    parser.add_argument("--messages", type=int, default=10)
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--serve-args", default="", help="extra `tidings serve` arguments")
    args = parser.parse_args()
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "bench.toml"
        config.write_text('rate_push_subscription = "off"\n')
        service = start_tidings(port, f"{tmp}/t.db", *shlex.split(args.serve_args), config=config)
        try:
            time.sleep(2)
            per_client = args.agents // args.clients
            clients = [
                subprocess.Popen(
                    [
                        sys.executable,
                        "-c",
                        CLIENT_CODE,
                        "127.0.0.1",
                        str(port),
                        str(per_client),
                        f"127.0.0.{2 + i}",
                        str(args.messages),
                    ],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
                for i in range(args.clients)
            ]
            agents: list[tuple[str, str]] = []
            for client in clients:
                assert client.stdout is not None
                agents += json.loads(client.stdout.readline())
            paths = ["/" + endpoint.split("/", 3)[3] for _, endpoint in agents]
            body = b"\0" * 16 + (4096).to_bytes(4, "big") + b"\x41" + b"k" * 65 + b"x" * 60
            stored_in = asyncio.run(store_messages(port, paths, args.messages, body))
            total = len(paths) * args.messages
            print(f"# {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores")
            print(
                f"stored {total:,} messages for {len(paths):,} agents in {stored_in:.1f} s "
                f"({total / stored_in:,.0f}/s)"
            )
            for client in clients:
                assert client.stdin is not None
                client.stdin.write("go\n")
                client.stdin.flush()
            results = []
            for client in clients:
                assert client.stdout is not None
                results.append(json.loads(client.stdout.readline()))
            seconds = max(r["seconds"] for r in results)
            delivered = sum(r["messages"] for r in results)
            complete = sum(r["complete"] for r in results)
            print(
                f"{len(paths):,} agents reconnecting at once: {delivered:,}/{total:,} "
                f"messages delivered and acknowledged in {seconds:.1f} s "
                f"({delivered / seconds:,.0f}/s); {complete:,} agents got all theirs"
            )
            for client in clients:
                client.kill()
        finally:
            service.send_signal(signal.SIGTERM)
            service.wait(30)


if __name__ == "__main__":
    main()
