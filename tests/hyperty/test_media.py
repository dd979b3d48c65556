"""A call's media between two aiortc peers: offer, answer and candidates as signals
(through their JSON form, as the Connector's update messages carry them), then audio
and video frames decoded on both sides, then hang-up."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tidings.hyperty.media import (
    CANDIDATE,
    DESCRIPTION,
    MAX_SDP,
    MediaCall,
    Signal,
    split_candidates,
    use_loopback_candidates,
)

pytestmark = pytest.mark.timeout(60)


async def _wired_pair() -> tuple[MediaCall, MediaCall, list[dict[str, Any]]]:
    """Two sides whose signals cross over as JSON; every signal is recorded."""
    use_loopback_candidates()
    wire: list[dict[str, Any]] = []
    sides: dict[str, MediaCall] = {}

    def sender(to: str) -> Any:
        async def send(signal: Signal) -> None:
            data = signal.to_json()
            wire.append({"to": to, **data})
            await sides[to].receive(Signal.from_json(data))

        return send

    sides["callee"] = MediaCall(sender("caller"))
    sides["caller"] = MediaCall(sender("callee"))
    return sides["caller"], sides["callee"], wire


async def test_audio_and_video_flow_both_ways_over_loopback() -> None:
    caller, callee, wire = await _wired_pair()
    try:
        await caller.offer()
        await asyncio.wait_for(
            asyncio.gather(caller.first_frames.wait(), callee.first_frames.wait()), 30
        )
        for side in (caller, callee):
            frames = side.stats.frames_received
            assert frames["audio"] > 0 and frames["video"] > 0
            assert side.connected and side.stats.connected_at is not None
            report = side.stats.to_json()
            assert report["first_audio_ms"] > 0 and report["first_video_ms"] > 0
    finally:
        await caller.close()
        await callee.close()
    # The signalling: a description each way, candidates sent on their own, never in
    # the SDP, and only loopback ones.
    kinds = [(item["to"], item["attribute"], (item["value"] or {}).get("type")) for item in wire]
    assert kinds[0] == ("callee", DESCRIPTION, "offer")
    assert ("caller", DESCRIPTION, "answer") in kinds
    candidates = [
        item["value"] for item in wire if item["attribute"] == CANDIDATE and item["value"]
    ]
    assert candidates and all(" 127.0.0.1 " in c["candidate"] for c in candidates)
    descriptions = [item["value"]["sdp"] for item in wire if item["attribute"] == DESCRIPTION]
    assert all("a=candidate" not in sdp for sdp in descriptions)
    # Hung up: nothing more arrives.
    counted = dict(caller.stats.frames_received)
    await asyncio.sleep(0.3)
    assert caller.stats.frames_received == counted


def test_candidates_are_split_out_of_the_sdp_with_their_line() -> None:
    sdp = (
        "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\n"
        "a=candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host\r\na=end-of-candidates\r\n"
        "m=video 9 UDP/TLS/RTP/SAVPF 97\r\na=mid:1\r\n"
        "a=candidate:2 1 udp 2130706431 127.0.0.1 5002 typ host\r\n"
    )
    kept, candidates = split_candidates(sdp)
    assert "candidate" not in kept and "a=mid:1" in kept
    host = "1 udp 2130706431 127.0.0.1 {} typ host"
    assert candidates == [
        {"candidate": "candidate:1 " + host.format(5000), "sdpMid": "0", "sdpMLineIndex": 0},
        {"candidate": "candidate:2 " + host.format(5002), "sdpMid": "1", "sdpMLineIndex": 1},
    ]


@pytest.mark.parametrize(
    "data",
    [
        None,
        [],
        {"attribute": "connectionDescription", "value": {"type": "pranswer", "sdp": "v=0"}},
        {"attribute": "connectionDescription", "value": {"type": "offer", "sdp": 7}},
        {
            "attribute": "connectionDescription",
            "value": {"type": "offer", "sdp": "v" * (MAX_SDP + 1)},
        },
        {"attribute": "iceCandidates", "value": {"candidate": "x" * 600, "sdpMLineIndex": 0}},
        {"attribute": "iceCandidates", "value": {"candidate": "candidate:1", "sdpMLineIndex": "0"}},
        {"attribute": "status", "value": "ringing"},
    ],
)
def test_a_peer_cannot_send_what_is_not_a_signal(data: Any) -> None:
    with pytest.raises(ValueError):
        Signal.from_json(data)
