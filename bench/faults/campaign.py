"""A seeded fault campaign against a three-node Tidings cluster (issue 22).

    sudo .venv/bin/python bench/faults/campaign.py --seed 7 --duration 120

Builds the hosts (topology.py), starts PostgreSQL with a synchronous replica, Redis and
three nodes on the PostgreSQL store and the Redis bus, runs user agents and senders
(workload.py), and meanwhile a nemesis injects faults on a schedule drawn from the seed:
SIGKILL and restart of a node, SIGSTOP/SIGCONT of a node, of Redis or of PostgreSQL,
black-hole partitions (node - Redis, node - PostgreSQL, node - user agents), latency and
loss (a narrow token bucket and random drops), a Redis restart with its data gone, one
PostgreSQL failover, and a full disk under the PostgreSQL primary's data directory. Then
it heals everything, waits for the nodes' /health, lets the backlog drain, and hands the
history to the checker (checker.py), which prints the table and every violation with the
faults around it. The same seed draws the same schedule; the history and the logs stay
in --out. Exit status 1 when a promise was broken. Needs root (namespaces, iptables,
tc).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from checker import check
from services import REPO, Node, Postgres, Redis
from topology import Network
from workload import Agent, History, Rfc8030Agent, Senders

# Faults after which frames a node wrote may still reach the user agents late.
LINK_FAULTS = ("partition-node-agents", "slow-lossy-node")
HOSTS = {"pg": 10, "pg2": 11, "redis": 20, "n1": 31, "n2": 32, "n3": 33}
NODES = ("n1", "n2", "n3")
FAULTS = (
    "kill-node",
    "pause-node",
    "pause-redis",
    "pause-postgres",
    "partition-node-redis",
    "partition-node-postgres",
    "partition-node-agents",
    "slow-lossy-node",
    "redis-data-loss",
    "postgres-failover",
    "disk-full-postgres",
)


@dataclass
class Fault:
    at: float
    name: str
    target: str
    held: float


class Nemesis:
    """Draws faults from the seed and applies and lifts them."""

    def __init__(
        self,
        rng: random.Random,
        network: Network,
        postgres: Postgres,
        redis: Redis,
        nodes: dict[str, Node],
        enabled: tuple[str, ...],
    ) -> None:
        self.rng = rng
        self.network = network
        self.postgres = postgres
        self.redis = redis
        self.nodes = nodes
        self.enabled = enabled
        self.log: list[Fault] = []

    async def run(self, duration: float, started: float) -> None:
        failover_done = False
        while time.time() - started < duration:
            await asyncio.sleep(self.rng.uniform(1.0, 3.0))
            name = self.rng.choice(self.enabled)
            if name == "postgres-failover":
                if failover_done:
                    continue
                failover_done = True
            target = self.rng.choice(NODES)
            held = self.rng.uniform(1.0, 4.0)
            fault = Fault(time.time() - started, name, target, held)
            self.log.append(fault)
            print(f"{fault.at:7.1f}s  {name:<24} {target if 'node' in name else ''}", flush=True)
            undo = await asyncio.to_thread(self._apply, fault)
            await asyncio.sleep(held)
            if undo is not None:
                await asyncio.to_thread(undo)

    def _apply(self, fault: Fault) -> object:
        node = self.nodes[fault.target]
        name = fault.name
        if name == "kill-node":
            node.process.kill()
            return node.start
        if name == "pause-node":
            node.process.pause()
            return node.process.resume
        if name == "pause-redis":
            self.redis.process.pause()
            return self.redis.process.resume
        if name == "pause-postgres":
            server = self.postgres.current
            if server is None:
                return None
            server.pause()
            return server.resume
        if name == "partition-node-redis":
            self.network.block(fault.target, "redis")
            return lambda: self.network.unblock(fault.target, "redis")
        if name == "partition-node-postgres":
            for db in ("pg", "pg2"):
                self.network.block(fault.target, db)
            return lambda: [self.network.unblock(fault.target, db) for db in ("pg", "pg2")]
        if name == "partition-node-agents":
            self.network.block("driver", fault.target)
            return lambda: self.network.unblock("driver", fault.target)
        if name == "slow-lossy-node":
            rate = self.rng.choice((64, 256))
            self.network.shape(
                fault.target, rate_kbit=rate, loss_percent=self.rng.choice((2.0, 10.0))
            )
            return lambda: self.network.unshape(fault.target)
        if name == "redis-data-loss":
            self.redis.restart_empty()
            return None
        if name == "postgres-failover":
            self.postgres.fail_over()
            return None
        if name == "disk-full-postgres":
            self.postgres.fill_disk(switch_wal=self.rng.random() < 0.5)
            return self.postgres.free_disk
        raise ValueError(name)


async def campaign(args: argparse.Namespace) -> int:
    rng = random.Random(args.seed)
    out = Path(args.out or tempfile.mkdtemp(prefix="tidings-faults-"))
    out.mkdir(parents=True, exist_ok=True)
    network = Network(HOSTS, lab=args.lab)
    postgres = Postgres(network, out / "pg")
    redis = Redis(network, out)
    nodes: dict[str, Node] = {}
    history = History()
    # SIGTERM (a CI timeout, `kill`) unwinds like Ctrl-C: the `finally` below stops the
    # processes, unmounts PostgreSQL's disks and removes the namespaces.
    main_task = asyncio.current_task()
    assert main_task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
    print(f"seed {args.seed}, {args.duration:g} s of faults, history and logs in {out}", flush=True)
    try:
        network.create()
        postgres.start()
        redis.start()
        secrets = out / "tidings-secrets.json"
        subprocess.run(
            [sys.executable, "-m", "tidings", "keys", "token", "--out", str(secrets)],
            check=True,
            env={"PYTHONPATH": str(REPO / "src")},
            capture_output=True,
        )
        for name in NODES:
            nodes[name] = Node(
                name, network, out, postgres.url, redis.url + "?prefix=faults:", secrets
            )
            nodes[name].start()
        origins = [node.origin for node in nodes.values()]
        agents: list[Agent | Rfc8030Agent] = [
            Agent(f"ua{i}", origins, history, random.Random(rng.random()))
            for i in range(args.agents)
        ]
        agents += [
            Rfc8030Agent(f"h2ua{i}", origins, history, random.Random(rng.random()))
            for i in range(args.rfc8030_agents)
        ]
        await asyncio.gather(*(agent.setup(2) for agent in agents))
        senders = Senders(agents, origins, history, random.Random(rng.random()))
        workers = [asyncio.create_task(agent.run()) for agent in agents]
        sending = asyncio.create_task(senders.run(args.rate))
        enabled = tuple(
            f for f in FAULTS if f not in args.without and (not args.only or f in args.only)
        )
        nemesis = Nemesis(random.Random(rng.random()), network, postgres, redis, nodes, enabled)
        started = time.time()
        history.add("nemesis-started")  # faults.json's times count from here
        await nemesis.run(args.duration, started)
        # Heal: every block and shaping lifted, every process running again.
        network.heal()
        postgres.free_disk()
        if not redis.process.alive:
            redis.start()
        for node in nodes.values():
            if node.process.paused:
                node.process.resume()
            if not node.process.alive:
                node.start()
        healed_at = time.time()
        print(f"{healed_at - started:7.1f}s  healed", flush=True)
        health_deadline = healed_at + args.health_within
        while not all(node.healthy() for node in nodes.values()):
            if time.time() > health_deadline:
                print("a node is still unhealthy", flush=True)
                break
            await asyncio.sleep(0.5)
        healthy_after = time.time() - healed_at
        await asyncio.sleep(args.after)  # pushes after healing too
        senders.stopping = True
        await sending
        await asyncio.sleep(args.drain)  # the backlog reaches the user agents
        for agent in agents:
            agent.stopping = True
        await asyncio.gather(*workers, return_exceptions=True)
        await senders.close()
        history.add("end")
    finally:
        for node in nodes.values():
            node.process.stop()
        redis.process.stop()
        postgres.stop()
        network.destroy()
    link_faults = [
        (nodes[f.target].origin, started + f.at, started + f.at + f.held)
        for f in nemesis.log
        if f.name in LINK_FAULTS
    ]
    # What the checker needs besides requests and deliveries, so that `checker.py <out>`
    # judges a saved run again.
    for node, start, until in link_faults:
        history.add("link-fault", node=node, start=start, until=until)
    history.add("healed", at=healed_at)
    history.dump(str(out / "history.jsonl"))
    (out / "faults.json").write_text(
        json.dumps([fault.__dict__ for fault in nemesis.log], indent=1)
    )
    verdict = check(history.events, healed_at, args.recovery, link_faults)
    print(f"\nfaults injected         {len(nemesis.log):>8}")
    print(f"nodes healthy after     {healthy_after:>7.1f}s")
    print(verdict.table())
    for kind, ids in verdict.violations.items():
        for message_id in ids[:20]:
            push = next(
                (e for e in history.events if e.get("id") == message_id and e["kind"] == "push"),
                None,
            )
            at = push["t"] - started if push else 0
            near = [f"{f.name}@{f.at:.1f}s" for f in nemesis.log if abs(f.at - at) < 10]
            via = push and push["node"]
            print(f"  {kind}: {message_id} at {at:.1f}s via {via}; faults near: {', '.join(near)}")
    if verdict.in_flight:
        print(f"  in flight (allowed): {', '.join(verdict.in_flight[:20])}")
    print(f"replay: campaign.py --seed {args.seed} --duration {args.duration:g}")
    return 0 if verdict.ok and healthy_after <= args.health_within else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--duration", type=float, default=60, help="seconds of faults")
    parser.add_argument("--agents", type=int, default=12, help="Firefox-protocol user agents")
    parser.add_argument("--rfc8030-agents", type=int, default=4, help="RFC 8030 user agents")
    parser.add_argument("--rate", type=float, default=40, help="pushes per second")
    parser.add_argument("--after", type=float, default=5, help="seconds of pushes after healing")
    parser.add_argument("--drain", type=float, default=15, help="seconds for the backlog")
    parser.add_argument("--health-within", type=float, default=30)
    parser.add_argument(
        "--recovery", type=float, default=10, help="seconds after healing a message may be lost in"
    )
    parser.add_argument("--without", nargs="*", default=[], choices=FAULTS)
    parser.add_argument("--only", nargs="*", default=[], choices=FAULTS, help="these faults alone")
    parser.add_argument("--out", help="directory for the history and logs")
    parser.add_argument(
        "--lab", type=int, default=0, choices=range(10),
        help="namespaces and subnet (198.18.<lab>.0/24) of their own: runs side by side",
    )  # fmt: skip
    sys.exit(asyncio.run(campaign(parser.parse_args())))


if __name__ == "__main__":
    main()
