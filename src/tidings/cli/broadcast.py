"""`tidings broadcast`: list, set and delete a push service's Megaphone broadcasts.

The service's broadcast API (`/api/broadcasts`) needs its dashboard token; without it
the service answers 401 or 403, the command prints the service's message and exits 1,
and nothing changes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import quote

import click
import httpx


def _origin(service: str) -> str:
    origin = service.rstrip("/")
    for ws, http in (("wss://", "https://"), ("ws://", "http://")):
        if origin.startswith(ws):
            origin = http + origin[len(ws) :]
    return origin


def _call(
    service: str, token: str | None, method: str, path: str, body: Any = None
) -> httpx.Response:
    headers = {"accept": "application/json"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    url = _origin(service) + "/api/broadcasts" + path
    try:
        response = httpx.request(method, url, json=body, headers=headers, timeout=30)
    except httpx.HTTPError as exc:
        raise click.ClickException(f"cannot reach {url}: {exc}") from None
    if response.status_code >= 400:
        try:
            message = response.json().get("message", response.text)
        except ValueError:
            message = response.text
        raise click.ClickException(f"{response.status_code}: {message}")
    return response


F = TypeVar("F", bound=Callable[..., Any])


def _service_options(command: F) -> F:
    """--service and --token, taken by every sub-command (after its arguments too)."""
    command = click.option(
        "--token",
        envvar="TIDINGS_DASHBOARD_TOKEN",
        help="The service's dashboard token. [env TIDINGS_DASHBOARD_TOKEN]",
    )(command)
    return click.option(
        "--service",
        required=True,
        envvar="TIDINGS_SERVICE",
        help="The push service's origin (http(s)://host:port). [env TIDINGS_SERVICE]",
    )(command)


@click.group()
def broadcast() -> None:
    """Megaphone broadcasts: versions Firefox learns in `hello` and as they change."""


@broadcast.command("list")
@_service_options
def list_broadcasts(service: str, token: str | None) -> None:
    """Print every broadcast as JSON ({id: version})."""
    click.echo(json.dumps(_call(service, token, "GET", "").json()["broadcasts"], indent=1))


@broadcast.command("set")
@click.argument("broadcast_id")
@click.argument("version")
@_service_options
def set_broadcast(service: str, token: str | None, broadcast_id: str, version: str) -> None:
    """Create a broadcast or change its version; connected clients following it hear."""
    _call(service, token, "PUT", "/" + quote(broadcast_id, safe=""), {"version": version})
    click.echo(f"{broadcast_id} = {version}")


@broadcast.command("delete")
@click.argument("broadcast_id")
@_service_options
def delete_broadcast(service: str, token: str | None, broadcast_id: str) -> None:
    """Remove a broadcast."""
    _call(service, token, "DELETE", "/" + quote(broadcast_id, safe=""))
    click.echo(f"deleted {broadcast_id}")
