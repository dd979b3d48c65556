"""Registrations served by a command: how the daemon wakes a program that is not running.

For each push the daemon starts the registration's command through the shell, writes
the decrypted message to its standard input, and acknowledges when it exits 0 (any
other exit status, or running past the timeout, acks with 102 and the service does
not send the message again). The command learns what woke it from environment
variables:

    TIDINGS_EVENT        push | pushsubscriptionchange
    TIDINGS_SCOPE        the registration's scope
    TIDINGS_MESSAGE_ID   the message id (push only; the same on a redelivery)
    TIDINGS_ENDPOINT     the subscription's endpoint

For `pushsubscriptionchange` the standard input is a JSON object
`{"oldSubscription": ..., "newSubscription": ...}` (each the browser's `toJSON()` shape,
or null), so the command can hand the new subscription to its application server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Mapping

from tidings.useragent.errors import UserAgentError
from tidings.useragent.events import Handlers, HandlersFor, PushEvent, PushSubscriptionChangeEvent
from tidings.useragent.state import StoredRegistration

__all__ = ["CommandFailed", "command_handlers", "handlers_from_state", "run_command"]

DEFAULT_COMMAND_TIMEOUT = 60.0


class CommandFailed(UserAgentError):
    """A registration's command exited with a non-zero status or ran too long."""


async def run_command(
    command: str, stdin: bytes, env: Mapping[str, str], *, time_limit: float
) -> None:
    """Run `command` with `stdin`; CommandFailed unless it exits 0 within `time_limit` seconds."""
    process = await asyncio.create_subprocess_shell(
        command,
        stdin=asyncio.subprocess.PIPE,
        env={**os.environ, **env},
    )
    try:
        async with asyncio.timeout(time_limit):
            await process.communicate(stdin)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        raise CommandFailed(
            f"{command!r} ran longer than {time_limit:g} s and was killed"
        ) from None
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        raise
    if process.returncode != 0:
        raise CommandFailed(f"{command!r} exited with status {process.returncode}")


def command_handlers(command: str, *, time_limit: float = DEFAULT_COMMAND_TIMEOUT) -> Handlers:
    """Handlers that run `command` for every push and subscription change."""

    async def on_push(event: PushEvent) -> None:
        env = {
            "TIDINGS_EVENT": "push",
            "TIDINGS_SCOPE": event.scope,
            "TIDINGS_MESSAGE_ID": event.message_id,
            "TIDINGS_ENDPOINT": event.subscription.endpoint,
        }
        data = b"" if event.data is None else event.data.bytes()
        await run_command(command, data, env, time_limit=time_limit)

    async def on_subscription_change(event: PushSubscriptionChangeEvent) -> None:
        old, new = event.old_subscription, event.new_subscription
        env = {
            "TIDINGS_EVENT": "pushsubscriptionchange",
            "TIDINGS_SCOPE": event.scope,
            "TIDINGS_ENDPOINT": "" if new is None else new.endpoint,
        }
        document = {
            "oldSubscription": None if old is None else old.to_json(),
            "newSubscription": None if new is None else new.to_json(),
        }
        await run_command(command, json.dumps(document).encode(), env, time_limit=time_limit)

    return Handlers(on_push, on_subscription_change)


def handlers_from_state(*, time_limit: float = DEFAULT_COMMAND_TIMEOUT) -> HandlersFor:
    """A `handlers_for` callback: each stored registration's command, if it has one."""

    def handlers_for(registration: StoredRegistration) -> Handlers | None:
        if not registration.exec_command:
            return None
        return command_handlers(registration.exec_command, time_limit=time_limit)

    return handlers_for
