"""`tidings send`: send a Web Push message to one subscription or fan out to many.

Exit status: 0 every message accepted (or --dry-run); 1 some rejected, failed or
invalid; 2 usage error (bad option, unreadable file, bad key); 3 some subscriptions
gone (404/410; nothing worse); 4 some left for later (429/5xx after retries; nothing
worse than gone). With --receipt (one subscription, accepted): 0 delivered; 5 expired
undelivered (410 receipt); 6 no receipt within --receipt-timeout; 7 no receipt can be
had (the service gave no receipt subscription, or speaks only HTTP/1.1).
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from tidings import tracing
from tidings.sender import (
    PushRequest,
    ReceiptError,
    ResultKind,
    RetryPolicy,
    Sender,
    SendResult,
    load_vapid_key,
)
from tidings.sender.request import URGENCIES, encode_payload
from tidings.webpush import InvalidKeyError, VapidKey, WebPushError

__all__ = [
    "EXIT_EXPIRED",
    "EXIT_GONE",
    "EXIT_NO_RECEIPT",
    "EXIT_PROBLEM",
    "EXIT_RECEIPT_TIMEOUT",
    "EXIT_RETRY_LATER",
    "EXIT_USAGE",
    "exit_code",
    "send",
]

EXIT_OK = 0
EXIT_PROBLEM = 1
EXIT_USAGE = 2
EXIT_GONE = 3
EXIT_RETRY_LATER = 4
EXIT_EXPIRED = 5  # --receipt: the service gave up before the user agent acknowledged (410)
EXIT_RECEIPT_TIMEOUT = 6  # --receipt: no receipt within --receipt-timeout
EXIT_NO_RECEIPT = 7  # --receipt: no receipt subscription, or it cannot be monitored


def exit_code(counts: dict[ResultKind, int]) -> int:
    """The exit status for these result counts (the most serious problem wins)."""
    if counts.get(ResultKind.REJECTED) or counts.get(ResultKind.FAILED):
        return EXIT_PROBLEM
    if counts.get(ResultKind.INVALID):
        return EXIT_PROBLEM
    if counts.get(ResultKind.RETRY_LATER):
        return EXIT_RETRY_LATER
    if counts.get(ResultKind.GONE):
        return EXIT_GONE
    return EXIT_OK


def _payload(message: str | None, file: Path | None, json_text: str | None) -> bytes | None:
    given = [x for x in (message, file, json_text) if x is not None]
    if len(given) > 1:
        raise click.UsageError("give the message once: MESSAGE, --file or --json")
    try:
        if file is not None:
            data = file.read_bytes()
        elif json_text is not None:
            try:
                value = json.loads(json_text)
            except ValueError as exc:
                raise click.BadParameter(f"not valid JSON: {exc}", param_hint="--json") from None
            data = json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
        elif message is not None:
            data = message.encode("utf-8")
        else:
            return None
        return encode_payload(data)
    except WebPushError as exc:
        raise click.UsageError(str(exc)) from None
    except OSError as exc:
        raise click.BadParameter(str(exc), param_hint="--file") from None


def _read_one(path: Path) -> Any:
    try:
        text = sys.stdin.read() if str(path) == "-" else path.read_text("utf-8")
        return json.loads(text)
    except (OSError, ValueError) as exc:
        raise click.BadParameter(
            f"cannot read a subscription JSON: {exc}", param_hint="--subscription"
        ) from None


def _read_many(path: Path) -> Iterator[Any]:
    """One subscription per non-empty line; an unparsable line becomes an `invalid` result."""
    try:
        handle = sys.stdin if str(path) == "-" else path.open("r", encoding="utf-8")
    except OSError as exc:
        raise click.BadParameter(str(exc), param_hint="--subscriptions") from None
    with handle:
        for line in handle:
            line = line.strip()
            if line:
                try:
                    yield json.loads(line)
                except ValueError:
                    yield line


def _count_lines(path: Path) -> int | None:
    if str(path) == "-":
        return None
    with path.open("rb") as handle:
        return sum(1 for line in handle if line.strip())


def _print_request(request: PushRequest, body_out: Path | None) -> None:
    target = request.url.split("//", 1)[1]
    host, _, path = target.partition("/")
    click.echo(f"> {request.method} /{path} HTTP/1.1")
    click.echo(f"> Host: {host}")
    for line in request.header_lines():
        click.echo(f"> {line}")
    click.echo(">")
    if request.body:
        where = f"written to {body_out}" if body_out else "not written (use --body-out FILE)"
        click.echo(f"* body: {len(request.body)} bytes, encrypted, {where}")
    click.echo(f"* replay: {request.to_curl(str(body_out) if body_out else None)}")


def _body_path(body_out: Path, index: int, many: bool) -> Path:
    if not many:
        return body_out
    return body_out.with_name(f"{body_out.stem}-{index}{body_out.suffix}")


def _describe(result: SendResult) -> None:
    status = f" {result.status}" if result.status is not None else ""
    click.echo(f"{result.kind.value}{status}  {result.subscription.endpoint}")
    if result.http_version:
        click.echo(f"  protocol: {result.http_version}")
    if result.location:
        click.echo(f"  location: {result.location}")
    if result.receipt:
        click.echo(f"  receipt subscription: {result.receipt}")
    if result.ttl is not None:
        click.echo(f"  ttl kept: {result.ttl}")
    if result.reason:
        click.echo(f"  reason: {result.reason}")
    if result.retry_after is not None:
        click.echo(f"  retry after: {result.retry_after:g} s")
    if result.attempts > 1:
        click.echo(f"  attempts: {result.attempts}")


def _gone_line(result: SendResult) -> str:
    original = result.original
    if isinstance(original, dict):
        return json.dumps(original, separators=(",", ":"))
    return json.dumps(result.subscription.to_json(), separators=(",", ":"))


@click.command(
    "send",
    epilog=(
        "Exit status: 0 all accepted (or --dry-run); 1 some rejected, failed or invalid; "
        "2 usage error; 3 some subscriptions gone (404/410), nothing worse; "
        "4 some to retry later (429/5xx after retries), nothing worse than gone. "
        "With --receipt: 0 delivered, 5 expired undelivered, 6 no receipt in time, "
        "7 no receipt possible (none offered, or HTTP/1.1 only)."
    ),
)
@click.argument("message", required=False)
@click.option(
    "--key", "key_path", required=True, help="VAPID private key: PEM/DER file, or base64url text."
)
@click.option("--subject", required=True, help="VAPID contact: mailto:... or https://...")
@click.option(
    "--subscription",
    "one",
    type=click.Path(path_type=Path, allow_dash=True),
    help="A subscription JSON file (toJSON()); - for stdin.",
)
@click.option(
    "--subscriptions",
    "many",
    type=click.Path(path_type=Path, allow_dash=True),
    help="JSON lines, one subscription per line; - for stdin.",
)
@click.option(
    "--file",
    "file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Send this file's bytes.",
)
@click.option("--json", "json_text", help="Send this JSON (validated, compacted).")
@click.option(
    "--ttl",
    type=click.IntRange(0, 2**31),
    default=3600,
    show_default=True,
    help="Seconds the service may keep the message.",
)
@click.option("--urgency", type=click.Choice(URGENCIES), help="RFC 8030 Urgency.")
@click.option(
    "--topic", help="RFC 8030 Topic: replaces an undelivered message with the same topic."
)
@click.option(
    "--encoding", type=click.Choice(["aes128gcm", "aesgcm"]), default="aes128gcm", show_default=True
)
@click.option("--concurrency", type=click.IntRange(1, 10000), default=100, show_default=True)
@click.option(
    "--workers",
    type=click.IntRange(0, 64),
    default=0,
    show_default=True,
    help="Encryption worker processes for --subscriptions.",
)
@click.option(
    "--retries",
    type=click.IntRange(0, 20),
    default=3,
    show_default=True,
    help="Retries of 429/5xx/network errors.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(0.1, 600),
    default=30.0,
    show_default=True,
    help="Seconds to wait for each answer.",
)
@click.option(
    "--cacert",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="Trust this CA (PEM) for https endpoints.",
)
@click.option("--insecure", is_flag=True, help="Do not verify TLS certificates.")
@click.option(
    "--receipt",
    is_flag=True,
    help="Ask for a delivery receipt (RFC 8030) and wait for it (--subscription only).",
)
@click.option(
    "--receipt-timeout",
    type=click.FloatRange(0.1, 86400),
    default=60.0,
    show_default=True,
    help="Seconds to wait for the receipt.",
)
@click.option("--dry-run", is_flag=True, help="Print the exact request(s) instead of sending.")
@click.option(
    "--body-out",
    type=click.Path(path_type=Path, dir_okay=False),
    help="With --dry-run: write the encrypted body here (NAME-N.EXT for many).",
)
@click.option(
    "--gone-out",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write gone subscriptions here, as JSON lines.",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.option(
    "--otlp-endpoint",
    envvar="TIDINGS_OTLP_ENDPOINT",
    metavar="URL",
    help="Trace each push (OpenTelemetry, OTLP over HTTP to URL, e.g. http://127.0.0.1:4318); "
    "the service continues the trace from the request's traceparent.",
)
def send(
    message: str | None,
    key_path: str,
    subject: str,
    one: Path | None,
    many: Path | None,
    file: Path | None,
    json_text: str | None,
    ttl: int,
    urgency: str | None,
    topic: str | None,
    encoding: str,
    concurrency: int,
    workers: int,
    retries: int,
    timeout: float,
    cacert: Path | None,
    insecure: bool,
    receipt: bool,
    receipt_timeout: float,
    dry_run: bool,
    body_out: Path | None,
    gone_out: Path | None,
    quiet: bool,
    otlp_endpoint: str | None,
) -> None:
    """Send MESSAGE (or --file / --json) to --subscription or to every --subscriptions line."""
    if otlp_endpoint:
        try:
            tracing.enable("tidings-send", endpoint=otlp_endpoint)
        except tracing.TracingUnavailable as exc:
            raise click.UsageError(str(exc)) from None
        # Spans still queued are exported when the command ends, however it ends.
        click.get_current_context().call_on_close(tracing.disable)
    if (one is None) == (many is None):
        raise click.UsageError("give exactly one of --subscription FILE or --subscriptions FILE")
    if body_out is not None and not dry_run:
        raise click.UsageError("--body-out goes with --dry-run")
    if receipt and many is not None:
        raise click.UsageError("--receipt goes with --subscription (one message)")
    try:
        key: VapidKey = load_vapid_key(key_path)
    except InvalidKeyError as exc:
        raise click.BadParameter(str(exc), param_hint="--key") from None
    data = _payload(message, file, json_text)
    verify: bool | str = False if insecure else (str(cacert) if cacert else True)
    try:
        sender = Sender(
            key,
            subject,
            retry=RetryPolicy(max_attempts=retries + 1),
            timeout=timeout,
            verify=verify,
            encrypt_workers=workers if many is not None and not dry_run else 0,
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    options: dict[str, Any] = {"ttl": ttl, "urgency": urgency, "topic": topic}
    try:
        from tidings.sender.request import check_options

        check_options(ttl, urgency, topic, encoding)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None

    if dry_run:
        items = [_read_one(one)] if one is not None else list(_read_many(many))  # type: ignore[arg-type]
        for index, item in enumerate(items, 1):
            try:
                request = sender.build(
                    item,
                    data,
                    content_encoding=encoding,
                    headers={"Prefer": "respond-async"} if receipt else None,
                    **options,
                )
            except (WebPushError, ValueError) as exc:
                click.echo(f"* subscription {index}: not usable: {exc}", err=True)
                continue
            out = _body_path(body_out, index, len(items) > 1) if body_out else None
            if out is not None and request.body:
                out.write_bytes(request.body)
            _print_request(request, out)
        sys.exit(EXIT_OK)

    if one is not None:
        subscription = _read_one(one)

        async def single() -> tuple[SendResult, tuple[int, str] | None]:
            async with sender:
                result = await sender.send(
                    subscription, data, content_encoding=encoding, receipt=receipt, **options
                )
                if not (receipt and result.ok):
                    return result, None
                _describe(result)  # before the wait, which may be long
                return result, await _wait_for_receipt(sender, result, receipt_timeout)

        try:
            result, outcome = asyncio.run(single())
        except (WebPushError, ValueError) as exc:
            raise click.UsageError(f"subscription not usable: {exc}") from None
        if outcome is not None:
            code, line = outcome
            click.echo(line)
            sys.exit(code)
        _describe(result)
        if gone_out is not None and result.kind is ResultKind.GONE:
            gone_out.write_text(_gone_line(result) + "\n", "utf-8")
        sys.exit(exit_code({result.kind: 1}))

    assert many is not None
    total = _count_lines(many)
    summary = asyncio.run(
        _fan_out(sender, many, data, encoding, options, concurrency, total, quiet)
    )
    _summary_table(summary)
    if gone_out is not None:
        with gone_out.open("w", encoding="utf-8") as handle:
            for result in summary.gone:
                handle.write(_gone_line(result) + "\n")
    sys.exit(exit_code(summary.counts))


async def _wait_for_receipt(sender: Sender, result: SendResult, timeout: float) -> tuple[int, str]:
    """Wait for the receipt of an accepted push: (exit code, line to print)."""
    started = asyncio.get_running_loop().time()
    try:
        receipt = await sender.wait_for_receipt(result, timeout=timeout)
    except TimeoutError:
        return EXIT_RECEIPT_TIMEOUT, f"receipt: none within {timeout:g} s"
    except ReceiptError as exc:
        return EXIT_NO_RECEIPT, f"receipt: unavailable: {exc}"
    elapsed = asyncio.get_running_loop().time() - started
    if receipt.delivered:
        return EXIT_OK, f"receipt: delivered ({receipt.status}) after {elapsed:.1f} s"
    if receipt.expired:
        return EXIT_EXPIRED, f"receipt: expired ({receipt.status}) after {elapsed:.1f} s"
    return EXIT_PROBLEM, f"receipt: status {receipt.status} after {elapsed:.1f} s"


async def _fan_out(
    sender: Sender,
    path: Path,
    data: bytes | None,
    encoding: str,
    options: dict[str, Any],
    concurrency: int,
    total: int | None,
    quiet: bool,
) -> Any:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    console = Console(stderr=True)
    progress = Progress(
        TextColumn("sending"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:>8.0f} msg/s"),
        TimeElapsedColumn(),
        console=console,
        disable=quiet,
        transient=False,
    )
    task = progress.add_task("send", total=total, rate=0.0)
    done = 0
    loop = asyncio.get_running_loop()
    started = loop.time()

    def tick(result: SendResult) -> None:
        nonlocal done
        done += 1
        if done % 50 == 0 or done == total:
            elapsed = loop.time() - started
            progress.update(task, completed=done, rate=done / elapsed if elapsed else 0.0)

    with progress:
        async with sender:
            summary = await sender.send_many(
                _read_many(path),
                data,
                content_encoding=encoding,
                concurrency=concurrency,
                on_result=tick,
                **options,
            )
        progress.update(task, completed=done)
    return summary


def _summary_table(summary: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="tidings send", show_header=True)
    table.add_column("result")
    table.add_column("count", justify="right")
    for kind in ResultKind:
        table.add_row(kind.value, str(summary.counts[kind]))
    table.add_row("total", str(summary.total), end_section=True)
    table.add_row("elapsed", f"{summary.elapsed:.2f} s")
    table.add_row("messages/s", f"{summary.messages_per_second:.0f}")
    Console(width=60).print(table)
    for result in summary.problems[:10]:
        click.echo(
            f"{result.kind.value}: {result.subscription.endpoint}: {result.reason}", err=True
        )
    if len(summary.problems) > 10:
        click.echo(f"... and {len(summary.problems) - 10} more problems", err=True)
