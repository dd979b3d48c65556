"""Against the Tidings push service itself, with a WebSocket user agent receiving."""

from __future__ import annotations

import asyncio
import json
import shlex
import subprocess
from pathlib import Path

from click.testing import CliRunner

from support.service import RunningService
from tidings.cli import main
from tidings.sender import PushRequest, ResultKind, RetryPolicy, Sender
from tidings.webpush import VapidKey


def make_sender(key: VapidKey) -> Sender:
    return Sender(key, "mailto:ops@example.com", retry=RetryPolicy.none())


async def test_accepted_and_the_agent_receives_the_exact_plaintext(
    service: RunningService, vapid_key: VapidKey
) -> None:
    agent = await service.agent()
    try:
        registration = await agent.register(vapid_key.public_key_b64)
        async with make_sender(vapid_key) as sender:
            result = await sender.send(
                registration.subscription_info(), "héllo from tidings", ttl=60
            )
        assert result.kind is ResultKind.ACCEPTED and result.status == 201, result
        assert result.location and result.ttl is not None
        notification = await agent.next_notification()
        assert notification.plaintext == "héllo from tidings".encode()
    finally:
        await agent.close()


async def test_fan_out_to_many_subscriptions(service: RunningService, vapid_key: VapidKey) -> None:
    agent = await service.agent()
    try:
        registrations = [await agent.register(vapid_key.public_key_b64) for _ in range(10)]
        async with make_sender(vapid_key) as sender:
            summary = await sender.send_many(
                [r.subscription_info() for r in registrations], "everyone", ttl=60, concurrency=5
            )
        assert summary.all_accepted and summary.total == 10
        received = [await agent.next_notification() for _ in range(10)]
        assert {n.plaintext for n in received} == {b"everyone"}
        assert {n.channel_id for n in received} == {r.channel_id for r in registrations}
    finally:
        await agent.close()


async def test_gone_after_unsubscribe(service: RunningService, vapid_key: VapidKey) -> None:
    agent = await service.agent()
    try:
        registration = await agent.register(vapid_key.public_key_b64)
        await agent.unregister(registration)
        gone = []
        async with Sender(vapid_key, "mailto:a@b.c", on_gone=gone.append) as sender:
            result = await sender.send(registration.subscription_info(), "late", ttl=60)
        assert result.kind is ResultKind.GONE and result.status in (404, 410), result
        assert gone == [result]
    finally:
        await agent.close()


async def test_wrong_vapid_key_on_a_restricted_subscription_is_rejected(
    service: RunningService, vapid_key: VapidKey
) -> None:
    agent = await service.agent()
    try:
        registration = await agent.register(vapid_key.public_key_b64)
        async with make_sender(VapidKey.generate()) as sender:
            result = await sender.send(registration.subscription_info(), "x", ttl=60)
        assert result.kind is ResultKind.REJECTED and result.status == 403, result
        assert result.error is not None and result.error.errno is not None
        assert result.reason
    finally:
        await agent.close()


async def test_oversized_body_gets_413_with_the_reason(
    service: RunningService, vapid_key: VapidKey
) -> None:
    agent = await service.agent()
    try:
        registration = await agent.register(vapid_key.public_key_b64)
        async with make_sender(vapid_key) as sender:
            # Bypass the 3993-byte check: a hand-built request over the service's max_body.
            proper = sender.build(registration.subscription_info(), "x", ttl=60)
            body = b"\0" * (service.config.max_body + 1)
            request = PushRequest(
                proper.url, proper.headers, body, subscription=proper.subscription
            )
            result = await sender.deliver(request)
        assert result.kind is ResultKind.REJECTED and result.status == 413, result
        assert result.error is not None and result.reason
    finally:
        await agent.close()


async def test_cli_dry_run_replayed_with_curl_is_accepted(
    service: RunningService, vapid_key: VapidKey, tmp_path: Path
) -> None:
    agent = await service.agent()
    try:
        registration = await agent.register(vapid_key.public_key_b64)
        key_file = tmp_path / "vapid.pem"
        key_file.write_bytes(vapid_key.to_pem())
        sub_file = tmp_path / "sub.json"
        sub_file.write_text(json.dumps(registration.subscription_info()))
        body = tmp_path / "body.bin"
        args = [
            "send",
            "--key",
            str(key_file),
            "--subject",
            "mailto:ops@example.com",
            "--subscription",
            str(sub_file),
            "--dry-run",
            "--body-out",
            str(body),
            "--ttl",
            "60",
            "sent by curl",
        ]
        result = await asyncio.to_thread(CliRunner().invoke, main, args, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        command = next(x for x in result.output.splitlines() if x.startswith("* replay: "))[10:]
        curl = await asyncio.create_subprocess_exec(*shlex.split(command), stdout=subprocess.PIPE)
        stdout, _ = await curl.communicate()
        assert curl.returncode == 0
        assert stdout.split(b"\r\n", 1)[0].split()[1] == b"201", stdout
        notification = await agent.next_notification()
        assert notification.plaintext == b"sent by curl"
    finally:
        await agent.close()
