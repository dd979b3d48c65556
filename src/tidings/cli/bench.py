"""`tidings bench`: check a deployment's throughput and latency from the outside."""

from __future__ import annotations

import asyncio

import click
from rich.console import Console
from rich.table import Table


@click.command()
@click.option(
    "--service", "service_url", required=True, help="The service's URL, e.g. http://127.0.0.1:8080"
)
@click.option(
    "--agents",
    type=click.IntRange(1, 5000),
    default=50,
    show_default=True,
    help="WebSocket user agents to connect (one subscription each).",
)
@click.option(
    "--duration",
    type=click.FloatRange(0.5, 600),
    default=5.0,
    show_default=True,
    help="Seconds per phase.",
)
@click.option(
    "--rate",
    "rates",
    type=click.FloatRange(1, 100_000),
    multiple=True,
    help="Pushes per second for a latency phase (repeatable). [default: 100, 1000]",
)
@click.option(
    "--concurrency",
    type=click.IntRange(1, 1000),
    default=64,
    show_default=True,
    help="Requests in flight during the throughput phase.",
)
def bench(
    service_url: str, agents: int, duration: float, rates: tuple[float, ...], concurrency: int
) -> None:
    """Measure a running push service: pushes accepted per second, then the time from
    an application server's POST to the user agent's receipt at fixed rates.

    It subscribes its own user agents (Firefox's WebSocket protocol) with a fresh VAPID
    key and acknowledges everything, so it leaves nothing behind but the subscriptions.
    Pushes refused by the service's rate limits (429, e.g. 600/min per subscription by
    default) are counted as refused: use more --agents to measure beyond them.
    """
    from tidings.loadcheck import run_bench

    console = Console(stderr=True)
    report = asyncio.run(
        run_bench(
            service_url,
            agents=agents,
            duration=duration,
            rates=rates or (100.0, 1000.0),
            concurrency=concurrency,
            progress=lambda text: console.print(f"[dim]{text}[/dim]"),
        )
    )
    out = Console()
    summary = Table(title=f"{service_url}: throughput ({report.agents} user agents)")
    summary.add_column("accepted/s", justify="right")
    summary.add_column("accepted", justify="right")
    summary.add_column("refused", justify="right")
    summary.add_column("delivered", justify="right")
    summary.add_row(
        f"{report.accepted_per_second:,.0f}",
        f"{report.accepted:,}",
        f"{report.rejected:,}",
        f"{report.delivered:,}",
    )
    out.print(summary)
    latency = Table(title="POST to user agent receipt")
    for column in ("rate/s", "sent", "delivered", "p50 ms", "p90 ms", "p99 ms"):
        latency.add_column(column, justify="right")
    for result in report.rates:
        latency.add_row(
            f"{result.rate:,.0f}",
            f"{result.sent:,}",
            f"{result.delivered:,}",
            f"{result.quantile(0.50):.2f}",
            f"{result.quantile(0.90):.2f}",
            f"{result.quantile(0.99):.2f}",
        )
    out.print(latency)
