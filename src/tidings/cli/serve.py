"""`tidings serve`: run the push service."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from tidings.service.config import ServiceConfig, load_config
from tidings.service.logs import configure_logging


@click.command()
@click.option("--host", help="Address to listen on. [default: 127.0.0.1; env TIDINGS_HOST]")
@click.option("--port", type=int, help="Port for HTTP and WebSocket. [default: 8080]")
@click.option(
    "--db",
    help="SQLite database file (or sqlite:///path). [default: tidings-data/tidings.db]",
)
@click.option(
    "--store",
    help="Store URL: sqlite:///path (one node) or postgresql://user@host/db (shared by "
    "several nodes; ?pool_max=N&timeout=S). [default: the --db file]",
)
@click.option(
    "--cluster",
    help="Cluster bus URL, redis://host:6379/0 (?prefix=name: for the keys): deliver to "
    "user agents connected to other nodes. [default: single node]",
)
@click.option("--node-id", help="This node's name in the cluster. [default: host-pid-random]")
@click.option(
    "--public-url",
    help="Origin written into push endpoints, e.g. https://push.example.com when behind a "
    "proxy; VAPID tokens must name it as their audience. [default: http://HOST:PORT]",
)
@click.option(
    "--secrets",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Token key file. [default: tidings-secrets.json next to the database]",
)
@click.option("--max-ttl", type=int, help="Longest TTL kept, in seconds. [default: 30 days]")
@click.option(
    "--max-messages",
    "max_messages_per_user_agent",
    type=int,
    help="Undelivered messages kept per user agent (all its subscriptions); further pushes "
    "get 429. Per subscription: max_messages_per_subscription. [default: 1000]",
)
@click.option(
    "--sqlite-synchronous",
    type=click.Choice(["normal", "full", "extra"]),
    help="SQLite durability: normal survives a crash of the process, full also a power "
    "loss. [default: normal]",
)
@click.option(
    "--tls-cert",
    type=click.Path(exists=True, dir_okay=False),
    help="PEM certificate (chain): serve HTTPS and WSS, with HTTP/2 by ALPN.",
)
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False), help="PEM private key.")
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    help="Processes sharing the port (SO_REUSEPORT), one per core; needs --cluster so "
    "that a push accepted by one reaches user agents held by another. [default: 1]",
)
@click.option(
    "--reuse-port/--no-reuse-port",
    default=None,
    help="SO_REUSEPORT, so several `tidings serve` processes can share the port.",
)
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]))
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    help="text lines, or one JSON object per line with request_id and message_id "
    "(debug level follows a message from its POST to its delivery). [default: text]",
)
@click.option(
    "--demo/--no-demo",
    default=None,
    help="Serve /playground (subscribe a browser, send it test messages) with a demo VAPID "
    "key kept next to the database. For trying the service, not for production.",
)
@click.option(
    "--dashboard-token",
    help="Token for /dashboard, /api/stats and /metrics (?token= or Authorization: Bearer). "
    "Without one they answer only clients on this machine. [env TIDINGS_DASHBOARD_TOKEN]",
)
@click.option(
    "--otlp-endpoint",
    metavar="URL",
    help="Trace each push (OpenTelemetry, OTLP over HTTP, e.g. http://127.0.0.1:4318): accept, "
    "store, route, deliver, ack, continuing the sender's traceparent. Needs the tracing "
    "extra. [default: off; env TIDINGS_OTLP_ENDPOINT]",
)
@click.option(
    "--trusted-proxy",
    "trusted_proxies",
    multiple=True,
    metavar="CIDR",
    help="A reverse proxy (address or network) whose Forwarded / X-Forwarded-For headers "
    "name the real client; repeatable. Nobody else's are read. [env TIDINGS_TRUSTED_PROXIES, "
    "comma-separated]",
)
@click.option(
    "--allowed-host",
    "allowed_hosts",
    multiple=True,
    metavar="NAME",
    help="A host name the dashboard, pages and demo answer to (DNS rebinding); repeatable, "
    "`*` for any. Push resources answer any. [default: the --public-url host and localhost; "
    "env TIDINGS_ALLOWED_HOSTS, comma-separated]",
)
@click.option(
    "--megaphone-url",
    help="Read broadcasts from Mozilla's Megaphone service (its /v1/broadcasts URL) "
    "instead of the store; the broadcast API then refuses changes. [env TIDINGS_MEGAPHONE_URL]",
)
@click.option("--megaphone-token", help="Bearer token for --megaphone-url.")
@click.option(
    "--megaphone-poll",
    type=float,
    help="Seconds between two reads of --megaphone-url. [default: 30]",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A TOML file with these settings (top level or a [serve] table). Environment "
    "variables TIDINGS_<SETTING> override it; flags override both.",
)
def serve(config_file: Path | None, **flags: Any) -> None:
    """Run the push service (HTTP API for application servers, WebSocket for browsers).

    Settings come from, lowest first: defaults, --config FILE, TIDINGS_* environment
    variables (e.g. TIDINGS_PORT, TIDINGS_PUBLIC_URL, TIDINGS_MAX_TTL), then flags.
    """
    if flags.get("secrets") is not None:
        flags["secrets"] = str(flags["secrets"])
    for listed in ("trusted_proxies", "allowed_hosts"):  # repeatable flags, one setting each
        flags[listed] = ",".join(flags.get(listed) or ()) or None
    try:
        config = load_config(config_file).with_overrides(flags)
    except (ValueError, OSError) as exc:
        raise click.UsageError(str(exc)) from exc
    if config.otlp_endpoint:
        try:
            import opentelemetry.sdk.trace  # noqa: F401
        except ImportError:
            raise click.UsageError(
                "--otlp-endpoint needs the OpenTelemetry SDK: pip install 'tidings[tracing]'"
            ) from None
    _announce(config)
    from tidings.service.run import serve as run_server

    run_server(config)


def _announce(config: ServiceConfig) -> None:
    configure_logging(config.log_level, config.log_format)
    click.echo(f"Tidings push service on {config.origin}", err=True)
    click.echo(f"  WebSocket (Firefox dom.push.serverURL): {config.websocket_url}", err=True)
    click.echo(f"  health:   {config.origin}/health", err=True)
    click.echo(f"  metrics:  {config.origin}/metrics", err=True)
    click.echo(f"  dashboard: {config.origin}/dashboard", err=True)
    if config.demo:
        click.echo(f"  playground: {config.origin}/playground/", err=True)
    else:
        click.echo("  playground: off (start with --demo, or `make run DEMO=1`)", err=True)
    if not config.dashboard_token:
        from tidings.service.web.access import is_loopback_host

        if not is_loopback_host(config.host):
            click.echo(
                "  note: no --dashboard-token, so /dashboard, /api/stats and /metrics answer "
                "only clients on this machine",
                err=True,
            )
    click.echo(
        f"  store: {_redact(config.store_url)} (token keys: {config.secrets_path})", err=True
    )
    if config.cluster:
        click.echo(f"  cluster: {_redact(config.cluster)}", err=True)


def _redact(url: str) -> str:
    """A URL fit for the terminal: no password."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(":" + parts.password + "@", ":***@")
        return parts._replace(netloc=netloc).geturl()
    return url
