"""Scale-out figures (issue 7): accepted and delivered pushes per second with
  * one node on SQLite (its default `synchronous=NORMAL`: a commit is not flushed),
  * one node on SQLite with `--sqlite-synchronous full` (each commit flushed),
  * one node on PostgreSQL (group commit, the default),
  * one node on PostgreSQL without group commit (`group_commit=off`: each push and each
    batch of acknowledgements its own transaction, as before),
  * two nodes on PostgreSQL + Redis (agents and posts spread over both nodes, so about
    half the deliveries cross from one node to the other through Redis),
all in one run; and, with --bus, Redis pub/sub against Redis streams as the bus.

    python bench/scaleout.py [--duration 8] [--connections 32] [--agents 200] [--bus]

Needs `wrk`, PostgreSQL on 127.0.0.1:5432 (database `test` to create a scratch one
in) and Redis on 127.0.0.1:6379. Posts are made by wrk (bench/service_load.py's
runner); user agents are WebSocket clients in other processes that acknowledge all.
CPU per accepted push, from /proc: of the node processes (all; the busiest alone in
`node_max_us`), of the PostgreSQL backends serving the setup's database (not the WAL
writer or the checkpointer), of Redis, of the agents' processes and of wrk (its reaped
children's rusage); `cores`: all of these together, in CPU seconds per second. Each
setup has a database of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "bench"))

from benchkit import free_port, start_tidings, wait_port  # noqa: E402
from service_load import AGENTS_CODE, run_wrk  # noqa: E402
from tidings.webpush import VapidKey, encrypt  # noqa: E402

PG = "postgresql://postgres@127.0.0.1:5432"
PUBLIC = "http://push.bench"


def psql(sql: str) -> None:
    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(f"{PG}/test")
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run())


def start_node(
    workdir: Path, name: str, args: list[str], profile_to: str | None = None
) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    node = start_tidings(
        port, workdir / name / "t.db", "--public-url", PUBLIC, "--node-id", name, *args,
        stdout=subprocess.DEVNULL, profile_to=profile_to,
        stderr=open(workdir / f"{name}.log", "wb"),  # noqa: SIM115 - lives with the node
    )  # fmt: skip
    wait_port(port)
    time.sleep(0.3)
    return node, port


def cpu_seconds(pids: list[int]) -> dict[int, float]:
    """User + system CPU seconds of each process still alive."""
    seconds: dict[int, float] = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        seconds[pid] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return seconds


def postgres_backends(database: str) -> list[int]:
    """The server processes serving `database` (the nodes' pools)."""
    import asyncpg

    async def run() -> list[int]:
        conn = await asyncpg.connect(f"{PG}/test")
        try:
            rows = await conn.fetch("SELECT pid FROM pg_stat_activity WHERE datname = $1", database)
            return [row["pid"] for row in rows]
        finally:
            await conn.close()

    return asyncio.run(run())


def database_commits(database: str) -> int:
    """Transactions committed in `database` so far (PostgreSQL's statistics)."""
    import asyncpg

    async def run() -> int:
        conn = await asyncpg.connect(f"{PG}/test")
        try:
            await conn.execute("SELECT pg_stat_clear_snapshot()")
            value = await conn.fetchval(
                "SELECT xact_commit FROM pg_stat_database WHERE datname = $1", database
            )
            return int(value or 0)
        finally:
            await conn.close()

    return asyncio.run(run())


def redis_commands() -> int:
    """Commands Redis has processed so far (all clients)."""
    import redis

    try:
        return int(redis.Redis().info("stats")["total_commands_processed"])
    except (redis.RedisError, OSError, KeyError):
        return 0


def redis_pid() -> int | None:
    """The Redis server's process (on this machine), for its CPU."""
    import redis

    try:
        return int(redis.Redis().info("server")["process_id"])
    except (redis.RedisError, OSError, KeyError):
        return None


def children_cpu() -> float:
    """CPU seconds of this process's reaped children (the wrk runs)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_setup(label: str, node_args: list[str], n_nodes: int, args: argparse.Namespace,
              workdir: Path, database: str) -> dict[str, float]:  # fmt: skip
    profile = args.profile and f"{args.profile}/{label}-{n_nodes}.prof"
    # With --profile, the first node runs under cProfile (the others as usual).
    nodes = [
        start_node(workdir, f"{label}-{i}", node_args, None if i else profile)
        for i in range(n_nodes)
    ]
    agent_procs = []
    endpoints: list[str] = []
    try:
        for _, port in nodes:
            proc = subprocess.Popen(
                [sys.executable, "-c", AGENTS_CODE, "127.0.0.1", str(port),
                 str(args.agents // n_nodes), "1"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            )  # fmt: skip
            assert proc.stdout is not None
            endpoints += json.loads(proc.stdout.readline())
            agent_procs.append(proc)
        paths = [e.removeprefix(PUBLIC) for e in endpoints]
        body = encrypt(b"x" * 100, VapidKey.generate().public_key_bytes, os.urandom(16))
        headers = {"TTL": "60", "Content-Encoding": "aes128gcm"}
        for proc in agent_procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        results: list[dict[str, float]] = []
        node_pids = [node.pid for node, _ in nodes]
        others = {"redis": [redis_pid() or 0], "agents": [proc.pid for proc in agent_procs]}
        nodes_before = cpu_seconds(node_pids)
        each_before = {pid: cpu_seconds([pid]).get(pid, 0.0) for pid in node_pids}
        others_before = {name: cpu_seconds(pids) for name, pids in others.items()}
        pg_before = cpu_seconds(postgres_backends(database))
        commits_before = database_commits(database)
        redis_before = redis_commands()
        wrk_before = children_cpu()

        def load(port: int, offset: int) -> None:
            mine = paths[offset:] + paths[:offset]  # every node posts to every agent
            results.append(
                run_wrk(f"http://127.0.0.1:{port}", mine, headers, body, args.duration,
                        max(1, args.connections // n_nodes), workdir / f"wrk{port}")
            )  # fmt: skip

        threads = []
        for i, (_, port) in enumerate(nodes):
            (workdir / f"wrk{port}").mkdir()
            threads.append(threading.Thread(target=load, args=(port, i * 7)))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wrk_cpu = children_cpu() - wrk_before
        nodes_after = cpu_seconds(node_pids)
        nodes_cpu = sum(nodes_after.values()) - sum(nodes_before.values())
        node_max = max(nodes_after[pid] - each_before[pid] for pid in node_pids)
        others_cpu = {
            name: sum(cpu_seconds(pids).values()) - sum(others_before[name].values())
            for name, pids in others.items()
        }
        pg_after = cpu_seconds(postgres_backends(database))
        commits = database_commits(database) - commits_before
        redis_calls = redis_commands() - redis_before
        pg_cpu = sum(t - pg_before.get(pid, 0.0) for pid, t in pg_after.items())
        time.sleep(1.0)  # the last deliveries land
        delivered = 0
        for proc in agent_procs:
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write("stop\n")
            proc.stdin.flush()
            delivered += json.loads(proc.stdout.readline())["delivered"]
        total = sum(r["total"] for r in results)
        bad = sum(r["non2xx"] for r in results)
        accepted = max(1, total - bad)
        return {
            "node_us": nodes_cpu / accepted * 1e6,
            "pg_us": pg_cpu / accepted * 1e6,
            "node_max_us": node_max / accepted * 1e6,  # the busiest node
            "redis_us": others_cpu["redis"] / accepted * 1e6,
            # PostgreSQL transactions and Redis commands per accepted push
            "pg_xacts": commits / accepted,
            "redis_calls": redis_calls / accepted,
            "agents_us": others_cpu["agents"] / accepted * 1e6,
            "wrk_us": wrk_cpu / accepted * 1e6,
            "cpu_cores": (nodes_cpu + pg_cpu + wrk_cpu + sum(others_cpu.values())) / args.duration,
            "accepted_per_s": (total - bad) / args.duration,
            "non2xx": bad,
            "delivered_per_s": delivered / args.duration,
            "p50_ms": max(r["p50_ms"] for r in results),
            "p99_ms": max(r["p99_ms"] for r in results),
        }
    finally:
        for proc in agent_procs:
            proc.kill()
        for node, _ in nodes:
            node.send_signal(signal.SIGTERM)
            node.wait(20)


async def bus_compare(count: int = 20000, producers: int = 32, size: int = 700) -> None:
    """Redis pub/sub vs streams as the node-to-node channel: one round trip per message
    (as a route is), `producers` at a time, one consumer; messages/s until all arrived."""
    import redis.asyncio as aioredis

    client = aioredis.Redis()
    consumer = aioredis.Redis()
    payload = b"x" * size
    prefix = f"bench-{secrets.token_hex(3)}:"

    async def produce(send: object) -> None:
        per = count // producers

        async def one() -> None:
            for _ in range(per):
                await send()  # type: ignore[operator]

        await asyncio.gather(*(one() for _ in range(producers)))

    # pub/sub
    pubsub = consumer.pubsub()
    await pubsub.subscribe(prefix + "ch")
    await pubsub.get_message(timeout=1)
    received = 0
    done = asyncio.Event()

    async def listen() -> None:
        nonlocal received
        async for item in pubsub.listen():
            if item["type"] == "message":
                received += 1
                if received >= (count // producers) * producers:
                    done.set()
                    return

    task = asyncio.create_task(listen())
    t0 = time.perf_counter()
    await produce(lambda: client.publish(prefix + "ch", payload))
    await done.wait()
    pub_rate = received / (time.perf_counter() - t0)
    task.cancel()
    await pubsub.aclose()

    # streams (XADD with MAXLEN, XREAD BLOCK)
    stream = prefix + "stream"
    got = 0
    total = (count // producers) * producers

    async def read() -> None:
        nonlocal got
        last = "0-0"
        while got < total:
            answer = await consumer.xread({stream: last}, count=1000, block=1000)
            for _, entries in answer:
                got += len(entries)
                last = entries[-1][0]

    reader = asyncio.create_task(read())
    t0 = time.perf_counter()
    await produce(lambda: client.xadd(stream, {"m": payload}, maxlen=100000, approximate=True))
    await reader
    stream_rate = got / (time.perf_counter() - t0)
    await client.delete(stream)
    await client.aclose()
    await consumer.aclose()
    print(f"bus: pub/sub {pub_rate:,.0f} msg/s, streams {stream_rate:,.0f} msg/s "
          f"({total} messages of {size} B, {producers} concurrent producers)")  # fmt: skip


async def store_only(database: str, clients: int, pushes: int) -> None:
    """The PostgreSQL store alone (no HTTP): `clients` tasks each storing and then
    deleting (as an ack) `pushes` messages, with and without group commit."""
    from tidings.service.store.base import MessageQuota, StoredMessage, SubscriptionRecord
    from tidings.service.store.postgres import PostgresStore, store_from_url

    print(f"{'store variant':24} {'push+ack/s':>11} {'PG us/push':>11} {'batches':>8}")
    for label, options in [
        ("no group commit", "group_commit=off"),
        ("group commit, 1 writer", "group_writers=1"),
        ("group commit, 2 writers", "group_writers=2"),
        ("group commit, 4 writers", "group_writers=4"),
    ]:
        store = store_from_url(f"{PG}/{database}?pool_max=10&{options}")
        await store.open()
        for i in range(clients):
            await store.add_subscription(SubscriptionRecord(f"ua{i}", "ch", None, time.time()))

        async def client(i: int, store: PostgresStore = store) -> None:
            for _ in range(pushes):
                now = time.time()
                message = StoredMessage(secrets.token_hex(16), f"ua{i}", "ch", b"x" * 100, 60,
                                        now, now + 60)  # fmt: skip
                await store.store_message(message, quota=MessageQuota())
                await store.delete_messages([(message.uaid, message.message_id)])

        backends = await asyncio.to_thread(postgres_backends, database)
        before = cpu_seconds(backends)
        started = time.perf_counter()
        await asyncio.gather(*(client(i) for i in range(clients)))
        elapsed = time.perf_counter() - started
        after = cpu_seconds(await asyncio.to_thread(postgres_backends, database))
        pg_cpu = sum(t - before.get(pid, 0.0) for pid, t in after.items())  # new ones too
        total = clients * pushes
        batches = store._commits.batches if store._commits is not None else 0
        print(f"{label:24} {total / elapsed:>11,.0f} {pg_cpu / total * 1e6:>11,.0f} "
              f"{batches:>8,}", flush=True)  # fmt: skip
        await store.close()


async def route_only(rounds: int, concurrent: int) -> None:
    """The cluster's Redis path alone, in this process: node A routes `concurrent`
    pushes at a time (as concurrent requests do) to user agents held by node B, which
    hands them to stub connections, and a rate-limit bucket of each is taken as the
    pushes' are; client CPU (both nodes) per push routed and received."""
    from tidings.service.cluster.redis_bus import RedisBus
    from tidings.service.limits import Limit, RedisRateLimiter, Rule
    from tidings.service.store.base import StoredMessage

    url = f"redis://127.0.0.1:6379/0?prefix=tidings-bench-{secrets.token_hex(3)}:"
    a, b = RedisBus(url, node_id="a"), RedisBus(url, node_id="b")
    limiter = RedisRateLimiter(url.split("?")[0], {Limit.PUSH_SUBSCRIPTION: Rule(9.0, 600.0)},
                               prefix=url.split("prefix=")[1])  # fmt: skip
    received = 0
    done = asyncio.Event()
    total = rounds * concurrent

    class Held:
        exclusive = True

        def __init__(self, uaid: str) -> None:
            self.uaid: str | None = uaid

        def accepts(self, message: StoredMessage) -> bool:
            return True

        def offer(self, message: StoredMessage) -> None:
            nonlocal received
            received += 1
            if received == total:
                done.set()

        def withdraw(self, message_id: str) -> None:
            return None

        async def close(self, code: int, reason: str) -> None:
            return None

    async def redeliver(uaid: str, since: float) -> None:
        return None

    for bus in (a, b):
        await bus.start(redeliver)
    agents = [f"ua{i}" for i in range(50)]  # 8 pushes a second each
    for uaid in agents:
        b.hub.attach(uaid, Held(uaid))
    await asyncio.sleep(0.5)  # the claims are in Redis

    async def push(n: int) -> None:
        uaid = agents[n % len(agents)]
        await limiter.acquire(Limit.PUSH_SUBSCRIPTION, uaid)
        now = time.time()
        message = StoredMessage(f"m{n}", uaid, "ch", b"x" * 100, 60, now, now + 60)
        assert await a.route(message)

    usage = resource.getrusage(resource.RUSAGE_SELF)
    started, cpu = time.perf_counter(), usage.ru_utime + usage.ru_stime
    for r in range(rounds):
        await asyncio.gather(*(push(r * concurrent + i) for i in range(concurrent)))
        await asyncio.sleep(1 / 50)  # 50 rounds a second: each bucket's steady rate
    await asyncio.wait_for(done.wait(), 30)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    elapsed, cpu = time.perf_counter() - started, usage.ru_utime + usage.ru_stime - cpu
    print(f"route-only: {total} pushes, {cpu / total * 1e6:.0f} us of client CPU per push "
          f"routed and received, {a._routes.batches} route calls, "
          f"{limiter.round_trips()} bucket calls, {elapsed:.1f} s")  # fmt: skip
    for bus in (a, b):
        await bus.stop()
    await limiter.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=int, default=8)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--agents", type=int, default=200)
    parser.add_argument("--bus", action="store_true", help="also compare pub/sub and streams")
    parser.add_argument(
        "--only", default="", help="only the setups whose label has one of these (|-separated)"
    )
    parser.add_argument(
        "--pg-options", default="", help="appended to the store URL, e.g. &synchronous_commit=off"
    )
    parser.add_argument(
        "--profile",
        default="",
        help="a directory: the first node of each setup runs under cProfile",
    )
    parser.add_argument(
        "--store-only", action="store_true", help="the PostgreSQL store's variants alone"
    )
    parser.add_argument(
        "--route-only", action="store_true", help="the cluster's Redis path alone, in-process"
    )
    args = parser.parse_args()
    if args.route_only:
        asyncio.run(route_only(rounds=400, concurrent=8))
        return
    if args.bus:
        asyncio.run(bus_compare())
    database = "tidings_bench_" + secrets.token_hex(4)
    psql(f"CREATE DATABASE {database}")
    if args.store_only:
        try:
            asyncio.run(store_only(database, args.connections, 100))
        finally:
            psql(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
        return
    prefix = f"tidings-bench-{secrets.token_hex(3)}:"
    psql(f"DROP DATABASE {database}")  # each setup makes its own (below)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            keys = workdir / "keys.json"
            subprocess.run([sys.executable, "-m", "tidings", "keys", "token", "--out", str(keys)],
                           cwd=REPO, check=True, capture_output=True)  # fmt: skip
            pg = ["--store", "{store}", "--secrets", str(keys)]
            unbatched = ["--store", "{store}&group_commit=off", "--secrets", str(keys)]
            setups = [
                ("1 node, SQLite", [], 1),
                # Each commit flushed, as PostgreSQL's: SQLite's default (NORMAL) is not.
                ("1 node, SQLite, synchronous=full", ["--sqlite-synchronous", "full"], 1),
                ("1 node, PostgreSQL", pg, 1),
                ("1 node, PG, no group commit", unbatched, 1),
                ("2 nodes, PostgreSQL + Redis",
                 [*pg, "--cluster", f"redis://127.0.0.1:6379/0?prefix={prefix}"], 2),
            ]  # fmt: skip
            print(f"{'setup':32} {'accepted/s':>11} {'delivered/s':>12} {'p50 ms':>7} "
                  f"{'p99 ms':>7} {'non-2xx':>8} {'node us/push':>13} "
                  f"{'PG us/push':>11} {'Redis':>6} {'agents':>7} {'wrk':>5} "
                  f"{'cores':>6} {'xact/push':>9} {'Redis cmd/push':>14} "
                  f"{'busiest node us':>15}")  # fmt: skip
            for i, (label, node_args, n) in enumerate(setups):
                if args.only and not any(word in label for word in args.only.split("|")):
                    continue
                # A database of its own: no setup inherits another's dead rows.
                own = f"{database}_{i}"
                psql(f"CREATE DATABASE {own}")
                store = f"{PG}/{own}?pool_max=10{args.pg_options}"
                try:
                    r = run_setup(f"s{i}", [a.format(store=store) for a in node_args], n, args,
                                  workdir, own)  # fmt: skip
                finally:
                    psql(f"DROP DATABASE IF EXISTS {own} WITH (FORCE)")
                print(f"{label:32} {r['accepted_per_s']:>11,.0f} {r['delivered_per_s']:>12,.0f} "
                      f"{r['p50_ms']:>7.1f} {r['p99_ms']:>7.1f} {r['non2xx']:>8,.0f} "
                      f"{r['node_us']:>13,.0f} {r['pg_us']:>11,.0f} {r['redis_us']:>6,.0f} "
                      f"{r['agents_us']:>7,.0f} {r['wrk_us']:>5,.0f} {r['cpu_cores']:>6.2f} "
                      f"{r['pg_xacts']:>9.3f} {r['redis_calls']:>14.3f} {r['node_max_us']:>15,.0f}",
                      flush=True)  # fmt: skip
    finally:
        psql(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")


if __name__ == "__main__":
    main()
