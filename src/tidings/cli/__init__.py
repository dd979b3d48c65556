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
    from tidings.cli import keys, serve

    main.add_command(keys.keys)
    main.add_command(serve.serve)
    from tidings.cli import agent

    main.add_command(agent.agent)
    from tidings.cli import listen

    main.add_command(listen.listen)
    from tidings.cli.send import send as send_command

    main.add_command(send_command)
    from tidings.cli import demo, hyperty

    main.add_command(hyperty.hyperty)
    main.add_command(demo.demo)


_register_commands()
