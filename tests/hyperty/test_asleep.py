"""The asleep callee: no runtime process until the push starts one (real processes)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

from tidings.cli.demo_call import CallDemo

REPO = Path(__file__).resolve().parents[2]


def wake_processes() -> list[int]:
    """PIDs of running `python -m tidings.hyperty.wake` processes started by this test
    process (directly or through a shell): other runs' runtimes on the machine are not ours."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"tidings.hyperty.wake" in command and _descends_from_us(int(entry.name)):
            found.append(int(entry.name))
    return found


def _descends_from_us(pid: int) -> bool:
    ours = os.getpid()
    while pid > 1:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        pid = int(stat.rsplit(")", 1)[1].split()[1])  # the parent's pid
        if pid == ours:
            return True
    return False


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def test_the_push_starts_the_sleeping_runtime(tmp_path: Path) -> None:
    async with CallDemo(tmp_path, mode="asleep") as demo:
        assert demo.process is not None
        agent_pid = demo.process.pid
        before = demo.callee_events()
        # Set up and asleep: registered, but no runtime process exists.
        assert [e["event"] for e in before] == ["hyperty-created", "registered"]
        assert all(e["pid"] == os.getpid() for e in before)  # made by the set-up, now gone
        assert wake_processes() == []

        started = time.time()
        result = await demo.call()
        assert result.answer.code == 200 and result.answer.from_ == demo.callee_url

        events = demo.callee_events()[len(before) :]
        kinds = [e["event"] for e in events]
        assert kinds[:5] == ["runtime-started", "woken", "hyperty-created", "ring", "accepted"]
        woken_pid = events[0]["pid"]
        assert woken_pid not in (os.getpid(), agent_pid)
        assert all(e["pid"] == woken_pid for e in events)
        assert events[0]["at"] > started  # the process started after the call did
        assert events[2]["hyperty"] == demo.callee_url  # at its old address
        assert events[3]["caller"] == "Alice"
        assert result.callee_pid == woken_pid and result.wake_latency is not None
        assert 0 < result.wake_latency < 10

        # The runtime goes back to sleep: its process exits after answering.
        async with asyncio.timeout(5):
            while alive(woken_pid):
                await asyncio.sleep(0.02)

        # A second call starts another process.
        second = await demo.call()
        assert second.answer.code == 200
        assert second.callee_pid not in (None, woken_pid)
        steps = "\n".join(s.what for s in second.steps)
        assert "runtime process started by `tidings agent`" in steps
        assert "Connector rings: Alice is calling" in steps


async def test_an_asleep_callee_that_declines(tmp_path: Path) -> None:
    async with CallDemo(tmp_path, mode="asleep", answer="decline") as demo:
        result = await demo.call()
        assert (result.answer.code, result.answer.description) == (486, "Busy Here")


async def test_an_awake_runtime_process(tmp_path: Path) -> None:
    async with CallDemo(tmp_path, mode="awake") as demo:
        assert demo.process is not None
        for _ in range(2):
            result = await demo.call()
            assert result.answer.code == 200
            assert result.callee_pid == demo.process.pid  # no new process: woken in-process
    assert demo.process is None


def test_tidings_demo_call_prints_the_timeline(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tidings", "demo", "call", "--keep", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "asleep: no runtime process" in out
    assert "call 1: 200 OK" in out
    for text in (
        "caller   invites hyperty://example.com/",
        "element  pushed the create: 201 accepted, Urgency high, TTL 60, Topic ",
        "callee   runtime process started by `tidings agent`",
        "callee   Connector rings: Alice is calling (verified caller)",
        "caller   final answer 200 OK",
        "wake-up latency (invitation to the Connector's handler): ",
    ):
        assert text in out, out
    assert wake_processes() == []


def test_wake_processes_sees_our_runtimes_started_through_a_shell() -> None:
    """The helper above finds a wake process of ours, also behind `sh -c` as the agent runs it."""
    sleeper = f"{sys.executable} -c 'import time; time.sleep(60)' tidings.hyperty.wake"
    shell = subprocess.Popen(["sh", "-c", sleeper + "; true"])
    try:
        deadline = time.monotonic() + 30
        while not wake_processes() and time.monotonic() < deadline:
            time.sleep(0.02)
        found = wake_processes()
        assert len(found) == 1 and found[0] != shell.pid
    finally:
        shell.kill()
        for pid in wake_processes():
            os.kill(pid, 9)
        shell.wait()
