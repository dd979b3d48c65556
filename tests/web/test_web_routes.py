"""The web resources over real HTTP: headers, the token rule, demo mode, the demo sender."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import httpx
import pytest

from support.service import RunningService, running_service
from tidings.service.http.messages import Request
from tidings.service.web import CONTENT_SECURITY_POLICY
from tidings.service.web.access import (
    check_access,
    client_host,
    is_loopback_client,
    is_loopback_host,
)
from tidings.service.web.demo import DEMO_KEY_NAME, demo_key_path
from tidings.webpush import VapidKey

PAGES = ("/dashboard", "/playground/")


def request(client: str = "127.0.0.1:5000", query: str = "", **headers: str) -> Request:
    return Request("GET", "/api/stats", query, dict(headers), b"", client)


# The access rule, without sockets ---------------------------------------------------------


@pytest.mark.parametrize(
    ("client", "host"),
    [("127.0.0.1:80", "127.0.0.1"), ("::1:5000", "::1"), ("[::1]:5000", "::1"), ("-", "-")],
)
def test_client_host(client: str, host: str) -> None:
    assert client_host(client) == host


def test_loopback_clients_and_hosts() -> None:
    assert is_loopback_client(request("127.0.0.1:1"))
    assert is_loopback_client(request("::1:1"))
    assert not is_loopback_client(request("192.0.2.7:1"))
    assert not is_loopback_client(request("-"))
    # A reverse proxy on this machine makes everyone look local: its headers give it away.
    assert not is_loopback_client(request("127.0.0.1:1", **{"x-forwarded-for": "192.0.2.7"}))
    assert not is_loopback_client(request("127.0.0.1:1", forwarded="for=192.0.2.7"))
    assert is_loopback_host("127.0.0.1") and is_loopback_host("::1")
    assert is_loopback_host("localhost")
    assert not is_loopback_host("0.0.0.0") and not is_loopback_host("::")


def test_without_token_only_local_clients() -> None:
    check_access(request("127.0.0.1:1"), None)
    with pytest.raises(Exception) as refused:
        check_access(request("192.0.2.7:1"), None)
    assert refused.value.status == 403  # type: ignore[attr-defined]
    assert "--dashboard-token" in str(refused.value)


def test_with_token_everyone_needs_it() -> None:
    token = "tok-123"
    check_access(request("192.0.2.7:1", authorization="Bearer tok-123"), token)
    check_access(request("192.0.2.7:1", query="token=tok-123"), token)
    for missing in (request("127.0.0.1:1"), request("127.0.0.1:1", authorization="Basic x")):
        with pytest.raises(Exception) as refused:
            check_access(missing, token)
        assert refused.value.status == 401  # type: ignore[attr-defined]
        assert refused.value.headers["www-authenticate"].startswith("Bearer")  # type: ignore[attr-defined]
    with pytest.raises(Exception) as wrong:
        check_access(request("127.0.0.1:1", authorization="Bearer nope"), token)
    assert wrong.value.status == 403  # type: ignore[attr-defined]


# Pages and headers --------------------------------------------------------------------------


async def test_pages_carry_a_strict_policy(tmp_path: Path) -> None:
    async with (
        running_service(tmp_path, demo=True) as service,
        httpx.AsyncClient(base_url=service.url) as client,
    ):
        for path in PAGES:
            response = await client.get(path)
            assert response.status_code == 200, path
            assert response.headers["content-type"] == "text/html; charset=utf-8"
            assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
            assert response.headers["x-content-type-options"] == "nosniff"
            assert response.headers["referrer-policy"] == "no-referrer"
            # No inline script or style: everything comes from /static/.
            assert "<script>" not in response.text and "<style" not in response.text
            assert " on" + "click=" not in response.text
        assert "'unsafe-inline'" not in CONTENT_SECURITY_POLICY
        assert "script-src 'self'" in CONTENT_SECURITY_POLICY
        for name, kind in (
            ("dashboard.js", "text/javascript"),
            ("playground.js", "text/javascript"),
            ("tidings.css", "text/css"),
            ("favicon.svg", "image/svg+xml"),
        ):
            response = await client.get("/static/" + name)
            assert response.status_code == 200
            assert response.headers["content-type"].startswith(kind)
            assert response.headers["x-content-type-options"] == "nosniff"
        worker = await client.get("/playground/sw.js")
        assert worker.headers["content-type"].startswith("text/javascript")
        redirect = await client.get("/playground?subscribe=1")
        assert redirect.status_code == 308
        assert redirect.headers["location"] == "/playground/?subscribe=1"
        for path in ("/static/../core.py", "/static/nothing.js", "/static/__init__.py"):
            assert (await client.get(path)).status_code == 404
        wrong_method = await client.post("/dashboard")
        assert wrong_method.status_code == 405
        assert wrong_method.json()["errno"] == 405


async def test_demo_off_means_404(service: RunningService) -> None:
    async with httpx.AsyncClient(base_url=service.url) as client:
        for method, path in (
            ("GET", "/playground/"),
            ("GET", "/playground"),
            ("GET", "/playground/sw.js"),
            ("GET", "/api/demo/key"),
            ("GET", "/api/demo/recent"),
            ("POST", "/demo/send"),
        ):
            response = await client.request(method, path, json={})
            assert response.status_code == 404, path
            assert response.json()["errno"] == 404
        # The figures are there without demo mode.
        assert (await client.get("/dashboard")).status_code == 200
        assert (await client.get("/api/stats")).status_code == 200


async def test_token_guards_dashboard_stats_and_metrics(tmp_path: Path) -> None:
    async with (
        running_service(tmp_path, dashboard_token="t0ken") as service,
        httpx.AsyncClient(base_url=service.url) as client,
    ):
        for path in ("/dashboard", "/api/stats", "/metrics"):
            missing = await client.get(path)
            assert missing.status_code == 401, path
            assert missing.json()["errno"] == 130
            assert missing.headers["www-authenticate"].startswith("Bearer")
            assert (await client.get(path, params={"token": "wrong"})).status_code == 403
            assert (await client.get(path, params={"token": "t0ken"})).status_code == 200
            bearer = await client.get(path, headers={"authorization": "Bearer t0ken"})
            assert bearer.status_code == 200
        # Static assets hold no figures and need no token; the push API never does.
        assert (await client.get("/static/dashboard.js")).status_code == 200
        assert (await client.get("/health")).status_code == 200


async def test_proxied_requests_need_a_token(service: RunningService) -> None:
    async with httpx.AsyncClient(base_url=service.url) as client:
        assert (await client.get("/metrics")).status_code == 200
        proxied = await client.get("/metrics", headers={"x-forwarded-for": "192.0.2.7"})
        assert proxied.status_code == 403
        assert "--dashboard-token" in proxied.json()["message"]


# Figures ------------------------------------------------------------------------------------


async def test_metrics_and_stats_count_pushes(service: RunningService) -> None:
    agent = await service.agent()
    registration = await agent.register()
    async with httpx.AsyncClient(base_url=service.url) as client:
        for _ in range(2):
            assert (
                await client.post(registration.endpoint, headers={"ttl": "60"})
            ).status_code == 201
            await agent.next_notification()
        assert (await client.post("/push/nonsense", headers={"ttl": "60"})).status_code == 404
        metrics = await client.get("/metrics")
        assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
        text = metrics.text
        assert 'tidings_pushes_total{status="201"} 2.0' in text
        assert 'tidings_pushes_total{status="404"} 1.0' in text
        assert "tidings_deliveries_total 2.0" in text
        assert "tidings_connected_user_agents 1.0" in text
        assert "tidings_delivery_latency_seconds_count 2.0" in text
        assert 'tidings_store_latency_seconds_count{operation="store_message"} 2.0' in text
        assert "tidings_stored_messages" in text
        # Acks arrive asynchronously; /api/stats shows them once handled.
        for _ in range(50):
            stats = (await client.get("/api/stats", params={"seconds": "5"})).json()
            if stats["totals"]["acks"]:
                break
        totals = stats["totals"]
        assert totals["pushes"] == {"201": 2, "404": 1}
        assert totals["pushes_accepted"] == 2
        assert totals["deliveries"] == 2
        assert totals["acks"] == {"100": 2}
        assert totals["connections"] == 1
        assert stats["latency"]["last_minute"]["count"] == 2
        assert stats["latency"]["last_minute"]["p50"] > 0
        assert len(stats["history"]["t"]) <= 5
        assert set(stats["history"]) >= {"pushes_2xx", "pushes_4xx", "deliveries", "p99"}
        assert (await client.get("/api/stats", params={"seconds": "x"})).status_code == 400
    await agent.close()


# The demo sender ----------------------------------------------------------------------------


async def test_demo_key_created_once_private(tmp_path: Path) -> None:
    async with (
        running_service(tmp_path, demo=True) as service,
        httpx.AsyncClient(base_url=service.url) as client,
    ):
        first = (await client.get("/api/demo/key")).json()
        path = demo_key_path(service.config)
        assert path.name == DEMO_KEY_NAME and path.parent == service.config.secrets_path.parent
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert VapidKey.from_file(path).public_key_b64 == first["publicKey"]
        assert first["keyFile"] == path.name  # the name only: no server path is revealed
        assert first["subject"].startswith("mailto:")
    async with (
        running_service(tmp_path, demo=True) as again,
        httpx.AsyncClient(base_url=again.url) as client,
    ):
        assert (await client.get("/api/demo/key")).json()["publicKey"] == first["publicKey"]


async def demo_send(client: httpx.AsyncClient, document: dict[str, Any]) -> httpx.Response:
    return await demo_send_raw(client, json.dumps(document).encode())


async def demo_send_raw(client: httpx.AsyncClient, body: bytes) -> httpx.Response:
    return await client.post(
        "/demo/send", content=body, headers={"content-type": "application/json"}
    )


async def test_demo_send_reaches_a_user_agent(tmp_path: Path) -> None:
    async with (
        running_service(tmp_path, demo=True) as service,
        httpx.AsyncClient(base_url=service.url) as client,
    ):
        key = (await client.get("/api/demo/key")).json()["publicKey"]
        agent = await service.agent()
        registration = await agent.register(key)
        subscription = registration.subscription_info()
        response = await demo_send(
            client,
            {
                "subscription": subscription,
                "payload": "héllo",
                "ttl": 30,
                "urgency": "high",
                "topic": "news",
            },
        )
        assert response.status_code == 200, response.text
        result = response.json()
        assert result["response"]["status"] == 201
        assert result["response"]["headers"]["ttl"] == "30"
        assert result["response"]["headers"]["location"].startswith(service.url)
        sent = result["request"]["headers"]
        assert sent["Authorization"].startswith("vapid t=") and sent["Urgency"] == "high"
        assert sent["Topic"] == "news" and sent["Content-Encoding"] == "aes128gcm"
        notification = await agent.next_notification()
        assert notification.plaintext == "héllo".encode()

        # dry_run builds the request (and a curl line) without pushing.
        dry = (
            await demo_send(client, {"subscription": subscription, "dry_run": True, "payload": "x"})
        ).json()
        assert "response" not in dry
        assert dry["request"]["curl"].startswith("curl -i -X POST")
        assert "--data-binary @body.bin" in dry["request"]["curl"]
        await agent.no_frame(0.3)
        no_payload = (
            await demo_send(client, {"subscription": subscription, "ttl": 0, "dry_run": True})
        ).json()
        assert "Content-Length: 0" in no_payload["request"]["curl"]

        recent = (await client.get("/api/demo/recent")).json()["sends"]
        assert [s["status"] for s in recent] == [201]
        stats = (await client.get("/api/stats")).json()
        assert stats["totals"]["pushes"] == {"201": 1}
        await agent.close()


async def test_demo_send_refuses_what_it_should(tmp_path: Path) -> None:
    async with (
        running_service(tmp_path, demo=True) as service,
        httpx.AsyncClient(base_url=service.url) as client,
    ):
        agent = await service.agent()
        other_key = VapidKey.generate().public_key_b64
        restricted = (await agent.register(other_key)).subscription_info()
        good_keys = restricted["keys"]
        cases = [
            (
                {"subscription": {**restricted, "endpoint": "https://push.example.com/push/x"}},
                "only to subscriptions of this service",
            ),
            (
                {"subscription": {**restricted, "endpoint": service.url + "/push/"}},
                "only to subscriptions of this service",
            ),
            ({"subscription": "nope"}, "toJSON"),
            ({"subscription": {**restricted, "keys": {"p256dh": "AAAA", "auth": "x"}}}, "p256dh"),
            ({"subscription": restricted, "ttl": -1}, "ttl"),
            ({"subscription": restricted, "ttl": True}, "ttl"),
            ({"subscription": restricted, "urgency": "urgent"}, "urgency"),
            ({"subscription": restricted, "payload": "x" * 4000}, "over"),
            ([], "JSON object"),
        ]
        for document, words in cases:
            response = await demo_send(client, document)  # type: ignore[arg-type]
            assert response.status_code == 400, (document, response.text)
            assert words in response.json()["message"], (words, response.json())
        assert (await demo_send_raw(client, b"{")).status_code == 400
        assert (await client.get("/demo/send")).status_code == 405
        # Subscribed with another application server's key: the demo key is refused
        # by the service's own VAPID check, and the page shows that answer.
        refused = (await demo_send(client, {"subscription": restricted})).json()
        assert refused["response"]["status"] == 403
        assert refused["response"]["body"]["errno"] in (107, 108)
        # A bad topic is the service's to refuse, as for any application server.
        unrestricted = (await agent.register()).subscription_info()
        bad_topic = (await demo_send(client, {"subscription": unrestricted, "topic": "a b"})).json()
        assert bad_topic["response"]["status"] == 400
        assert good_keys
        await agent.close()
