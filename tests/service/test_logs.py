"""Structured logs: a request id follows a message from its POST to its delivery."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx

from support.service import RunningService, ServiceProcess, TestAgent
from tidings.service.logs import request_id


def test_request_ids_are_taken_when_sane_and_made_otherwise() -> None:
    assert request_id("abc-123.x:y_z") == "abc-123.x:y_z"
    for hostile in (None, "", "a b", "x" * 65, "new\nline", "ü"):
        made = request_id(hostile)
        assert len(made) == 16 and made != hostile


async def test_every_answer_carries_its_request_id(service: RunningService) -> None:
    async with httpx.AsyncClient() as client:
        mine = await client.get(service.url + "/health", headers={"x-request-id": "trace-1"})
        assert mine.headers["x-request-id"] == "trace-1"
        made = await client.get(service.url + "/nowhere")
        assert len(made.headers["x-request-id"]) == 16


async def test_json_logs_follow_a_message_from_post_to_delivery(tmp_path: Path) -> None:
    node = ServiceProcess(tmp_path / "node", args=["--log-format", "json", "--log-level", "debug"])
    node.start()
    try:
        agent = TestAgent(node.ws_url)
        await agent.connect()
        registration = await agent.register()
        async with httpx.AsyncClient() as client:
            answer = await client.post(
                registration.endpoint, headers={"ttl": "60", "x-request-id": "call-42"}
            )
        assert answer.status_code == 201
        delivered = await agent.next_notification()  # acknowledged
        message_id = delivered.version
        time.sleep(0.3)
        records = []
        for line in node.log_path.read_text().splitlines():
            if line.startswith("{"):
                records.append(json.loads(line))
        accepted = [r for r in records if r.get("request_id") == "call-42"]
        assert any(r["logger"] == "tidings.access" and r.get("message_id") == message_id
                   for r in accepted), accepted  # fmt: skip
        assert any(r["logger"] == "tidings.websocket" and r.get("message_id") == message_id
                   for r in accepted), accepted  # fmt: skip
        acked = [r for r in records if r.get("message_id") == message_id]
        assert any("acknowledged" in r["message"] for r in acked)
        # Capability tokens never appear whole in the logs.
        token = registration.endpoint.rsplit("/", 1)[1]
        assert token not in node.log_path.read_text()
        await agent.close()
    finally:
        node.stop()
