"""The `tidings` command: one group, each sub-command in a module of its own."""

from __future__ import annotations

import click

from tidings import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tidings")
def main() -> None:
    """Tidings: a complete Web Push system (push service, sender, user agent)."""


def _register_commands() -> None:
    """Attach every sub-command; each module owns its own options."""
    from tidings.cli import (
        agent,
        backup,
        bench,
        broadcast,
        demo,
        hyperty,
        keys,
        listen,
        migrate,
        send,
        serve,
    )

    for command in (
        serve.serve,
        keys.keys,
        send.send,
        listen.listen,
        agent.agent,
        bench.bench,
        hyperty.hyperty,
        demo.demo,
        backup.backup,
        backup.restore,
        migrate.migrate,
        broadcast.broadcast,
    ):
        main.add_command(command)


_register_commands()
