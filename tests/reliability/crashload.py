"""Kill the service with SIGKILL under a steady push load, restart it, check every message.

One run: a `tidings serve` process, a user agent (WebSocket, acknowledging what it gets)
with a few subscriptions, and concurrent senders pushing numbered, encrypted messages.
Each cycle starts the service, lets the load run for a random moment, then kills the
process mid-flight. At the end the service is started once more and the user agent
collects what is left. The verdict:

- every push answered 201 with TTL > 0 was delivered (at least once);
- nothing was delivered that was not sent, nor anything that was refused (4xx/5xx);
  pushes whose answer was lost in the kill may or may not arrive.

Used by tests/reliability/test_crash.py (20 cycles) and bench/crash.py (as many as asked).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from support.service import Registration, ServiceProcess, TestAgent
from tidings.webpush import encrypt

CONFIG = """\
max_messages_per_user_agent = 100000
max_messages_per_subscription = 100000
max_bytes_per_user_agent = 1099511627776
rate_push_subscription = "off"
rate_push_address = "off"
rate_push_vapid_key = "off"
log_level = "warning"
"""


@dataclass
class CrashReport:
    """What a run did and found."""

    cycles: int = 0
    signal_name: str = "SIGKILL"
    sent: int = 0  # push requests started
    accepted: int = 0  # answered 201 with TTL > 0: must be delivered
    accepted_ttl0: int = 0  # answered 201 with TTL 0: may be delivered
    refused: int = 0  # answered with another status: must not be delivered
    unanswered: int = 0  # the kill came first: may or may not be delivered
    statuses: dict[int, int] = field(default_factory=dict)  # answers by status
    exit_codes: list[int] = field(default_factory=list)  # of each stopped process
    delivered: int = 0  # distinct messages the user agent got
    duplicates: int = 0  # deliveries of a message already delivered (at least once)
    missing: list[str] = field(default_factory=list)  # accepted, never delivered
    unexpected: list[str] = field(default_factory=list)  # delivered, never accepted
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.missing and not self.unexpected

    def summary(self) -> str:
        return (
            f"{self.cycles} {self.signal_name} cycles in {self.seconds:.1f} s: {self.sent} pushes, "
            f"{self.accepted} accepted with TTL > 0 (all must arrive), {self.accepted_ttl0} "
            f"with TTL 0, {self.refused} refused, {self.unanswered} cut off by the kill; "
            f"{self.delivered} delivered ({self.duplicates} redelivered); "
            f"missing {len(self.missing)}, unexpected {len(self.unexpected)}"
        )


class _Ledger:
    """Every push's fate, and every delivery."""

    def __init__(self) -> None:
        self.must: set[str] = set()
        self.may: set[str] = set()
        self.refused: set[str] = set()
        self.ttl0: set[str] = set()
        self.unanswered: set[str] = set()
        self.statuses: dict[int, int] = {}
        self.sent = 0
        self.delivered: set[str] = set()
        self.duplicates = 0

    def received(self, text: str) -> None:
        if text in self.delivered:
            self.duplicates += 1
        self.delivered.add(text)


async def _collect(agent: TestAgent, ledger: _Ledger) -> None:
    """Take notifications (acknowledging each) until the connection ends."""
    while True:
        try:
            notification = await agent.next_notification(timeout=0.2)
        except TimeoutError:
            if agent.closed.is_set():
                return
            continue
        except Exception:  # the service was killed while acknowledging
            return
        ledger.received((notification.plaintext or b"").decode())


async def _sender(
    client: httpx.AsyncClient,
    registrations: list[Registration],
    ledger: _Ledger,
    stop: asyncio.Event,
    name: str,
    rng: random.Random,
    max_pushes: int,
) -> None:
    for number in range(max_pushes):
        if stop.is_set():
            return
        registration = rng.choice(registrations)
        text = f"{name}.{number}"
        ttl = 0 if rng.random() < 0.1 else 600
        keys = registration.subscription_info()["keys"]
        body = encrypt(text.encode(), keys["p256dh"], keys["auth"])
        ledger.sent += 1
        ledger.may.add(text)
        try:
            response = await client.post(
                registration.endpoint,
                content=body,
                headers={"ttl": str(ttl), "content-encoding": "aes128gcm"},
            )
        except httpx.HTTPError:
            ledger.unanswered.add(text)
            return  # the service is gone
        ledger.statuses[response.status_code] = ledger.statuses.get(response.status_code, 0) + 1
        if response.status_code == 201 and ttl > 0:
            ledger.must.add(text)
        elif response.status_code == 201:
            ledger.ttl0.add(text)
        else:
            ledger.may.discard(text)
            ledger.refused.add(text)


async def _connect(process: ServiceProcess, template: TestAgent | None) -> TestAgent:
    agent = TestAgent(process.ws_url)
    await agent.connect(template.uaid if template else None)
    if template is not None:
        agent.registrations = template.registrations
    return agent


async def run_crash_cycles(
    data_dir: Path,
    cycles: int,
    *,
    senders: int = 6,
    subscriptions: int = 4,
    load_seconds: tuple[float, float] = (0.3, 0.9),
    max_pushes_per_cycle: int = 2000,
    seed: int | None = None,
    kill_signal: int = signal.SIGKILL,
) -> CrashReport:
    """Run `cycles` kill/restart cycles under load, then check every message.

    With `kill_signal=signal.SIGTERM` the cycles test draining instead of crashing.
    """
    exit_codes: list[int] = []
    rng = random.Random(seed)
    data_dir.mkdir(parents=True, exist_ok=True)
    config = data_dir / "crash.toml"
    config.write_text(CONFIG)
    process = ServiceProcess(data_dir / "service", args=["--config", str(config)])
    ledger = _Ledger()
    started = time.monotonic()
    template: TestAgent | None = None
    per_sender = max(1, max_pushes_per_cycle // senders)
    try:
        for cycle in range(cycles):
            await asyncio.to_thread(process.start)
            agent = await _connect(process, template)
            if template is None:
                for _ in range(subscriptions):
                    await agent.register()
            template = agent
            registrations = list(agent.registrations.values())
            collector = asyncio.create_task(_collect(agent, ledger))
            stop = asyncio.Event()
            limits = httpx.Limits(max_connections=senders)
            async with httpx.AsyncClient(timeout=5, limits=limits) as client:
                tasks = [
                    asyncio.create_task(
                        _sender(
                            client,
                            registrations,
                            ledger,
                            stop,
                            f"c{cycle}s{index}",
                            random.Random(rng.random()),
                            per_sender,
                        )
                    )
                    for index in range(senders)
                ]
                await asyncio.sleep(rng.uniform(*load_seconds))
                exit_codes.append(await asyncio.to_thread(process.stop, kill_signal))
                stop.set()
                await asyncio.gather(*tasks)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(collector, 5)
            with contextlib.suppress(Exception):
                await agent.close()
        # The last start: the user agent collects whatever is still stored.
        await asyncio.to_thread(process.start)
        agent = await _connect(process, template)
        collector = asyncio.create_task(_collect(agent, ledger))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not ledger.must <= ledger.delivered:
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)  # anything unexpected still on its way
        await agent.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(collector, 5)
    finally:
        await asyncio.to_thread(process.stop, signal.SIGTERM)
    allowed = ledger.may | ledger.must | ledger.ttl0
    return CrashReport(
        cycles=cycles,
        signal_name=signal.Signals(kill_signal).name,
        sent=ledger.sent,
        accepted=len(ledger.must),
        accepted_ttl0=len(ledger.ttl0),
        refused=len(ledger.refused),
        unanswered=len(ledger.unanswered),
        statuses=dict(sorted(ledger.statuses.items())),
        exit_codes=exit_codes,
        delivered=len(ledger.delivered),
        duplicates=ledger.duplicates,
        missing=sorted(ledger.must - ledger.delivered),
        unexpected=sorted(ledger.delivered - allowed),
        seconds=time.monotonic() - started,
    )
