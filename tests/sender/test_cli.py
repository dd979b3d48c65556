"""`tidings send`: one subscription, many with progress and summary, dry-run, exit codes."""

from __future__ import annotations

import asyncio
import json
import shlex
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from sender.helpers import Keys, ScriptedService
from tidings.cli import main
from tidings.cli.send import exit_code
from tidings.sender import ResultKind
from tidings.webpush import VapidKey, verify_vapid


@pytest.fixture
def key_file(tmp_path: Path, vapid_key: VapidKey) -> Path:
    path = tmp_path / "vapid.pem"
    path.write_bytes(vapid_key.to_pem())
    return path


async def run(*args: str | Path) -> Result:
    runner = CliRunner()
    return await asyncio.to_thread(
        runner.invoke, main, ["send", *map(str, args)], catch_exceptions=False
    )


def base(key_file: Path) -> list[str | Path]:
    return ["--key", key_file, "--subject", "mailto:ops@example.com", "--retries", "0"]


async def test_one_subscription_is_sent_and_described(
    push_service: ScriptedService, key_file: Path, tmp_path: Path
) -> None:
    keys = Keys.generate()
    sub_file = tmp_path / "sub.json"
    sub_file.write_text(json.dumps(keys.subscription(push_service.endpoint("one"))))
    push_service.script("one", (201, {"Location": "/m/7", "TTL": "100"}, b""))
    result = await run(
        *base(key_file),
        "--subscription",
        sub_file,
        "--ttl",
        "120",
        "--urgency",
        "high",
        "--topic",
        "t1",
        "hello there",
    )
    assert result.exit_code == 0, result.output
    assert "accepted 201" in result.output and "location: /m/7" in result.output
    assert "ttl kept: 100" in result.output
    seen = push_service.seen("one")[0]
    assert keys.decrypt(seen.body, seen.headers) == b"hello there"
    assert (seen.headers["TTL"], seen.headers["Urgency"], seen.headers["Topic"]) == (
        "120",
        "high",
        "t1",
    )


async def test_json_and_file_payloads(
    push_service: ScriptedService, key_file: Path, tmp_path: Path
) -> None:
    keys = Keys.generate()
    sub_file = tmp_path / "sub.json"
    sub_file.write_text(json.dumps(keys.subscription(push_service.endpoint("j"))))
    result = await run(*base(key_file), "--subscription", sub_file, "--json", '{"a": [1, 2]}')
    assert result.exit_code == 0
    payload = tmp_path / "payload.bin"
    payload.write_bytes(b"\x00\x01binary")
    result = await run(*base(key_file), "--subscription", sub_file, "--file", payload)
    assert result.exit_code == 0
    first, second = push_service.seen("j")
    assert keys.decrypt(first.body, first.headers) == b'{"a":[1,2]}'
    assert keys.decrypt(second.body, second.headers) == b"\x00\x01binary"


@pytest.mark.parametrize(
    ("status", "code", "word"), [(410, 3, "gone"), (403, 1, "rejected"), (429, 4, "retry_later")]
)
async def test_exit_codes_for_one_subscription(
    push_service: ScriptedService, key_file: Path, tmp_path: Path, status: int, code: int, word: str
) -> None:
    sub_file = tmp_path / "sub.json"
    sub_file.write_text(json.dumps(Keys.generate().subscription(push_service.endpoint("e"))))
    push_service.script("e", (status, {}, b'{"errno": 5, "message": "because"}'))
    gone_out = tmp_path / "gone.jsonl"
    result = await run(*base(key_file), "--subscription", sub_file, "--gone-out", gone_out, "x")
    assert result.exit_code == code, result.output
    assert word in result.output
    if status != 410:
        assert "because" in result.output
    else:
        assert json.loads(gone_out.read_text())["endpoint"] == push_service.endpoint("e")


async def test_many_subscriptions_progress_summary_and_gone_out(
    push_service: ScriptedService, key_file: Path, tmp_path: Path
) -> None:
    subs = [Keys.generate().subscription(push_service.endpoint(f"m{i}")) for i in range(30)]
    subs[3]["id"] = "user-3"  # extra fields survive into --gone-out
    for i in (3, 9):
        push_service.script(f"m{i}", (410, {}, b""))
    lines = [json.dumps(s) for s in subs] + ["", "{not json"]
    many = tmp_path / "subs.jsonl"
    many.write_text("\n".join(lines) + "\n")
    gone_out = tmp_path / "gone.jsonl"
    result = await run(
        *base(key_file),
        "--subscriptions",
        many,
        "--gone-out",
        gone_out,
        "--concurrency",
        "5",
        "news",
    )
    assert result.exit_code == 1, result.output  # the unparsable line is invalid
    out = result.output
    assert "accepted" in out and "28" in out and "messages/s" in out
    assert "sending" in out  # the progress bar (stderr is mixed in by CliRunner)
    gone = [json.loads(line) for line in gone_out.read_text().splitlines()]
    assert sorted(g["endpoint"] for g in gone) == sorted(
        [push_service.endpoint("m3"), push_service.endpoint("m9")]
    )
    assert any(g.get("id") == "user-3" for g in gone)


async def test_many_all_accepted_exits_zero(
    push_service: ScriptedService, key_file: Path, tmp_path: Path
) -> None:
    many = tmp_path / "subs.jsonl"
    many.write_text(
        "\n".join(
            json.dumps(Keys.generate().subscription(push_service.endpoint(f"z{i}")))
            for i in range(5)
        )
    )
    result = await run(*base(key_file), "--subscriptions", many, "-q", "hi")
    assert result.exit_code == 0, result.output
    assert len(push_service.requests) == 5


async def test_dry_run_prints_the_request_and_curl_replays_it(
    push_service: ScriptedService, key_file: Path, tmp_path: Path, vapid_key: VapidKey
) -> None:
    keys = Keys.generate()
    sub_file = tmp_path / "sub.json"
    sub_file.write_text(json.dumps(keys.subscription(push_service.endpoint("dry"))))
    body = tmp_path / "body.bin"
    result = await run(
        *base(key_file),
        "--subscription",
        sub_file,
        "--dry-run",
        "--body-out",
        body,
        "--ttl",
        "60",
        "replay me",
    )
    assert result.exit_code == 0, result.output
    assert push_service.requests == []  # nothing sent
    out = result.output
    assert "> POST /push/dry HTTP/1.1" in out
    assert f"> Host: 127.0.0.1:{push_service.port}" in out
    assert "> TTL: 60" in out and "> Content-Encoding: aes128gcm" in out
    assert f"> Content-Length: {body.stat().st_size}" in out
    command = next(line for line in out.splitlines() if line.startswith("* replay: "))[10:]
    argv = shlex.split(command)
    replay = await asyncio.create_subprocess_exec(*argv, stdout=subprocess.PIPE)
    stdout, _ = await replay.communicate()
    assert replay.returncode == 0
    assert stdout.startswith(b"HTTP/1.1 201")
    seen = push_service.seen("dry")[0]
    assert keys.decrypt(seen.body, seen.headers) == b"replay me"
    verify_vapid(seen.headers["Authorization"], audience=push_service.url)


async def test_dry_run_for_many_writes_numbered_bodies(
    push_service: ScriptedService, key_file: Path, tmp_path: Path
) -> None:
    many = tmp_path / "subs.jsonl"
    many.write_text(
        "\n".join(
            json.dumps(Keys.generate().subscription(push_service.endpoint(f"d{i}")))
            for i in range(3)
        )
    )
    result = await run(
        *base(key_file), "--subscriptions", many, "--dry-run", "--body-out", tmp_path / "b.bin", "x"
    )
    assert result.exit_code == 0
    assert result.output.count("> POST ") == 3
    assert sorted(p.name for p in tmp_path.glob("b-*.bin")) == ["b-1.bin", "b-2.bin", "b-3.bin"]


async def test_usage_errors_exit_2(key_file: Path, tmp_path: Path) -> None:
    sub_file = tmp_path / "sub.json"
    sub_file.write_text(json.dumps(Keys.generate().subscription("https://push.example/x")))
    cases = [
        [*base(key_file), "x"],  # no subscription
        [*base(key_file), "--subscription", sub_file, "--subscriptions", sub_file, "x"],
        [
            *base(key_file),
            "--subscription",
            sub_file,
            "--json",
            "{bad",
        ],
        [*base(key_file), "--subscription", sub_file, "--topic", "no spaces allowed", "x"],
        [*base(key_file), "--subscription", sub_file, "x" * 4000],
        [
            "--key",
            tmp_path / "nope.pem",
            "--subject",
            "mailto:a@b.c",
            "--subscription",
            sub_file,
            "x",
        ],
        ["--key", key_file, "--subject", "ops@example.com", "--subscription", sub_file, "x"],
        [*base(key_file), "--subscription", sub_file, "--body-out", tmp_path / "b", "x"],
    ]
    for args in cases:
        result = await run(*args)
        assert result.exit_code == 2, (args, result.output)
    oversize = await run(*base(key_file), "--subscription", sub_file, "x" * 4000)
    assert "3993" in oversize.output


def test_exit_code_precedence() -> None:
    assert exit_code({ResultKind.ACCEPTED: 5}) == 0
    assert exit_code({ResultKind.GONE: 1, ResultKind.ACCEPTED: 5}) == 3
    assert exit_code({ResultKind.GONE: 1, ResultKind.RETRY_LATER: 1}) == 4
    assert exit_code({ResultKind.RETRY_LATER: 1, ResultKind.FAILED: 1}) == 1
    assert exit_code({ResultKind.INVALID: 1}) == 1
