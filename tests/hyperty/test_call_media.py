"""The whole call with media: a caller runtime, the real push element and push service,
and a callee runtime that is asleep (no process until `tidings agent` starts one on the
push). Audio and video flow both ways over loopback ICE; hang-up by either side ends
both media; the callee's process exits and its runtime is pushed again afterwards."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hyperty.helpers import Stack, events_of, wait_for
from hyperty.test_asleep import REPO, alive, wake_processes
from tidings.cli.demo_call import CallDemo
from tidings.hyperty import HypertyRuntime, Message, object_url
from tidings.hyperty.rules import topic_for

pytest.importorskip("aiortc")
pytestmark = pytest.mark.timeout(180)


def _kinds(events: list[dict[str, Any]]) -> list[str]:
    return [e["event"] for e in events]


async def _exited(pid: int, within: float = 30.0) -> None:
    async with asyncio.timeout(within):
        while alive(pid):
            await asyncio.sleep(0.05)


async def test_a_call_with_media_to_a_sleeping_callee(tmp_path: Path) -> None:
    async with CallDemo(tmp_path, media=True, seconds=0.5) as demo:
        assert demo.caller is not None
        assert wake_processes() == []  # asleep: no runtime process
        result = await demo.call(timeout=60)
        assert result.answer.code == 200 and (result.answer.value or {}).get("media") is True
        assert result.media is not None
        for side in ("caller", "callee"):
            frames = result.media[side]["frames_received"]
            assert frames["audio"] > 0 and frames["video"] > 0, (side, result.media)
        assert result.media["caller"]["reason"] == "hung up"
        assert result.media["callee"]["reason"] == "hung up by the peer"
        report = result.report()
        for key in ("wake_ms", "answer_ms", "first_media_ms", "ice_connected_ms"):
            assert report[key] is not None and report[key] > 0, (key, report)
        assert report["wake_ms"] < report["answer_ms"] < report["first_media_ms"]

        # The media ran in the woken process, which held its message connection and
        # exits when the call ends: the runtime is asleep again.
        callee = result.callee_events
        pid = callee[0]["pid"]
        assert _kinds(callee)[:4] == ["runtime-started", "woken", "hyperty-created", "ring"]
        assert all(e["pid"] == pid for e in callee)
        assert {"media-started", "call-ended", "runtime-exit"} <= set(_kinds(callee))
        await _exited(pid)
        assert wake_processes() == []
        connection = object_url(result.callee_events[3]["connection"])
        caller_connector: Any = demo.caller.running(demo.caller_url)
        assert caller_connector.calls == {}  # both sides released the call
        assert caller_connector.ended[connection].media.stats.frames_received["video"] > 0
        assert not demo.caller.busy

        # The signals were reTHINK updates through the element, candidates loopback only.
        assert demo.element is not None
        steps = "\n".join(step.what for step in result.steps)
        for text in (
            "runtime process started by `tidings agent`",
            "ice connected",
            "first audio frame received",
            "first video frame received",
            "the callee runtime disconnected: pushed again from now on",
        ):
            assert text in steps, steps

        # Asleep again: the next call is pushed and starts another process (had the
        # element still counted the exited process as connected, the invitation would
        # wait on an inbox nobody reads and this call would time out).
        second = await demo.call(timeout=60)
        assert second.answer.code == 200 and second.media is not None
        assert second.callee_pid not in (None, pid)
        assert second.media["callee"]["frames_received"]["video"] > 0
        await _exited(second.callee_events[0]["pid"])


async def test_the_callee_hangs_up(tmp_path: Path) -> None:
    # The callee's Connector hangs up a moment after the first frames; the caller would
    # stay for a minute.
    async with CallDemo(
        tmp_path, media=True, seconds=60, callee_options={"hangup_seconds": 0.5}
    ) as demo:
        result = await demo.call(timeout=60)
        assert result.media is not None
        assert result.media["callee"]["reason"] == "hung up"
        assert result.media["caller"]["reason"] == "hung up by the peer"
        for side in ("caller", "callee"):
            assert result.media[side]["frames_received"]["audio"] > 0
        assert demo.caller is not None
        connector: Any = demo.caller.running(demo.caller_url)
        assert connector.calls == {} and not demo.caller.busy
        await _exited(result.callee_events[0]["pid"])
        assert wake_processes() == []
        # The caller got the callee's delete, which names the object in body.resource
        # and comes from the callee's hyperty (the object is the caller's).
        ended = [e for e in demo.caller.events() if e["event"] == "call-ended"]
        assert ended[-1]["reason"] == "hung up by the peer"


async def test_the_caller_cancels_before_the_answer(tmp_path: Path) -> None:
    async with CallDemo(tmp_path, media=True, callee_options={"ring_seconds": 120}) as demo:
        assert demo.caller is not None and demo.element is not None
        connector: Any = demo.caller.running(demo.caller_url)
        invitation = connector.invitation(demo.callee_url, media=True)
        answer = await connector.invite(invitation)
        assert answer is not None and answer.code == 100
        runtime = HypertyRuntime(None, demo.callee_state)

        def rung() -> list[dict[str, Any]]:
            return [e for e in runtime.events() if e["event"] == "ring"]

        async with asyncio.timeout(60):
            while not rung():
                await asyncio.sleep(0.05)
            # The ringing runtime takes its message connection: the cancel comes there.
            while demo.element.status(demo.callee_url) != "live":
                await asyncio.sleep(0.05)
        pid = rung()[0]["pid"]
        cancel = await connector.cancel(invitation)
        assert cancel is not None and cancel.code == 100
        assert (cancel.value or {}).get("replaced") == 1  # the pending invitation is gone
        await _exited(pid)
        events = runtime.events()
        kinds = _kinds(events)
        assert "missed" in kinds and "runtime-exit" in kinds
        assert "accepted" not in kinds and "media-started" not in kinds
        # The invitation was pushed with the Topic of its object, the one a pushed cancel
        # gets too (test_element: a cancel replaces a queued invitation).
        pushed = [e.detail for e in demo.events if e.kind == "pushed"]
        assert [d["topic"] for d in pushed if d["id"] == invitation.id] == [
            topic_for(object_url(invitation.from_))
        ]
        assert connector.calls == {}


def test_tidings_demo_call_media_json(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tidings", "demo", "call", "--media", "--seconds", "0.5", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    for key in ("wake_ms", "answer_ms", "first_media_ms"):
        assert report[key] > 0, report
    for side in ("caller", "callee"):
        assert report["frames_received"][side]["video"] > 0, report
    assert wake_processes() == []


async def test_only_the_peer_can_signal_or_hang_up(stack: Stack) -> None:
    """A third runtime cannot inject signals into a call or end it: the element refuses
    the call's object as its `from` (bound to the caller), and the caller's Connector
    takes updates and deletes about the call only from the invited hyperty."""
    _, bob = await stack.callee("bob", options={"loopback": True})
    _, alice = await stack.caller("alice")
    alice.loopback = True
    mallory = await stack.runtime("mallory")
    mallory_url = await mallory.create_hyperty("connector")
    answer = await alice.call(bob, media=True, timeout=60)
    assert answer.code == 200
    (connection,) = alice.calls
    active = alice.calls[connection]
    await asyncio.wait_for(active.media.first_frames.wait(), 60)

    forged = await stack.post(
        Message(
            1, "update", connection + "/changes", bob, {"attribute": "iceCandidates"}
        ).to_dict(),
        mallory.credential,
    )
    assert forged.status_code == 403 and forged.json()["errno"] == 307
    for kind in ("update", "delete"):
        body = {"source": mallory_url, "resource": connection, "attribute": "iceCandidates"}
        answer = await mallory.post(Message(mallory.next_id(), kind, mallory_url, alice.url, body))
        assert answer is not None and answer.code == 100  # delivered: the element allows it
    await wait_for(
        lambda: (
            len(
                [
                    e
                    for e in events_of(alice.context.runtime, "media")
                    if e["what"] == "ignored an update"
                ]
            )
            >= 1
        )
    )
    assert alice.calls == {connection: active} and not active.ended.is_set()
    assert await alice.hangup(connection)
    assert active.reason == "hung up" and alice.calls == {}


async def test_a_caller_that_never_offers_does_not_hold_the_callee(stack: Stack) -> None:
    """The callee accepts a media call and holds its runtime awake for it; without an
    offer it gives up after `media_timeout`, tells the caller, and releases the runtime
    (a woken process would otherwise never exit)."""
    bob_runtime, bob = await stack.callee("bob", options={"loopback": True, "media_timeout": 0.5})
    _, alice = await stack.caller("alice")
    invitation = alice.invitation(bob, media=True)
    sent = await alice.invite(invitation)  # and never offers
    assert sent is not None and sent.code == 100
    ended = await wait_for(lambda: events_of(bob_runtime, "call-ended"), timeout=60)
    assert ended[0]["reason"] == "no media"
    assert ended[0]["frames_received"] == {"audio": 0, "video": 0}
    connector: Any = bob_runtime.running(bob)
    assert connector.calls == {} and not bob_runtime.busy
    assert events_of(bob_runtime, "accepted")  # it had accepted
