"""`tidings listen`: subscribe, print the subscription, then print each message.

The first line of standard output is the subscription JSON (give it to any sender);
every message then prints as one JSON line: `{"id", "received_at", "text"}`, or
`"base64"` instead of `"text"` when the payload is not UTF-8. Ctrl-C exits cleanly.
Without `--state` the user agent lives in a temporary directory and unsubscribes on
exit; with it, the subscription and its keys survive for the next run.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import signal
import ssl
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from tidings.useragent import PushEvent, UserAgent, UserAgentError
from tidings.useragent.agent import PushProtocol


def message_line(event: PushEvent) -> dict[str, Any]:
    """The JSON line printed for one message."""
    line: dict[str, Any] = {
        "id": event.message_id,
        "received_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
    }
    raw = b"" if event.data is None else event.data.bytes()
    try:
        line["text"] = raw.decode("utf-8")
    except UnicodeDecodeError:
        line["base64"] = base64.b64encode(raw).decode("ascii")
    return line


@click.command()
@click.option(
    "--service",
    required=True,
    envvar="TIDINGS_AGENT_SERVICE",
    help="The push service: ws://host:port/ or its http(s) origin (the WebSocket protocol), "
    "or h2c://host:port / h2://host (RFC 8030 over HTTP/2).",
)
@click.option(
    "--protocol",
    type=click.Choice(["websocket", "rfc8030"]),
    envvar="TIDINGS_AGENT_PROTOCOL",
    help="The push protocol. [default: rfc8030 for h2:// and h2c://, else websocket]",
)
@click.option(
    "--cafile",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Trust the service's TLS certificate from this PEM file (a private CA).",
)
@click.option(
    "--application-server-key",
    "key",
    help="VAPID public key (base64url) of the application server that will send.",
)
@click.option(
    "--state",
    type=click.Path(file_okay=False, path_type=Path),
    help="Keep the subscription in this directory across runs. [default: a temporary one]",
)
@click.option("--scope", default="tidings-listen", show_default=True)
@click.option("--timeout", type=float, default=30.0, show_default=True)
@click.option("-v", "--verbose", is_flag=True, help="Log connection events on stderr.")
def listen(
    service: str,
    protocol: PushProtocol | None,
    cafile: Path | None,
    key: str | None,
    state: Path | None,
    scope: str,
    timeout: float,
    verbose: bool,
) -> None:
    """Subscribe, print the subscription JSON, then one JSON line per message."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        context = None if cafile is None else ssl.create_default_context(cafile=str(cafile))

        def agent(directory: Path) -> UserAgent:
            return UserAgent(
                service,
                directory,
                transport=protocol,
                ssl_context=context,
                connect_timeout=timeout,
            )

        if state is not None:
            asyncio.run(_listen(agent(state), key, scope, ephemeral=False))
        else:
            with tempfile.TemporaryDirectory(prefix="tidings-listen-") as directory:
                asyncio.run(_listen(agent(Path(directory)), key, scope, ephemeral=True))
    except (UserAgentError, ValueError, ssl.SSLError) as exc:
        raise click.ClickException(str(exc)) from exc


def _print(document: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(document) + "\n")
    sys.stdout.flush()


async def _listen(ua: UserAgent, key: str | None, scope: str, *, ephemeral: bool) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    def on_push(event: PushEvent) -> None:
        try:
            _print(message_line(event))
        except BrokenPipeError:
            stop.set()
            raise

    async with ua:
        registration = await ua.register(scope, on_push=on_push)
        subscribing = asyncio.ensure_future(
            registration.push_manager.subscribe(application_server_key=key)
        )
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait([subscribing, stopping], return_when=asyncio.FIRST_COMPLETED)
        if not subscribing.done():
            subscribing.cancel()
            stopping.cancel()
            return
        subscription = subscribing.result()
        _print(subscription.to_json())
        await stopping
        if ephemeral:
            with contextlib.suppress(UserAgentError):
                await asyncio.wait_for(subscription.unsubscribe(), 2)
