"""`tidings demo`: things to watch run on one machine.

    tidings demo call [--awake] [--answer decline] [--calls 3] [--media [--seconds 3]] [--json]

`call` starts a push service, a push element, a caller runtime and a callee runtime that
is asleep (no process: `tidings agent` starts it on the push), places calls and prints
the timeline of each call set-up. `--media` makes each call carry audio and video
(aiortc, ICE on 127.0.0.1 only) for `--seconds`, then the caller hangs up; `--json`
prints one JSON object per call instead of the timeline. The scene is `CallDemo`
(demo_call.py); what each call gives back is in demo_report.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import tempfile
from pathlib import Path

import click


@click.group()
def demo() -> None:
    """Demonstrations that run everything on this machine."""


@demo.command("call")
@click.option("--awake", is_flag=True, help="The callee runtime runs (no process start).")
@click.option("--answer", type=click.Choice(["accept", "decline"]), default="accept")
@click.option("--ring-seconds", type=float, default=0.0, show_default=True)
@click.option("--calls", type=int, default=1, show_default=True, help="How many calls.")
@click.option(
    "--keep",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Keep the state and logs in this directory. [default: a temporary one]",
)
@click.option("--media", is_flag=True, help="The call carries audio and video (aiortc).")
@click.option(
    "--seconds", type=float, default=3.0, show_default=True, help="How long a media call lasts."
)
@click.option("--json", "as_json", is_flag=True, help="Print each call's numbers as JSON.")
def call(
    awake: bool,
    answer: str,
    ring_seconds: float,
    calls: int,
    keep: Path | None,
    media: bool,
    seconds: float,
    as_json: bool,
) -> None:
    """Call a sleeping Hyperty runtime through Web Push and print the timeline."""
    logging.basicConfig(level=logging.WARNING)
    work = keep or Path(tempfile.mkdtemp(prefix="tidings-demo-"))
    try:
        asyncio.run(
            _call(
                work,
                "awake" if awake else "asleep",
                answer,
                ring_seconds,
                calls,
                media=media,
                seconds=seconds,
                as_json=as_json,
            )
        )
    except (RuntimeError, TimeoutError) as exc:
        raise click.ClickException(str(exc) or "the call got no answer in time") from exc
    finally:
        if keep is None:
            shutil.rmtree(work, ignore_errors=True)


async def _call(
    work: Path,
    mode: str,
    answer: str,
    ring_seconds: float,
    calls: int,
    *,
    media: bool = False,
    seconds: float = 3.0,
    as_json: bool = False,
) -> None:
    from tidings.cli.demo_call import CallDemo

    async with CallDemo(
        work,
        mode=mode,  # type: ignore[arg-type]
        answer=answer,
        ring_seconds=ring_seconds,
        media=media,
        seconds=seconds,
    ) as scene:
        assert scene.element is not None and scene.element_server is not None
        assert scene.caller is not None
        if as_json:
            for _ in range(calls):
                result = await scene.call(timeout=60 if media else 20)
                click.echo(json.dumps(result.report()))
            return
        click.echo(f"push service  {scene.service_ws}")
        click.echo(f"push element  {scene.element.url} at {scene.element_server.url}/hyperty")
        click.echo(f"caller        {scene.caller_url} (runtime {scene.caller.url}, listening)")
        state = (
            "asleep: no runtime process; `tidings agent` holds the push connection"
            if mode == "asleep"
            else "awake: `tidings hyperty runtime run` holds the push connection"
        )
        click.echo(f"callee        {scene.callee_url} ({state})")
        for number in range(1, calls + 1):
            result = await scene.call(timeout=60 if media else 20)
            click.echo(f"\ncall {number}: {result.answer.code} {result.answer.description}")
            click.echo(result.timeline())
            if result.wake_latency is not None:
                click.echo(
                    f"wake-up latency (invitation to the Connector's handler): "
                    f"{result.wake_latency * 1000:.1f} ms"
                )
            report = result.report()
            if report.get("first_media_ms") is not None:
                frames = report["frames_received"]
                click.echo(
                    f"first media (invitation to the caller's first decoded frame): "
                    f"{report['first_media_ms']:.1f} ms; frames received: caller "
                    f"{frames['caller']}, callee {frames['callee']}"
                )
