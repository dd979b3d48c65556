"""`tidings agent`: the user agent as a daemon that wakes commands on push.

    tidings agent subscribe --service URL --state DIR --scope S --key K --exec "CMD"
    tidings agent --service URL --state DIR          (the same as `tidings agent run`)
    tidings agent list --state DIR
    tidings agent unsubscribe --service URL --state DIR --scope S

`subscribe` records the registration and its command in the state directory and prints
the subscription JSON for the application server; the daemon then starts CMD for each
push with the decrypted message on its standard input.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import ssl
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from tidings.useragent import UserAgent, UserAgentError
from tidings.useragent.agent import PushProtocol
from tidings.useragent.commands import DEFAULT_COMMAND_TIMEOUT, handlers_from_state
from tidings.useragent.state import StateStore

DEFAULT_STATE = "tidings-agent"


def _service_option(function: Any) -> Any:
    return click.option(
        "--service",
        envvar="TIDINGS_AGENT_SERVICE",
        help="The push service: its WebSocket URL (ws://host:port/) or its http(s) origin, "
        "or h2c://host:port / h2://host for RFC 8030 over HTTP/2. [env TIDINGS_AGENT_SERVICE]",
    )(function)


def _daemon_options(function: Any) -> Any:
    """The daemon's own options, on `tidings agent` and `tidings agent run` alike."""
    function = click.option(
        "--log-level",
        type=click.Choice(["debug", "info", "warning", "error"]),
        default="info",
        show_default=True,
    )(function)
    function = click.option(
        "--command-timeout",
        type=float,
        default=DEFAULT_COMMAND_TIMEOUT,
        show_default=True,
        help="Seconds a command may run before it is killed (and the message acked with 102).",
    )(function)
    return click.option("--ping-interval", type=float, default=300.0, show_default=True)(function)


def _connection_options(function: Any) -> Any:
    function = click.option(
        "--cafile",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        envvar="TIDINGS_AGENT_CAFILE",
        help="Trust the service's TLS certificate from this PEM file (a private CA). "
        "[env TIDINGS_AGENT_CAFILE]",
    )(function)
    return click.option(
        "--protocol",
        type=click.Choice(["websocket", "rfc8030"]),
        envvar="TIDINGS_AGENT_PROTOCOL",
        help="The push protocol: Firefox's WebSocket protocol or RFC 8030 (HTTP/2 server "
        "push). [default: rfc8030 for h2:// and h2c:// URLs, else websocket; "
        "env TIDINGS_AGENT_PROTOCOL]",
    )(function)


@dataclass(frozen=True)
class _Connection:
    """How to reach the service: its URL, the protocol, the certificates to trust."""

    service: str
    protocol: PushProtocol | None
    ssl_context: ssl.SSLContext | None

    def agent(self, state: Path, **options: Any) -> UserAgent:
        return UserAgent(
            self.service,
            state,
            transport=self.protocol,
            ssl_context=self.ssl_context,
            **options,
        )


def _state_option(function: Any) -> Any:
    return click.option(
        "--state",
        type=click.Path(file_okay=False, path_type=Path),
        envvar="TIDINGS_AGENT_STATE",
        help=f"State directory (keys, subscriptions; mode 0600). [default: ./{DEFAULT_STATE}; "
        "env TIDINGS_AGENT_STATE]",
    )(function)


def _settings(
    ctx: click.Context,
    service: str | None,
    state: Path | None,
    protocol: PushProtocol | None = None,
    cafile: Path | None = None,
) -> tuple[_Connection, Path]:
    """Connection and state dir from the sub-command, else from the group."""
    parent: dict[str, Any] = ctx.find_root().obj or {}
    service = service or parent.get("service")
    state = state or parent.get("state") or Path(DEFAULT_STATE)
    protocol = protocol or parent.get("protocol")
    cafile = cafile or parent.get("cafile")
    if not service:
        raise click.UsageError("--service URL is required (or TIDINGS_AGENT_SERVICE)")
    try:
        context = None if cafile is None else ssl.create_default_context(cafile=str(cafile))
    except (OSError, ssl.SSLError) as exc:
        raise click.UsageError(f"--cafile {cafile}: {exc}") from exc
    return _Connection(service, protocol, context), state


def _logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


@click.group(invoke_without_command=True)
@_service_option
@_state_option
@_connection_options
@_daemon_options
@click.pass_context
def agent(
    ctx: click.Context,
    service: str | None,
    state: Path | None,
    protocol: PushProtocol | None,
    cafile: Path | None,
    ping_interval: float,
    command_timeout: float,
    log_level: str,
) -> None:
    """Run the push user agent as a daemon, or manage its registrations.

    Without a sub-command it runs the daemon (like `tidings agent run`).
    """
    ctx.obj = {"service": service, "state": state, "protocol": protocol, "cafile": cafile}
    if ctx.invoked_subcommand is None:
        ctx.invoke(
            run,
            service=service,
            state=state,
            protocol=protocol,
            cafile=cafile,
            ping_interval=ping_interval,
            command_timeout=command_timeout,
            log_level=log_level,
        )


@agent.command()
@_service_option
@_state_option
@_connection_options
@_daemon_options
@click.pass_context
def run(
    ctx: click.Context,
    service: str | None,
    state: Path | None,
    protocol: PushProtocol | None,
    cafile: Path | None,
    ping_interval: float,
    command_timeout: float,
    log_level: str,
) -> None:
    """Run the daemon: keep the connection, start each registration's command on push."""
    connection, state_dir = _settings(ctx, service, state, protocol, cafile)
    _logging(log_level)
    try:
        asyncio.run(_daemon(connection, state_dir, ping_interval, command_timeout))
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc


async def _daemon(
    connection: _Connection, state: Path, ping_interval: float, command_timeout: float
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    ua = connection.agent(
        state,
        ping_interval=ping_interval,
        handlers_for=handlers_from_state(time_limit=command_timeout),
    )
    async with ua:
        click.echo(f"tidings agent: {connection.service}, state {ua.state_path}", err=True)
        await stop.wait()
    click.echo("tidings agent: stopped", err=True)


@agent.command()
@_service_option
@_state_option
@_connection_options
@click.option("--scope", required=True, help="The registration's name.")
@click.option(
    "--key",
    "application_server_key",
    help="The application server's VAPID public key (base64url); pushes must be signed by it.",
)
@click.option(
    "--exec",
    "command",
    help="Shell command started for each push, the message on its standard input.",
)
@click.option("--timeout", type=float, default=30.0, show_default=True)
@click.pass_context
def subscribe(
    ctx: click.Context,
    service: str | None,
    state: Path | None,
    protocol: PushProtocol | None,
    cafile: Path | None,
    scope: str,
    application_server_key: str | None,
    command: str | None,
    timeout: float,
) -> None:
    """Register SCOPE, subscribe it, print the subscription JSON for the sender."""
    connection, state_dir = _settings(ctx, service, state, protocol, cafile)
    try:
        document = asyncio.run(
            _subscribe(connection, state_dir, scope, application_server_key, command, timeout)
        )
    except (UserAgentError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(json.dumps(document))


async def _subscribe(
    connection: _Connection,
    state: Path,
    scope: str,
    key: str | None,
    command: str | None,
    wait: float,
) -> dict[str, Any]:
    async with connection.agent(state, connect_timeout=wait) as ua:
        if command:
            registration = await ua.register_command(scope, command)
        else:
            registration = await ua.register(scope)
        subscription = await registration.push_manager.subscribe(application_server_key=key)
        return subscription.to_json()


@agent.command()
@_service_option
@_state_option
@_connection_options
@click.option("--scope", required=True)
@click.option("--timeout", type=float, default=30.0, show_default=True)
@click.pass_context
def unsubscribe(
    ctx: click.Context,
    service: str | None,
    state: Path | None,
    protocol: PushProtocol | None,
    cafile: Path | None,
    scope: str,
    timeout: float,
) -> None:
    """Unsubscribe SCOPE at the service and forget its registration."""
    connection, state_dir = _settings(ctx, service, state, protocol, cafile)
    try:
        found = asyncio.run(_unsubscribe(connection, state_dir, scope, timeout))
    except (UserAgentError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    if not found:
        raise click.ClickException(f"no registration {scope!r} in {state_dir}")
    click.echo(f"unsubscribed {scope}", err=True)


async def _unsubscribe(connection: _Connection, state: Path, scope: str, wait: float) -> bool:
    async with connection.agent(state, connect_timeout=wait) as ua:
        await ua.wait_connected(wait)
        registration = await ua.register(scope)
        return await registration.unregister()


@agent.command(name="list")
@_state_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.pass_context
def list_(ctx: click.Context, state: Path | None, as_json: bool) -> None:
    """List the registrations, their commands and their subscriptions."""
    parent: dict[str, Any] = ctx.find_root().obj or {}
    store = StateStore(state or parent.get("state") or Path(DEFAULT_STATE))
    try:
        rows = []
        for registration in store.registrations():
            subscription = store.get_subscription(registration.scope)
            rows.append(
                {
                    "scope": registration.scope,
                    "exec": registration.exec_command,
                    "endpoint": None if subscription is None else subscription.endpoint,
                    "application_server_key": None
                    if subscription is None
                    else subscription.application_server_key,
                }
            )
    finally:
        store.close()
    if as_json:
        for row in rows:
            click.echo(json.dumps(row))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("scope", "exec", "endpoint")
    for row in rows:
        table.add_row(row["scope"], row["exec"] or "", row["endpoint"] or "(not subscribed)")
    Console().print(table)
