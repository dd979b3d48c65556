"""`tidings backup` and `tidings restore`: the SQLite store and its key file, together."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console

from tidings.service.config import ServiceConfig
from tidings.service.store import sqlite_path
from tidings.service.store.backup import BackupError, Manifest, backup_sqlite, restore_sqlite

_DB_HELP = "The service's SQLite database (or sqlite:///path). [default: tidings-data/tidings.db]"
_SECRETS_HELP = "The token key file. [default: tidings-secrets.json next to the database]"


def _paths(db: str | None, secrets: Path | None) -> tuple[Path, Path]:
    config = ServiceConfig().with_overrides({"db": db, "secrets": secrets and str(secrets)})
    if config.shared_store:
        raise click.UsageError(
            "PostgreSQL is backed up with its own tools (pg_dump, continuous archiving); "
            "keep a copy of the key file beside it"
        )
    return sqlite_path(config.store_url), config.secrets_path


def _summary(manifest: Manifest) -> str:
    size = manifest.database_bytes / 1e6
    return (
        f"{manifest.user_agents} user agents, {manifest.subscriptions} subscriptions, "
        f"{manifest.messages} stored messages ({size:.1f} MB, schema {manifest.schema_version}, "
        f"{len(manifest.key_fingerprints)} token key(s))"
    )


@click.command()
@click.option("--db", help=_DB_HELP)
@click.option("--secrets", type=click.Path(dir_okay=False, path_type=Path), help=_SECRETS_HELP)
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="A new directory for the backup (made 0700).",
)
def backup(db: str | None, secrets: Path | None, out: Path) -> None:
    """Copy the SQLite store online (the service keeps running) with its token key file."""
    database, key_file = _paths(db, secrets)
    console = Console(stderr=True)
    try:
        with console.status(f"Copying {database} online..."):
            manifest = backup_sqlite(database, key_file, out)
    except BackupError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"backed up to {out}: {_summary(manifest)}")


@click.command()
@click.option(
    "--from",
    "source",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="A directory made by `tidings backup`.",
)
@click.option("--db", help=_DB_HELP)
@click.option("--secrets", type=click.Path(dir_okay=False, path_type=Path), help=_SECRETS_HELP)
@click.option(
    "--force", is_flag=True, help="Replace an existing database and key file (stop the service)."
)
def restore(source: Path, db: str | None, secrets: Path | None, force: bool) -> None:
    """Check a backup, then put it in place of the database and key file."""
    database, key_file = _paths(db, secrets)
    try:
        manifest = restore_sqlite(source, database, key_file, force=force)
    except BackupError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"restored {database} and {key_file}: {_summary(manifest)}")
