"""Cost as the work grows (issue 21, item 5): a full store against an empty one, one run.

For each store (SQLite, PostgreSQL) two `tidings serve` run side by side: one on an empty
store, one on a store filled in bulk beforehand, directly in SQL:

  - SQLite: `--messages` stored messages (default 1,000,000; 10 per user agent);
  - PostgreSQL (its own databases, dropped afterwards): `--messages` stored messages
    and `--subscriptions` subscriptions (default 10,000,000; 10 per user agent).

Then, alternating between the two services (`--rounds` times), the bare clients of
`wire_latency.py` push at a fixed rate to fresh subscriptions, once with their user agents
connected and acknowledging (accept, store, deliver, ack, delete) and once with them gone
(accept and store only), and the service's CPU per push and the POST's answer times are
compared. Last, on each service, one user agent with a `--backlog` of stored messages
(default 10,000) reconnects: the time from its hello to the last notification read.

    python bench/growth.py [--stores sqlite,postgres] [--messages N] [--subscriptions N]
        [--sqlite-rate 1500] [--postgres-rate 200] [--duration 10] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "bench"))

from benchkit import free_port, process_cpu_seconds, start_tidings, wait_healthy  # noqa: E402
from wire_latency import (  # noqa: E402
    AES128GCM_HEADER,
    Agent,
    Poster,
    connect_agent,
    cpu_pressure,
    run_rate,
)

PG_ADMIN = "postgresql://127.0.0.1:5432/test"
PG_DATABASES = {"empty": "tidings_bench_growth_empty", "full": "tidings_bench_growth_full"}
HEADERS = '{"encoding":"aes128gcm"}'  # what the stores keep for an aes128gcm push
FAR_TTL = 28 * 86400  # the filler messages outlive the run
# The same limits for both services: off where one subscription takes a whole backlog
# or the load, and a store ceiling above the filler.
SERVICE_ENV = {
    "TIDINGS_RATE_PUSH_SUBSCRIPTION": "off",
    "TIDINGS_RATE_PUSH_VAPID_KEY": "off",
    "TIDINGS_MAX_MESSAGES_PER_SUBSCRIPTION": "100000",
    "TIDINGS_MAX_MESSAGES_PER_USER_AGENT": "100000",
    "TIDINGS_MAX_BYTES_PER_USER_AGENT": str(1 << 40),
    "TIDINGS_MAX_MESSAGES": str(100_000_000),
}


# Filling the stores ------------------------------------------------------------------------


async def create_schema(url: str) -> None:
    """The store's own migrations, as `tidings serve` would run them."""
    from tidings.service.store import open_store

    store = open_store(url)
    await store.open()
    await store.close()


def fill_sqlite(path: Path, messages: int) -> None:
    """`messages` stored messages, 10 per user agent (one subscription each), in SQL."""
    import sqlite3

    agents = max(1, messages // 10)
    now = time.time()
    db = sqlite3.connect(path)
    with db:
        db.execute(
            "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < ?)"
            " INSERT INTO user_agents (uaid, created_at, last_seen)"
            " SELECT printf('%032x', i), ?, ? FROM n",
            (agents - 1, now, now),
        )
        db.execute(
            "INSERT INTO subscriptions (uaid, channel_id, vapid_hash, created_at)"
            " SELECT uaid, 'growth', NULL, created_at FROM user_agents"
        )
        db.execute(
            "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < ?)"
            " INSERT INTO messages (message_id, uaid, channel_id, topic, urgency, ttl,"
            " created_at, expires_at, headers, body)"
            " SELECT printf('growth-%09d', i), printf('%032x', i % ?), 'growth', NULL,"
            " 'normal', ?, ?, ?, ?, randomblob(186) FROM n",
            (messages - 1, agents, FAR_TTL, now, now + FAR_TTL, HEADERS),
        )
    db.execute("ANALYZE")
    db.close()


async def pg_admin(*statements: str) -> None:
    import asyncpg

    connection = await asyncpg.connect(PG_ADMIN)
    try:
        for statement in statements:
            await connection.execute(statement)
    finally:
        await connection.close()


def pg_url(name: str) -> str:
    return f"postgresql://127.0.0.1:5432/{PG_DATABASES[name]}"


async def fill_postgres(url: str, messages: int, subscriptions: int) -> None:
    """`subscriptions` (10 per user agent) and `messages` (one per user agent, then
    round the user agents again) with generate_series, in SQL on the server."""
    import asyncpg

    agents = max(1, subscriptions // 10)
    connection = await asyncpg.connect(url)
    try:
        now = time.time()
        await connection.execute(
            "INSERT INTO user_agents (uaid, created_at, last_seen)"
            " SELECT lpad(to_hex(i), 32, '0'), $2::float8, $2::float8"
            " FROM generate_series(0, $1::bigint - 1) i",
            agents,
            now,
        )
        await connection.execute(
            "INSERT INTO subscriptions (uaid, channel_id, vapid_hash, created_at)"
            " SELECT lpad(to_hex(i / 10), 32, '0'), 'growth-' || (i % 10), NULL, $2::float8"
            " FROM generate_series(0, $1::bigint - 1) i",
            agents * 10,
            now,
        )
        await connection.execute(
            "INSERT INTO messages (uaid, message_id, channel_id, topic, urgency, ttl,"
            " created_at, expires_at, headers, body)"
            " SELECT lpad(to_hex(i % $2::bigint), 32, '0'), 'growth-' || i, 'growth-0', NULL,"
            " 'normal', $3::integer, $4::float8, $4::float8 + $3::integer, $5::text,"
            " decode(repeat('00', 186), 'hex') FROM generate_series(0, $1::bigint - 1) i",
            messages,
            agents,
            FAR_TTL,
            now,
            HEADERS,
        )
        await connection.execute("ANALYZE")
    finally:
        await connection.close()


# Measuring ---------------------------------------------------------------------------------


def postgres_cpu_seconds() -> float:
    """CPU seconds used so far by every PostgreSQL server process on this machine."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "postgres":
                    total += process_cpu_seconds(int(entry.name))
            except OSError:
                continue  # gone meanwhile
    return total


async def backlog_delivery(port: int, count: int, connections: int = 32) -> dict[str, Any]:
    """Store `count` messages for one user agent, then time its reconnection."""
    loop = asyncio.get_running_loop()
    agent, endpoint = await connect_agent(port)
    uaid = agent.uaid
    assert agent.transport is not None
    agent.transport.close()
    from tidings.webpush import VapidKey, sign_vapid

    vapid = sign_vapid(VapidKey.generate(), endpoint, "mailto:bench@example.com").authorization
    head = (
        f"POST {endpoint.split(str(port), 1)[1]} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"TTL: 3600\r\nContent-Encoding: aes128gcm\r\nAuthorization: {vapid}\r\n"
        f"Content-Length: {len(AES128GCM_HEADER) + 8 + 32}\r\n\r\n"
    ).encode()
    idle: asyncio.Queue[Poster] = asyncio.Queue()
    answered: dict[int, int] = {}
    posters = []
    await asyncio.sleep(0.2)  # the service has seen the agent go
    for _ in range(connections):
        _, poster = await loop.create_connection(lambda: Poster(idle, answered), "127.0.0.1", port)
        posters.append(poster)
    started = time.monotonic()
    for seq in range(count):
        body = AES128GCM_HEADER + seq.to_bytes(8, "big", signed=True) + b"\0" * 32
        (await idle.get()).post(seq, head + body)
    while len(answered) < count:
        await asyncio.sleep(0.01)
    stored_in = time.monotonic() - started
    failures = sum(p.failures for p in posters)
    for poster in posters:
        assert poster.transport is not None
        poster.transport.close()
    _, agent = await loop.create_connection(Agent, "127.0.0.1", port)
    assert agent.transport is not None
    from rawws import HANDSHAKE

    agent.transport.write(HANDSHAKE.format(host=f"127.0.0.1:{port}").encode())
    assert await agent.upgraded
    hello_at = time.monotonic()
    reply = await agent.ask({"messageType": "hello", "use_webpush": True, "uaid": uaid})
    assert reply.get("uaid") == uaid, reply
    deadline = hello_at + 60
    while len(agent.received) < count and time.monotonic() < deadline:
        await asyncio.sleep(0.002)
    delivered_in = time.monotonic() - hello_at
    agent.transport.close()
    return {
        "backlog": count,
        "stored_in_s": round(stored_in, 2),
        "store_failures": failures,
        "delivered": len(agent.received),
        "delivered_in_s": round(delivered_in, 3),
    }


def start_service(port: int, db: str, work: Path, log: Path) -> subprocess.Popen[bytes]:
    keys = work / "token-keys.json"  # a PostgreSQL store wants its nodes' shared key file
    if not keys.exists():
        subprocess.run([sys.executable, "-m", "tidings", "keys", "token", "--out", str(keys)],
                       cwd=REPO, check=True, capture_output=True)  # fmt: skip
    out = log.open("wb")
    process = start_tidings(
        port, db, "--secrets", str(keys), stdout=out, stderr=out,
        env={**os.environ, **SERVICE_ENV},
    )  # fmt: skip
    wait_healthy(port, process, timeout=120)
    return process


async def compare(kind: str, urls: dict[str, str], args: argparse.Namespace, work: Path) -> dict:
    rate = args.sqlite_rate if kind == "sqlite" else args.postgres_rate
    services: dict[str, tuple[int, subprocess.Popen[bytes]]] = {}
    rows: list[dict[str, Any]] = []
    backlogs: dict[str, dict[str, Any]] = {}
    try:
        for name, url in urls.items():
            port = free_port()
            services[name] = (port, start_service(port, url, work, work / f"{kind}-{name}.log"))
        for round_number in range(1, args.rounds + 1):
            for deliver in (True, False):
                for name, (port, process) in services.items():
                    pg_before = postgres_cpu_seconds() if kind == "postgres" else 0.0
                    result = await run_rate(
                        port, rate, args.duration, args.connections, process.pid,
                        args.agents, deliver,
                    )  # fmt: skip
                    pg_cpu = postgres_cpu_seconds() - pg_before if kind == "postgres" else 0.0
                    row = {
                        "store": kind, "contents": name, "round": round_number,
                        "path": "delivered" if deliver else "stored",
                        "pg_cpu_us_per_push": round(1e6 * pg_cpu / result["sent"], 1),
                        **{k: v for k, v in result.items() if k != "latencies_ms"},
                    }  # fmt: skip
                    rows.append(row)
                    print(
                        f"{kind} {name:5} {row['path']:9} round {round_number}: "
                        f"{result['achieved_rate']}/s of {rate:g}, {result['failures']} non-201, "
                        f"service {result['service_cpu_us_per_push']} µs/push"
                        + (f", postgres {row['pg_cpu_us_per_push']} µs/push" if pg_cpu else "")
                        + f", POST p50 {result['post_p50_ms']} / p99 {result['post_p99_ms']} ms"
                        f", load {os.getloadavg()[0]:.2f}",
                        flush=True,
                    )
        for name, (port, _) in services.items():
            backlogs[name] = await backlog_delivery(port, args.backlog)
            print(f"{kind} {name:5} backlog: {backlogs[name]}", flush=True)
    finally:
        for _, process in services.values():
            process.send_signal(signal.SIGTERM)
            process.wait(30)
    return {"rows": rows, "backlogs": backlogs}


def summarise(kind: str, outcome: dict[str, Any]) -> None:
    rows = outcome["rows"]
    print(f"\n{kind}: medians over rounds")
    print("| path | contents | achieved/s | service µs/push | PostgreSQL µs/push |"
          " POST p50 / p99 (ms) | full / empty (CPU per push) |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---:|")

    def median(values: list[float]) -> float:
        ordered = sorted(values)
        middle = len(ordered) // 2
        return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2

    for path in ("delivered", "stored"):
        cpu: dict[str, float] = {}
        for contents in ("empty", "full"):
            mine = [r for r in rows if r["path"] == path and r["contents"] == contents]
            service = median([r["service_cpu_us_per_push"] for r in mine])
            database = median([r["pg_cpu_us_per_push"] for r in mine])
            cpu[contents] = service + database  # the service and PostgreSQL's processes
            ratio = f"{cpu['full'] / cpu['empty']:.2f}" if contents == "full" else ""
            print(
                f"| {path} | {contents} | {median([r['achieved_rate'] for r in mine]):.0f} | "
                f"{service:.0f} | {database:.0f} | "
                f"{median([r['post_p50_ms'] for r in mine]):.2f} / "
                f"{median([r['post_p99_ms'] for r in mine]):.2f} | {ratio} |"
            )
    for contents, backlog in outcome["backlogs"].items():
        print(
            f"backlog ({contents} store): {backlog['delivered']}/{backlog['backlog']} delivered "
            f"in {backlog['delivered_in_s']} s after the hello "
            f"(stored in {backlog['stored_in_s']} s)"
        )


async def main(args: argparse.Namespace) -> None:
    load_before = os.getloadavg()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="tidings-growth-") as tmp:
        work = Path(tmp)
        for kind in args.stores.split(","):
            filling = time.monotonic()
            if kind == "sqlite":
                urls = {"empty": str(work / "empty.db"), "full": str(work / "full.db")}
                for url in urls.values():
                    await create_schema(url)
                fill_sqlite(Path(urls["full"]), args.messages)
            else:
                urls = {name: pg_url(name) for name in PG_DATABASES}
                for database in PG_DATABASES.values():
                    await pg_admin(
                        f"DROP DATABASE IF EXISTS {database}", f"CREATE DATABASE {database}"
                    )
                for url in urls.values():
                    await create_schema(url)
                await fill_postgres(urls["full"], args.messages, args.subscriptions)
            print(f"{kind}: filled in {time.monotonic() - filling:.0f} s", flush=True)
            try:
                results[kind] = await compare(kind, urls, args, work)
            finally:
                if kind == "postgres" and not args.keep:
                    await pg_admin(
                        *(
                            f"DROP DATABASE IF EXISTS {d} WITH (FORCE)"
                            for d in PG_DATABASES.values()
                        )
                    )
    for kind, outcome in results.items():
        summarise(kind, outcome)
    load_after = os.getloadavg()
    print(
        f"\n{time.strftime('%Y-%m-%d %H:%M')} UTC on {os.cpu_count()} cores; load average "
        f"before {load_before[0]:.2f}, after {load_after[0]:.2f}; "
        f"CPU pressure after: {cpu_pressure()}"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stores", default="sqlite,postgres")
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--subscriptions", type=int, default=10_000_000)
    parser.add_argument("--sqlite-rate", type=float, default=1500.0, help="pushes/s offered")
    parser.add_argument("--postgres-rate", type=float, default=200.0, help="pushes/s offered")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=2, help="empty/full alternations")
    parser.add_argument("--agents", type=int, default=100, help="subscriptions sharing the load")
    parser.add_argument("--connections", type=int, default=64, help="POST keep-alives")
    parser.add_argument("--backlog", type=int, default=10_000, help="messages for one agent")
    parser.add_argument("--keep", action="store_true", help="keep the PostgreSQL databases")
    parser.add_argument("--json", help="write every measurement here")
    import uvloop

    uvloop.run(main(parser.parse_args()))
