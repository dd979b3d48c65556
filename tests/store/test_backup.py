"""`tidings backup` / `tidings restore`: an online, consistent copy of the SQLite store
with its key file, and a restore that brings the same endpoints back."""

from __future__ import annotations

import asyncio
import json
import stat
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from click.testing import CliRunner, Result

from support.service import running_service
from tidings.cli import main
from tidings.service.keyfile import write_keys
from tidings.service.tokens import TokenSealer


def _run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def _push(client: httpx.AsyncClient, endpoint: str) -> int:
    """A push without a body (a tickle): enough to be stored and delivered."""
    return (await client.post(endpoint, headers={"TTL": "3600"})).status_code


async def test_a_backup_taken_while_the_service_writes_restores_the_same_endpoints(
    tmp_path: Path,
) -> None:
    live = tmp_path / "live"
    async with running_service(live) as service:
        agent = await service.agent()
        kept = await agent.register()
        uaid = agent.uaid
        await agent.close()
        other_agent = await service.agent()
        writer = await other_agent.register()
        await other_agent.close()
        async with httpx.AsyncClient() as client:
            assert await _push(client, kept.endpoint) == 201

            # The backup runs while another subscription keeps receiving pushes.
            async def keep_pushing() -> int:
                sent = 0
                while not backup_done.is_set() and sent < 2000:
                    assert await _push(client, writer.endpoint) in (201, 429)
                    sent += 1
                return sent

            backup_done = asyncio.Event()
            pusher = asyncio.create_task(keep_pushing())
            result = await asyncio.to_thread(
                _run, "backup", "--db", service.config.db, "--out", str(tmp_path / "backup")
            )
            backup_done.set()
            assert await pusher > 0
    assert result.exit_code == 0, result.output
    assert "3 subscriptions" not in result.output and "2 subscriptions" in result.output

    backup = tmp_path / "backup"
    assert _mode(backup) == 0o700
    assert _mode(backup / "tidings.db") == 0o600
    assert _mode(backup / "tidings-secrets.json") == 0o600
    manifest = json.loads((backup / "manifest.json").read_text())
    assert manifest["subscriptions"] == 2 and manifest["messages"] >= 1

    restored_db = tmp_path / "restored" / "tidings.db"
    result = _run("restore", "--from", str(backup), "--db", str(restored_db))
    assert result.exit_code == 0, result.output
    assert _mode(restored_db.with_name("tidings-secrets.json")) == 0o600

    # A service on the restored files: the old endpoint still opens, and the message
    # stored before the backup reaches the user agent when it comes back.
    async with running_service(tmp_path / "restored") as service:
        agent = await service.agent(uaid)
        agent.registrations[kept.channel_id] = kept
        stored = await agent.next_notification()
        assert stored.channel_id == kept.channel_id
        # The same token on the new service's port.
        endpoint = service.url + urlsplit(kept.endpoint).path
        async with httpx.AsyncClient() as client:
            assert await _push(client, endpoint) == 201
        assert (await agent.next_notification()).channel_id == kept.channel_id
        await agent.close()


async def test_restore_refuses_what_would_break_the_service(tmp_path: Path) -> None:
    async with running_service(tmp_path / "live") as service:
        agent = await service.agent()
        await agent.register()
        await agent.close()
        db = service.config.db
    backup = tmp_path / "backup"
    assert _run("backup", "--db", db, "--out", str(backup)).exit_code == 0

    # Into a directory that holds something: refused.
    again = _run("backup", "--db", db, "--out", str(backup))
    assert again.exit_code != 0 and "not empty" in again.output

    # Over an existing database without --force: refused, nothing touched.
    before = Path(db).read_bytes()
    refused = _run("restore", "--from", str(backup), "--db", db)
    assert refused.exit_code != 0 and "--force" in refused.output
    assert Path(db).read_bytes() == before

    # A key file of another service: refused before anything is replaced.
    write_keys(backup / "tidings-secrets.json", {1: TokenSealer.new_key()}, 1)
    foreign = _run("restore", "--from", str(backup), "--db", str(tmp_path / "new" / "t.db"))
    assert foreign.exit_code != 0 and "another service" in foreign.output
    assert not (tmp_path / "new" / "t.db").exists()

    # A database changed since the backup: refused.
    backup2 = tmp_path / "backup2"
    assert _run("backup", "--db", db, "--out", str(backup2)).exit_code == 0
    with (backup2 / "tidings.db").open("ab") as file:
        file.write(b"\0")
    changed = _run("restore", "--from", str(backup2), "--db", str(tmp_path / "new" / "t.db"))
    assert changed.exit_code != 0 and "changed since" in changed.output


def test_backup_names_what_is_missing_and_leaves_postgresql_to_its_tools(tmp_path: Path) -> None:
    missing = _run("backup", "--db", str(tmp_path / "none.db"), "--out", str(tmp_path / "b"))
    assert missing.exit_code != 0 and "no database" in missing.output
    postgres = _run("backup", "--db", "postgresql://u@h/db", "--out", str(tmp_path / "b"))
    assert postgres.exit_code != 0 and "pg_dump" in postgres.output
