"""`tidings migrate`: move a service from its SQLite file to PostgreSQL."""

from __future__ import annotations

import asyncio

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from tidings.service.store import sqlite_path
from tidings.service.store.migrate import (
    MigrationError,
    TableCopy,
    migrate_sqlite_to_postgres,
    source_row_counts,
)


@click.command()
@click.option(
    "--from",
    "source",
    required=True,
    metavar="sqlite:PATH",
    help="The SQLite store: sqlite:PATH, sqlite:///PATH or a plain path.",
)
@click.option(
    "--to",
    "target",
    required=True,
    metavar="postgresql://...",
    help="The PostgreSQL store (made if new), as given to `tidings serve --store`.",
)
@click.option("--batch-size", type=click.IntRange(1, 100_000), default=1000, show_default=True)
def migrate(source: str, target: str, batch_size: int) -> None:
    """Copy subscriptions, stored messages and receipts from SQLite into PostgreSQL.

    Safe to run again: rows already copied are kept, so an interrupted copy resumes.
    Start the PostgreSQL nodes with the SQLite service's key file (--secrets) so that
    every endpoint already handed out keeps working.
    """
    if not target.startswith(("postgresql://", "postgres://")):
        raise click.UsageError("--to must be a postgresql:// URL")
    path = sqlite_path(source)
    if not path.exists():
        raise click.ClickException(f"no SQLite database at {path}")
    console = Console(stderr=True)
    total = sum(source_row_counts(path).values())
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("copying", total=total)

        def advance(table: str, rows: int) -> None:
            bar.update(task, advance=rows, description=f"copying {table}")

        try:
            outcome = asyncio.run(
                migrate_sqlite_to_postgres(path, target, batch_size=batch_size, progress=advance)
            )
        except MigrationError as exc:
            raise click.ClickException(str(exc)) from exc
    Console().print(_summary(outcome))


def _summary(outcome: list[TableCopy]) -> Table:
    table = Table(title="SQLite → PostgreSQL")
    table.add_column("table", no_wrap=True)
    for name in ("read", "added", "already there"):
        table.add_column(name, justify="right")
    for copy in outcome:
        table.add_row(copy.table, str(copy.read), str(copy.added), str(copy.already_there))
    return table
