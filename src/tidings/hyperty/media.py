"""The media of a Connector call: WebRTC between two runtimes, with aiortc.

`MediaCall` is one side of a call. It owns an `RTCPeerConnection` sending generated
media (a 440 Hz tone and a moving test pattern) and counting the frames it decodes from
the other side. It does no signalling I/O itself: what it has to tell the peer comes
out as `Signal`s (the session description, then each ICE candidate, then the end of
candidates) through the `send` callback, and what the peer told it goes in through
`receive`. The Connector carries the signals as reTHINK `update` messages of the
Connection object, the way reTHINK's Connector carries `connectionDescription` and
`iceCandidates`.

aiortc gathers every candidate before it finishes a description; the candidates are
taken out of the SDP and sent one by one, as a browser trickles them, so either side may
be a browser. `use_loopback_candidates()` keeps ICE on 127.0.0.1 for one-machine
demos and tests (no STUN or TURN); docs/hyperty.md says how a deployment adds TURN.
It needs the optional `media` extra (`pip install 'tidings[media]'`: aiortc, PyAV).
"""

from __future__ import annotations

import asyncio
import fractions
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import av
import numpy
from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError, VideoStreamTrack
from aiortc.sdp import candidate_from_sdp

__all__ = [
    "CANDIDATE",
    "DESCRIPTION",
    "MediaCall",
    "MediaStats",
    "Signal",
    "split_candidates",
    "use_loopback_candidates",
]

SignalKind = Literal["connectionDescription", "iceCandidates"]
DESCRIPTION: SignalKind = "connectionDescription"
CANDIDATE: SignalKind = "iceCandidates"
_TONE_HZ = 440
_SAMPLE_RATE = 48_000
_SAMPLES_PER_FRAME = 960  # 20 ms, what Opus sends
_WIDTH, _HEIGHT = 320, 240
MAX_SDP = 16_384  # a description from a peer larger than this is refused
MAX_CANDIDATES = 32  # candidates taken from one peer; more are ignored


@dataclass(frozen=True)
class Signal:
    """One thing a side tells the other: its description, or one candidate (None: done)."""

    attribute: SignalKind
    value: dict[str, Any] | None

    def to_json(self) -> dict[str, Any]:
        return {"attribute": self.attribute, "value": self.value}

    @classmethod
    def from_json(cls, data: Any) -> Signal:
        """A signal from a peer's update body; ValueError when it is not one."""
        if not isinstance(data, dict):
            raise ValueError("a media signal is an object")
        attribute, value = data.get("attribute"), data.get("value")
        if attribute == DESCRIPTION:
            if not (
                isinstance(value, dict)
                and value.get("type") in ("offer", "answer")
                and isinstance(value.get("sdp"), str)
                and len(value["sdp"]) <= MAX_SDP
            ):
                raise ValueError("connectionDescription needs a type (offer, answer) and an sdp")
            return cls(DESCRIPTION, {"type": value["type"], "sdp": value["sdp"]})
        if attribute == CANDIDATE:
            if value is None:
                return cls(CANDIDATE, None)
            if not (
                isinstance(value, dict)
                and isinstance(value.get("candidate"), str)
                and len(value["candidate"]) <= 512
                and isinstance(value.get("sdpMLineIndex"), int)
            ):
                raise ValueError("an ICE candidate needs candidate and sdpMLineIndex")
            mid = value.get("sdpMid")
            return cls(
                CANDIDATE,
                {
                    "candidate": value["candidate"],
                    "sdpMid": mid if isinstance(mid, str) else None,
                    "sdpMLineIndex": value["sdpMLineIndex"],
                },
            )
        raise ValueError(f"unknown media signal {attribute!r}")


def split_candidates(sdp: str) -> tuple[str, list[dict[str, Any]]]:
    """The SDP without its candidate lines, and those candidates as browsers send them."""
    kept: list[str] = []
    candidates: list[dict[str, Any]] = []
    index, mid = -1, None
    for line in sdp.splitlines():
        if line.startswith("m="):
            index, mid = index + 1, None
        elif line.startswith("a=mid:"):
            mid = line.removeprefix("a=mid:")
        if line.startswith("a=candidate:"):
            candidates.append({"candidate": line[2:], "sdpMid": mid, "sdpMLineIndex": index})
            continue
        if line.startswith("a=end-of-candidates"):
            continue
        kept.append(line)
    return "\r\n".join(kept) + "\r\n", candidates


def use_loopback_candidates() -> None:
    """Gather host candidates on 127.0.0.1 only (aiortc leaves loopback out by default).

    For calls between processes on one machine: nothing is sent to any other address.
    """
    import aioice.ice

    def loopback(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return ["127.0.0.1"] if use_ipv4 else []

    aioice.ice.get_host_addresses = loopback


@dataclass
class MediaStats:
    """What one side received, with times from the call's start (monotonic seconds)."""

    started: float
    frames_received: dict[str, int] = field(default_factory=lambda: {"audio": 0, "video": 0})
    first_frame_at: dict[str, float] = field(default_factory=dict)
    connected_at: float | None = None

    def first_frame_ms(self, kind: str) -> float | None:
        at = self.first_frame_at.get(kind)
        return None if at is None else (at - self.started) * 1000

    def to_json(self) -> dict[str, Any]:
        connected = self.connected_at
        return {
            "frames_received": dict(self.frames_received),
            "first_audio_ms": self.first_frame_ms("audio"),
            "first_video_ms": self.first_frame_ms("video"),
            "ice_connected_ms": None if connected is None else (connected - self.started) * 1000,
        }


SendSignal = Callable[[Signal], Awaitable[None]]
MediaEvent = Callable[[str], None]


class MediaCall:
    """One side of a call's media (see the module docstring).

    The caller calls `offer()`; the callee answers when the offer arrives through
    `receive`. `first_frames` is set once a frame of every kind has been decoded.
    """

    def __init__(
        self,
        send: SendSignal,
        *,
        on_event: MediaEvent | None = None,
        ice_servers: list[dict[str, Any]] | None = None,
    ) -> None:
        servers = [RTCIceServer(**server) for server in ice_servers or []]
        self._pc = RTCPeerConnection(RTCConfiguration(iceServers=servers))
        self._send = send
        self._on_event = on_event or (lambda name: None)
        self.stats = MediaStats(started=time.monotonic())
        self.first_frames = asyncio.Event()
        self._readers: list[asyncio.Task[None]] = []
        self._remote_candidates = 0
        self._closed = False
        self._pc.on("track", self._on_track)
        self._pc.on("iceconnectionstatechange", self._on_ice_state)
        self._pc.addTrack(ToneTrack())
        self._pc.addTrack(PatternTrack())

    @property
    def connected(self) -> bool:
        return self._pc.iceConnectionState in ("connected", "completed")

    async def offer(self) -> None:
        """Caller: make the offer and send it, then its candidates."""
        await self._pc.setLocalDescription(await self._pc.createOffer())
        await self._send_local()

    async def receive(self, signal: Signal) -> None:
        """Take what the peer sent: its description (answering an offer), or a candidate."""
        if self._closed:
            return
        if signal.attribute == DESCRIPTION:
            assert signal.value is not None
            description = RTCSessionDescription(signal.value["sdp"], signal.value["type"])
            await self._pc.setRemoteDescription(description)
            if description.type == "offer":
                await self._pc.setLocalDescription(await self._pc.createAnswer())
                await self._send_local()
            return
        if signal.value is None:
            await self._pc.addIceCandidate(None)
            return
        if self._remote_candidates >= MAX_CANDIDATES:
            return
        self._remote_candidates += 1
        candidate = candidate_from_sdp(signal.value["candidate"].split(":", 1)[1])
        candidate.sdpMid = signal.value["sdpMid"]
        candidate.sdpMLineIndex = signal.value["sdpMLineIndex"]
        await self._pc.addIceCandidate(candidate)

    async def close(self) -> None:
        """Hang up: stop sending, stop reading, release the connection."""
        if self._closed:
            return
        self._closed = True
        await self._pc.close()
        for reader in self._readers:
            reader.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)
        self._on_event("media closed")

    async def _send_local(self) -> None:
        local = self._pc.localDescription
        sdp, candidates = split_candidates(local.sdp)
        await self._send(Signal(DESCRIPTION, {"type": local.type, "sdp": sdp}))
        for candidate in candidates:
            await self._send(Signal(CANDIDATE, candidate))
        await self._send(Signal(CANDIDATE, None))

    def _on_ice_state(self) -> None:
        if self.connected and self.stats.connected_at is None:
            self.stats.connected_at = time.monotonic()
            self._on_event("ice connected")
        elif self._pc.iceConnectionState == "failed" and not self._closed:
            self._on_event("ice failed")

    def _on_track(self, track: Any) -> None:
        self._readers.append(asyncio.ensure_future(self._read(track)))

    async def _read(self, track: Any) -> None:
        kind = str(track.kind)
        while True:
            try:
                await track.recv()
            except MediaStreamError:
                return
            stats = self.stats
            stats.frames_received[kind] = stats.frames_received.get(kind, 0) + 1
            if kind not in stats.first_frame_at:
                stats.first_frame_at[kind] = time.monotonic()
                self._on_event(f"first {kind} frame")
                if {"audio", "video"} <= stats.first_frame_at.keys():
                    self.first_frames.set()


class ToneTrack(AudioStreamTrack):
    """A 440 Hz sine, 48 kHz mono, in 20 ms frames at their real pace."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._sent = 0
        self._start = 0.0

    async def recv(self) -> Any:
        if self._sent:
            await asyncio.sleep(self._start + self._sent / _SAMPLE_RATE - time.time())
        else:
            self._start = time.time()
        ticks = (numpy.arange(_SAMPLES_PER_FRAME) + self._sent) / _SAMPLE_RATE
        samples = (numpy.sin(2 * math.pi * _TONE_HZ * ticks) * 8000).astype(numpy.int16)
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = _SAMPLE_RATE
        frame.pts = self._sent
        frame.time_base = fractions.Fraction(1, _SAMPLE_RATE)
        self._sent += _SAMPLES_PER_FRAME
        return frame


class PatternTrack(VideoStreamTrack):
    """A colour ramp with a bar sweeping across it, 320x240 at aiortc's video pace."""

    kind = "video"

    async def recv(self) -> Any:
        pts, time_base = await self.next_timestamp()
        image = numpy.zeros((_HEIGHT, _WIDTH, 3), numpy.uint8)
        image[:, :, 0] = numpy.linspace(0, 255, _WIDTH, dtype=numpy.uint8)[None, :]
        bar = int(pts * time_base * 80) % _WIDTH  # 80 pixels a second
        image[:, max(0, bar - 8) : bar + 8, 1] = 255
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts = pts
        frame.time_base = time_base
        return frame
