"""A flood on one subscription does not slow delivery to the others.

The service runs as its own process with its default limits. A second process floods
subscription A with pipelined pushes over several connections; meanwhile the test
pushes to subscription B (another user agent) at a steady pace and times each message
from the POST to its arrival at B's WebSocket. B's pushes are all accepted and arrive
about as fast as without the flood, while A's flood is cut down to its rate limit.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from support.service import Registration, ServiceProcess, TestAgent
from tidings.webpush import encrypt

FLOOD = r"""
import asyncio, json, sys, time
from urllib.parse import urlsplit

url, body_hex, seconds, connections = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
parts = urlsplit(url)
body = bytes.fromhex(body_hex)
request = (
    f"POST {parts.path} HTTP/1.1\r\nhost: {parts.netloc}\r\nttl: 60\r\n"
    f"content-encoding: aes128gcm\r\ncontent-length: {len(body)}\r\n\r\n"
).encode() + body
counts = {}

async def flood(deadline):
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    while time.monotonic() < deadline:
        writer.write(request * 16)
        seen = 0
        buffer = b""
        while seen < 16:
            chunk = await reader.read(65536)
            if not chunk:
                return
            buffer += chunk
            while b"\r\n\r\n" in buffer:
                head, buffer = buffer.split(b"\r\n\r\n", 1)
                status = head.split(b" ", 2)[1].decode()
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                while len(buffer) < length:
                    buffer += await reader.read(65536)
                buffer = buffer[length:]
                counts[status] = counts.get(status, 0) + 1
                seen += 1
    writer.close()

async def main():
    deadline = time.monotonic() + seconds
    await asyncio.gather(*(flood(deadline) for _ in range(connections)))
    print(json.dumps(counts))

asyncio.run(main())
"""


def encrypted(registration: Registration, text: str) -> bytes:
    keys = registration.subscription_info()["keys"]
    return encrypt(text.encode(), keys["p256dh"], keys["auth"])


async def latencies(
    client: httpx.AsyncClient, agent: TestAgent, registration: Registration, count: int
) -> list[float]:
    """Push `count` messages to `registration` one by one; seconds each took to arrive."""
    taken: list[float] = []
    for number in range(count):
        body = encrypted(registration, f"b{number}")
        started = time.perf_counter()
        response = await client.post(
            registration.endpoint,
            content=body,
            headers={"ttl": "60", "content-encoding": "aes128gcm"},
        )
        assert response.status_code == 201, response.text
        notification = await agent.next_notification(timeout=10)
        taken.append(time.perf_counter() - started)
        assert notification.plaintext == f"b{number}".encode()
        await asyncio.sleep(0.02)
    return taken


@pytest.mark.timeout(60)
async def test_flood_on_one_subscription_does_not_slow_the_others(tmp_path: Path) -> None:
    process = ServiceProcess(tmp_path / "service", args=["--log-level", "warning"])
    await asyncio.to_thread(process.start)
    try:
        flooded_agent = TestAgent(process.ws_url)
        await flooded_agent.connect()
        flooded = await flooded_agent.register()
        agent = TestAgent(process.ws_url)
        await agent.connect()
        registration = await agent.register()
        async with httpx.AsyncClient(timeout=10) as client:
            before = await latencies(client, agent, registration, 20)
            flood = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                FLOOD,
                flooded.endpoint,
                encrypted(flooded, "flood").hex(),
                "4",
                "8",
                stdout=subprocess.PIPE,
            )
            await asyncio.sleep(0.5)  # the flood is under way
            during = await latencies(client, agent, registration, 40)
            output, _ = await asyncio.wait_for(flood.communicate(), 30)
        counts = json.loads(output)
        flooded_agent_got = 0
        while True:  # the flooded user agent takes what was accepted
            try:
                await flooded_agent.next_notification(timeout=0.5)
            except TimeoutError:
                break
            flooded_agent_got += 1
        await agent.close()
        await flooded_agent.close()
    finally:
        await asyncio.to_thread(process.stop)
    median_before = statistics.median(before)
    median_during = statistics.median(during)
    print(
        f"flood answers {counts}; B median {median_before * 1000:.1f} ms before, "
        f"{median_during * 1000:.1f} ms during (max {max(during) * 1000:.1f} ms)"
    )
    figures = f"{counts}, before {before}, during {during}"
    assert counts.get("429", 0) > 1000, figures  # the flood was real and was limited
    assert counts.get("201", 0) <= 600 + 10 * 6, figures  # burst + rate x time (600/min)
    assert flooded_agent_got == counts.get("201", 0), figures
    # Measured 4-6 ms before and 11-34 ms during on a 2-core machine, where the flood
    # takes a core; the bounds leave room for a machine busy with other work.
    assert median_during < max(5 * median_before, 0.1), figures
    assert max(during) < 1.0, figures
