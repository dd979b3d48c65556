"""`tidings keys`: VAPID key pairs (and later TLS pairs)."""

from __future__ import annotations

import click


@click.group()
def keys() -> None:
    """Create and inspect keys."""
