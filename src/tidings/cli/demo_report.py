"""What one demo call gives back: its answer, its timeline and its numbers.

`CallDemo.call` (demo_call.py) returns a `CallResult`; `tidings demo call` prints its
`timeline()` or, with `--json`, its `report()`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tidings.hyperty.message import Message

__all__ = ["CallResult", "Step", "first_at"]


@dataclass(frozen=True)
class Step:
    """One line of the timeline: seconds since the invitation, who, what."""

    at: float
    actor: str
    what: str


@dataclass
class CallResult:
    """One call: the answer, when the Connector rang, and the timeline."""

    answer: Message
    started: float
    rang_at: float | None
    callee_pid: int | None
    steps: list[Step] = field(default_factory=list)
    callee_events: list[dict[str, Any]] = field(default_factory=list)
    """What the callee logged for this call (`events.jsonl` lines)."""
    answered: float | None = None
    media: dict[str, Any] | None = None
    """With media: what each side received (`caller`, `callee`: `MediaStats.to_json()`
    plus `reason`), `first_media_at` (the caller's first decoded frame, wall clock)."""

    def report(self) -> dict[str, Any]:
        """The call's numbers as one JSON object (`tidings demo call --json`)."""

        def ms(at: float | None) -> float | None:
            return None if at is None else round((at - self.started) * 1000, 1)

        report: dict[str, Any] = {
            "code": self.answer.code,
            "wake_ms": ms(self.rang_at),
            "process_started_ms": ms(first_at(self.callee_events, "runtime-started")),
            "answer_ms": ms(self.answered),
        }
        if self.media is not None:
            report["first_media_ms"] = ms(self.media.get("first_media_at"))
            report["ice_connected_ms"] = ms(self.media.get("ice_connected_at"))
            report["frames_received"] = {
                side: self.media[side].get("frames_received") for side in ("caller", "callee")
            }
            report["callee_first_media_ms"] = ms(self.media.get("callee_first_media_at"))
            report["callee_exited"] = self.media.get("callee_exited")
        return report

    def callee_at(self, event: str) -> float | None:
        """Seconds from the invitation to the callee's first `event`, if it logged one."""
        found = next((e for e in self.callee_events if e["event"] == event), None)
        return None if found is None else found["at"] - self.started

    @property
    def wake_latency(self) -> float | None:
        """Seconds from the invitation to the callee Connector's handler."""
        return None if self.rang_at is None else self.rang_at - self.started

    def timeline(self) -> str:
        return "\n".join(
            f"{step.at * 1000:9.1f} ms  {step.actor:<8} {step.what}" for step in self.steps
        )


def first_at(events: list[dict[str, Any]], kind: str, **match: Any) -> float | None:
    """When the first of `events` of this kind (and these values) happened."""
    for event in events:
        if event["event"] == kind and all(event.get(k) == v for k, v in match.items()):
            return float(event["at"])
    return None
