"""Wake a sleeping runtime for one push: the command `tidings agent` starts per message.

    python -m tidings.hyperty.wake --state DIR        (or `tidings hyperty wake --state DIR`)

The decrypted push (a reTHINK message) is on standard input, as `tidings agent --exec`
gives it. The runtime is loaded from DIR (its URL, its hyperties), the addressed
hyperty is created at its old address and handed the message; its answer goes to the
push element over HTTP, then the process exits. A call with media holds the runtime:
the process then takes its message connection (the inbox long-poll) for the offer and
candidates, runs the media, and exits when the call ends (after telling the element it
disconnects, so the next message is pushed again). On `pushsubscriptionchange`
(`TIDINGS_EVENT`) the runtime registers its new subscription at the element instead.

Kept free of the CLI's imports: a woken runtime should start quickly.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import sys
import time
from pathlib import Path

from tidings.hyperty.message import Message, MessageError
from tidings.hyperty.runtime import HypertyRuntime, HypertyRuntimeError

__all__ = ["main", "wake", "wake_command"]


def wake_command(state: Path) -> str:
    """The command `tidings agent` runs per push for a sleeping runtime."""
    return (
        f"{shlex.quote(sys.executable)} -m tidings.hyperty.wake --state {shlex.quote(str(state))}"
    )


async def wake(state: str, data: bytes, event: str = "push", started: float | None = None) -> int:
    """Handle one push (or subscription change) for the runtime in `state`; an exit status."""
    runtime = HypertyRuntime(None, state)
    runtime.log_event(
        "runtime-started",
        trigger=event,
        process_start=started,
        message_id=os.environ.get("TIDINGS_MESSAGE_ID"),
    )
    async with runtime:
        if event == "pushsubscriptionchange":
            change = json.loads(data or b"{}")
            if change.get("newSubscription"):
                await runtime.register(change["newSubscription"])
            return 0
        try:
            message = Message.from_json(data)
        except MessageError as exc:
            print(f"tidings hyperty wake: not a reTHINK message: {exc}", file=sys.stderr)
            return 1
        await runtime.wake(message)
        # A call with media keeps the runtime awake (and connected) until it ends.
        await runtime.wait_idle()
    runtime.log_event("runtime-exit")
    return 0


def main(argv: list[str] | None = None) -> int:
    started = time.time()
    parser = argparse.ArgumentParser(
        prog="python -m tidings.hyperty.wake", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--state", required=True, help="the runtime's state directory")
    args = parser.parse_args(argv)
    data = sys.stdin.buffer.read()
    event = os.environ.get("TIDINGS_EVENT", "push")
    try:
        return asyncio.run(wake(args.state, data, event, started))
    except HypertyRuntimeError as exc:
        print(f"tidings hyperty wake: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
