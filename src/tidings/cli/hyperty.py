"""`tidings hyperty`: push towards reTHINK Hyperty runtimes.

    tidings hyperty push-element --domain example.com --key vapid.pem [--port 8090]
        [--push-origin https://push.example.com] [--idp-issuer ISS --idp-jwks URL|FILE]
    tidings hyperty runtime init --state DIR --domain example.com \\
        --element http://127.0.0.1:8090/hyperty --service ws://127.0.0.1:8080/ [--asleep]
    tidings hyperty runtime run --state DIR        (an awake runtime: woken in-process)
    tidings agent --service ws://127.0.0.1:8080/ --state DIR   (for an --asleep runtime)
    tidings hyperty call --state CALLER_DIR --domain example.com \\
        --element http://127.0.0.1:8090/hyperty hyperty://example.com/<callee>
    tidings hyperty wake --state DIR               (what `tidings agent` runs per push)
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any

import click

from tidings.hyperty.rules import DEFAULT_TTL

_state = click.option(
    "--state",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="The runtime's state directory (runtime URL, hyperties, push keys).",
)


def _logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)


_log_level = click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
)


@click.group()
def hyperty() -> None:
    """Push towards reTHINK Hyperty runtimes: the push element and the runtime side."""


# The push element ---------------------------------------------------------------------------


@hyperty.command("push-element")
@click.option("--domain", required=True, help="The service provider's domain (example.com).")
@click.option(
    "--key", required=True, help="VAPID private key (PEM file); runtimes subscribe with it."
)
@click.option("--subject", default=None, help="VAPID subject. [default: mailto:push@<domain>]")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8090, show_default=True)
@click.option("--db", default=None, help="SQLite file for registrations. [default: in memory]")
@click.option("--ttl", type=int, default=DEFAULT_TTL, show_default=True, help="TTL of pushes (s).")
@click.option(
    "--push-origin",
    "push_origins",
    multiple=True,
    help="A push service origin the element may push to (repeat for several). "
    "[default: the co-located Tidings service, http://127.0.0.1:8080]",
)
@click.option("--idp-issuer", default=None, help="Verify identity assertions from this issuer.")
@click.option("--idp-jwks", default=None, help="The issuer's keys: a JWKS URL or file.")
@click.option("--idp-audience", default=None, help="The assertions' aud. [default: DOMAIN]")
@click.option(
    "--rate-registrations",
    default="30/min",
    show_default=True,
    help="Registrations per client IP address (N/s, N/min, N/h [burst B], or off).",
)
@click.option(
    "--rate-messages",
    default="10/s burst 100",
    show_default=True,
    help="Messages per runtime (N/s, N/min, N/h [burst B], or off).",
)
@click.option("--max-hyperties", type=int, default=32, show_default=True, help="Per runtime.")
@click.option("--max-polls", type=int, default=4, show_default=True, help="Open polls per runtime.")
@_log_level
def push_element(
    domain: str,
    key: str,
    subject: str | None,
    host: str,
    port: int,
    db: str | None,
    ttl: int,
    push_origins: tuple[str, ...],
    idp_issuer: str | None,
    idp_jwks: str | None,
    idp_audience: str | None,
    rate_registrations: str,
    rate_messages: str,
    max_hyperties: int,
    max_polls: int,
    log_level: str,
) -> None:
    """Run the push element domain://push.<DOMAIN> with its HTTP endpoint at /hyperty/."""
    from tidings.hyperty.element_limits import ElementLimits
    from tidings.hyperty.identity import IdentityVerifier
    from tidings.service.limits import Rule

    _logging(log_level)
    if (idp_issuer is None) != (idp_jwks is None):
        raise click.UsageError("--idp-issuer and --idp-jwks go together")
    verifier = None
    if idp_issuer is not None and idp_jwks is not None:
        verifier = IdentityVerifier(idp_issuer, idp_audience or domain, idp_jwks)
    # What the element is told beyond where it runs: its TTL, whom it pushes to, whom it trusts.
    try:
        limits = ElementLimits(
            registrations_per_client=Rule.parse(rate_registrations),
            messages_per_runtime=Rule.parse(rate_messages),
            hyperties_per_runtime=max_hyperties,
            polls_per_runtime=max_polls,
        )
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    element_options: dict[str, Any] = {
        "ttl": ttl,
        "push_origins": push_origins or None,
        "identity": verifier,
        "limits": limits,
    }
    try:
        asyncio.run(_push_element(domain, key, subject, (host, port), db, element_options))
    except (ValueError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc


async def _push_element(
    domain: str,
    key: str,
    subject: str | None,
    listen: tuple[str, int],
    db: str | None,
    element_options: dict[str, Any],
) -> None:
    from tidings.hyperty.element import PushElement
    from tidings.hyperty.http import ElementApp, ElementServer
    from tidings.hyperty.store import ElementStore
    from tidings.sender import RetryPolicy, Sender, load_vapid_key

    verifier = element_options["identity"]
    if verifier is not None:
        await verifier.keys()  # a JWKS that cannot be loaded stops the start-up
    vapid = load_vapid_key(key)
    store = ElementStore(db) if db else ElementStore()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    retry = RetryPolicy(max_attempts=2, base_delay=0.2, max_delay=1.0)
    async with Sender(vapid, subject or f"mailto:push@{domain}", retry=retry, timeout=10) as sender:
        element = PushElement(
            domain,
            sender,
            store=store,
            application_server_key=vapid.public_key_b64,
            **element_options,
        )
        async with ElementServer(ElementApp(element), *listen) as server:
            click.echo(
                f"push element {element.url} at {server.url}/hyperty/messages "
                f"(demo page {server.url}/hyperty/), key {vapid.public_key_b64}, pushing to "
                f"{', '.join(sorted(element.push_origins))}",
                err=True,
            )
            await stop.wait()
    store.close()


# The runtime side ---------------------------------------------------------------------------


@hyperty.group()
def runtime() -> None:
    """Create and run a Hyperty runtime that push can wake."""


@runtime.command("init")
@_state
@click.option("--domain", required=True)
@click.option("--element", required=True, help="The push element's HTTP base URL (…/hyperty).")
@click.option("--service", required=True, help="The push service (ws://host:port/).")
@click.option("--hyperty", "factory", default="connector", show_default=True, help="Factory.")
@click.option("--name", default="Bob", show_default=True, help="The Connector's display name.")
@click.option("--answer", type=click.Choice(["accept", "decline"]), default="accept")
@click.option("--ring-seconds", type=float, default=0.0, show_default=True)
@click.option(
    "--asleep",
    is_flag=True,
    help="Serve pushes by `tidings agent` starting `python -m tidings.hyperty.wake`.",
)
def runtime_init(
    state: Path,
    domain: str,
    element: str,
    service: str,
    factory: str,
    name: str,
    answer: str,
    ring_seconds: float,
    asleep: bool,
) -> None:
    """Create a runtime with one hyperty, subscribe it and register it at the push element."""
    from tidings.hyperty.runtime import HypertyRuntime, HypertyRuntimeError
    from tidings.hyperty.wake import wake_command

    async def init() -> dict[str, object]:
        runtime = HypertyRuntime(None, state, domain=domain, element=element, service=service)
        options = {"name": name, "answer": answer, "ring_seconds": ring_seconds}
        async with runtime:
            url = await runtime.create_hyperty(factory, options=options)
            await runtime.subscribe(command=wake_command(state) if asleep else None)
        return {"runtime": runtime.url, "hyperty": url, "asleep": asleep}

    try:
        click.echo(json.dumps(asyncio.run(init())))
    except (HypertyRuntimeError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc


@runtime.command("run")
@_state
@click.option("--listen", is_flag=True, help="Also hold the message connection (no push then).")
@_log_level
def runtime_run(state: Path, listen: bool, log_level: str) -> None:
    """Run an awake runtime: its own user agent wakes its hyperties in this process."""
    from tidings.hyperty.runtime import HypertyRuntime, HypertyRuntimeError

    _logging(log_level)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        runtime = HypertyRuntime(None, state, listen=listen)
        async with runtime:
            await runtime.subscribe()
            click.echo(f"runtime ready: {runtime.url} {' '.join(runtime.hyperties)}", err=True)
            await stop.wait()

    try:
        asyncio.run(run())
    except HypertyRuntimeError as exc:
        raise click.ClickException(str(exc)) from exc


@hyperty.command("call")
@_state
@click.option("--domain", default=None, help="Needed the first time (a new caller runtime).")
@click.option("--element", default=None, help="The push element's HTTP base URL (…/hyperty).")
@click.option("--timeout", type=float, default=30.0, show_default=True)
@click.argument("callee")
def call(state: Path, domain: str | None, element: str | None, timeout: float, callee: str) -> None:
    """Call CALLEE (a hyperty:// address) from a Connector; print the answer."""
    from tidings.hyperty.connector import Connector
    from tidings.hyperty.runtime import HypertyRuntime, HypertyRuntimeError

    async def run() -> str:
        runtime = HypertyRuntime(None, state, domain=domain, element=element, listen=True)
        async with runtime:
            urls = [u for u, s in runtime.hyperties.items() if s["factory"] == "connector"]
            url = urls[0] if urls else await runtime.create_hyperty("connector")
            await runtime.wait_listening()
            connector = await runtime.get_hyperty(url)
            assert isinstance(connector, Connector)
            answer = await connector.call(callee, timeout=timeout)
            return answer.to_json()

    try:
        click.echo(asyncio.run(run()))
    except (HypertyRuntimeError, TimeoutError) as exc:
        raise click.ClickException(str(exc) or "no answer in time") from exc


@hyperty.command("wake")
@_state
def wake(state: Path) -> None:
    """Handle one push for a sleeping runtime (the message on standard input)."""
    from tidings.hyperty.wake import main

    sys.exit(main(["--state", str(state)]))
