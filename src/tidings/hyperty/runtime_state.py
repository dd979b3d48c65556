"""What a Hyperty runtime keeps between two processes: `<state>/runtime.json` (0600).

    state = RuntimeState.load(path)       # RuntimeState() when the file does not exist
    state.hyperties[url] = {"factory": "connector", "options": {}}
    state.save(path)

A woken runtime is a new process: everything that makes it the same runtime (its URL,
its hyperties' addresses, the credential the element issued it) is in this file. Keys
this version does not know are kept as they were.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

from tidings.hyperty.context import HypertyRuntimeError

__all__ = ["EVENTS_FILE", "STATE_FILE", "HostedHyperty", "RuntimeState"]

STATE_FILE = "runtime.json"
EVENTS_FILE = "events.jsonl"


class HostedHyperty(TypedDict):
    """How to re-create a hosted hyperty at its address."""

    factory: str
    options: dict[str, Any]


@dataclass
class RuntimeState:
    """The contents of `runtime.json`; absent values are None."""

    runtime_url: str | None = None
    element: str | None = None
    """The push element's HTTP base URL, without a trailing slash."""
    service: str | None = None
    """The push service the runtime's user agent connects to."""
    hyperties: dict[str, HostedHyperty] = field(default_factory=dict)
    """The hosted hyperties: address -> factory and options."""
    subscription: dict[str, Any] | None = None
    """The push subscription registered at the element (the browser's toJSON shape)."""
    credential: str | None = None
    """What the element issued at the first registration; every request presents it."""
    command: str | None = None
    """The command `tidings agent` runs per push (the asleep mode), if any."""
    user: str | None = None
    """The user registered with the runtime (`user://...`), if any."""
    other: dict[str, Any] = field(default_factory=dict)
    """Keys this version does not know, written back unchanged."""

    @classmethod
    def load(cls, path: Path) -> RuntimeState:
        """The state in `path`; an empty one if the file does not exist."""
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return cls()
        except ValueError as exc:
            raise HypertyRuntimeError(f"{path} is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise HypertyRuntimeError(f"{path} does not hold a JSON object")
        known = {"runtime_url", "element", "service", "hyperties", "subscription"}
        known |= {"credential", "command", "user"}
        hyperties = data.get("hyperties") or {}
        if not isinstance(hyperties, dict):
            raise HypertyRuntimeError(f"{path}: `hyperties` is not a JSON object")
        subscription = data.get("subscription")
        return cls(
            runtime_url=_text(data.get("runtime_url")),
            element=_text(data.get("element")),
            service=_text(data.get("service")),
            hyperties=dict(hyperties),
            subscription=dict(subscription) if isinstance(subscription, dict) else None,
            credential=_text(data.get("credential")),
            command=_text(data.get("command")),
            user=_text(data.get("user")),
            other={key: value for key, value in data.items() if key not in known},
        )

    def to_json(self) -> dict[str, Any]:
        """The JSON object `save` writes: the values that are set, then the unknown keys."""
        document: dict[str, Any] = {
            "runtime_url": self.runtime_url,
            "element": self.element,
            "service": self.service,
            "hyperties": self.hyperties,
            "subscription": self.subscription,
            "credential": self.credential,
            "command": self.command,
            "user": self.user,
        }
        document = {key: value for key, value in document.items() if value is not None}
        return {**document, **self.other}

    def save(self, path: Path) -> None:
        """Write `path` (mode 0600) through a temporary file, so a reader never sees half."""
        temporary = path.with_suffix(".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as file:
            json.dump(self.to_json(), file, indent=2)
        os.replace(temporary, path)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None
