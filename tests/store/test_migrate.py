"""`tidings migrate`: from the SQLite default to PostgreSQL, with real PostgreSQL.

A user agent subscribed on SQLite gets, after the copy and a restart on PostgreSQL,
the message stored before it and one sent after, through the endpoint it was given.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest
from click.testing import CliRunner, Result

from store.engines import postgres_database
from support.service import running_service
from tidings.cli import main
from tidings.service.store.migrate import migrate_sqlite_to_postgres

pytestmark = pytest.mark.postgres


async def _migrate(source: str, target: str) -> Result:
    """The command as a user runs it (in a thread: it runs its own event loop)."""
    arguments = ["migrate", "--from", source, "--to", target]
    return await asyncio.to_thread(CliRunner().invoke, main, arguments)


def _row(output: str, table: str) -> list[str]:
    """The summary table's row for `table`: read, added, already there."""
    for line in output.splitlines():
        cells = [cell.strip() for cell in line.strip("│┃ ").split("│")]
        if cells and cells[0] == table:
            return cells[1:]
    raise AssertionError(f"no row for {table} in:\n{output}")


async def test_a_user_agent_moves_to_postgresql_with_its_endpoint_and_backlog(
    tmp_path: Path,
) -> None:
    async with running_service(tmp_path / "sqlite") as service:
        agent = await service.agent()
        registration = await agent.register()
        uaid = agent.uaid
        await agent.close()
        async with httpx.AsyncClient() as client:
            stored = await client.post(registration.endpoint, headers={"TTL": "3600"})
            assert stored.status_code == 201
            receipt = await client.post(
                registration.endpoint, headers={"TTL": "3600", "Prefer": "respond-async"}
            )
            assert receipt.status_code == 202
        sqlite_file = Path(service.config.db)
        key_file = service.config.secrets_path

    async with postgres_database() as store_url:
        first = await _migrate(f"sqlite:{sqlite_file}", store_url)
        assert first.exit_code == 0, first.output
        assert _row(first.output, "user_agents") == ["1", "1", "0"]
        assert _row(first.output, "subscriptions") == ["1", "1", "0"]
        assert _row(first.output, "messages") == ["2", "2", "0"]
        assert _row(first.output, "receipt_subscriptions") == ["1", "1", "0"]

        # Again: idempotent, nothing added twice.
        again = await _migrate(f"sqlite:///{sqlite_file}", store_url)
        assert again.exit_code == 0, again.output
        assert _row(again.output, "messages") == ["2", "0", "2"]
        assert _row(again.output, "subscriptions") == ["1", "0", "1"]

        # An interrupted copy resumes: what is missing is copied, the rest kept.
        conn = await asyncpg.connect(store_url)
        try:
            deleted = await conn.execute("DELETE FROM messages WHERE receipt_id IS NOT NULL")
            assert deleted == "DELETE 1"
        finally:
            await conn.close()
        resumed = await _migrate(str(sqlite_file), store_url)
        assert _row(resumed.output, "messages") == ["2", "1", "1"]

        # A node on PostgreSQL with the same key file: the old endpoint works.
        async with running_service(
            tmp_path / "pg", store=store_url, secrets=str(key_file)
        ) as service:
            agent = await service.agent(uaid)
            agent.registrations[registration.channel_id] = registration
            backlog = [await agent.next_notification(), await agent.next_notification()]
            assert {n.channel_id for n in backlog} == {registration.channel_id}
            endpoint = service.url + urlsplit(registration.endpoint).path
            async with httpx.AsyncClient() as client:
                after = await client.post(endpoint, headers={"TTL": "60"})
                assert after.status_code == 201
            assert (await agent.next_notification()).channel_id == registration.channel_id
            await agent.close()


async def test_expired_messages_stay_behind_and_bad_sources_are_named(tmp_path: Path) -> None:
    async with running_service(tmp_path / "sqlite") as service:
        agent = await service.agent()
        registration = await agent.register()
        await agent.close()
        async with httpx.AsyncClient() as client:
            for ttl in ("60", "3600"):
                answer = await client.post(registration.endpoint, headers={"TTL": ttl})
                assert answer.status_code == 201
        sqlite_file = Path(service.config.db)

    async with postgres_database() as store_url:
        # Two minutes on: the TTL-60 message has expired and must never be delivered.
        outcome = await migrate_sqlite_to_postgres(sqlite_file, store_url, now=time.time() + 120)
        copied = {copy.table: copy for copy in outcome}
        assert (copied["messages"].read, copied["messages"].added) == (1, 1)
        conn = await asyncpg.connect(store_url)
        try:
            assert await conn.fetchval("SELECT ttl FROM messages") == 3600
        finally:
            await conn.close()

    missing = await _migrate(f"sqlite:{tmp_path / 'none.db'}", "postgresql://u@127.0.0.1/db")
    assert missing.exit_code != 0 and "no SQLite database" in missing.output
    wrong = await _migrate(str(sqlite_file), "mysql://u@h/db")
    assert wrong.exit_code != 0 and "postgresql://" in wrong.output
