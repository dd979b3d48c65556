"""The web pages' own resources against other sites: the demo sender, the figures.

A hostile page in a visitor's browser may post forms and `text/plain` bodies to any
origin without a preflight, and by DNS rebinding may even read answers from a service
listening on the visitor's machine. These check what such a page gets.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from support.service import running_service
from tidings.service.web.access import allowed_host_names, host_name
from tidings.service.web.demo import HIDDEN_TOKEN

JWT = re.compile(r"eyJ[\w-]+\.[\w-]+\.[\w-]+")


async def _subscription(running: Any, client: httpx.AsyncClient) -> dict[str, Any]:
    key = (await client.get("/api/demo/key")).json()["publicKey"]
    agent = await running.agent()
    registration = await agent.register(key)
    return registration.subscription_info()


async def test_demo_send_needs_json_from_the_service_own_pages(tmp_path: Path) -> None:
    async with (
        running_service(tmp_path, demo=True) as running,
        httpx.AsyncClient(base_url=running.url, timeout=10) as client,
    ):
        document = {"subscription": await _subscription(running, client), "payload": "hi"}
        body = json.dumps(document).encode()
        host = running.url.partition("://")[2]

        async def post(**headers: str) -> httpx.Response:
            return await client.post("/demo/send", content=body, headers=headers)

        # What a cross-site form or no-cors fetch can send: refused, JSON error body.
        for content_type in ("text/plain", "application/x-www-form-urlencoded", ""):
            refused = await post(**{"content-type": content_type})
            assert refused.status_code == 415, refused.text
            assert refused.json()["code"] == 415 and refused.json()["errno"] == 400
        # JSON, but a browser says another site sent it.
        for headers in (
            {"origin": "https://evil.example"},
            {"origin": "null"},
            {"sec-fetch-site": "cross-site"},
            {"sec-fetch-site": "same-site", "origin": running.url},
        ):
            refused = await post(**{"content-type": "application/json", **headers})
            assert refused.status_code == 403, (headers, refused.text)
            assert refused.json()["errno"] == 130
        # The playground itself (a same-origin fetch) and non-browser clients get through.
        for headers in (
            {"origin": running.url, "sec-fetch-site": "same-origin"},
            {"origin": f"http://{host}"},
            {},
        ):
            answer = await post(**{"content-type": "application/json; charset=utf-8", **headers})
            assert answer.status_code == 200, (headers, answer.text)
            assert answer.json()["response"]["status"] == 201
            # Nothing secret comes back: the signed VAPID token is not shown.
            assert not JWT.search(answer.text), answer.text
            shown = answer.json()["request"]["headers"]["Authorization"]
            assert HIDDEN_TOKEN in shown


async def test_demo_key_reveals_no_path(tmp_path: Path) -> None:
    async with (
        running_service(tmp_path, demo=True) as running,
        httpx.AsyncClient(base_url=running.url, timeout=10) as client,
    ):
        answer = await client.get("/api/demo/key")
    assert answer.status_code == 200
    assert "/" not in answer.json()["keyFile"]
    assert str(tmp_path) not in answer.text and str(tmp_path.resolve()) not in answer.text


# DNS rebinding: the Host check -------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "name"),
    [
        ("push.example.com", "push.example.com"),
        ("Push.Example.COM.:8443", "push.example.com"),
        ("[::1]:8080", "::1"),
        ("127.0.0.1:80", "127.0.0.1"),
        ("::1", "::1"),
    ],
)
def test_host_name(value: str, name: str) -> None:
    assert host_name(value) == name


def test_allowed_host_names() -> None:
    assert allowed_host_names("", "http://127.0.0.1:8080") == {"127.0.0.1", "localhost"}
    assert allowed_host_names("", "https://push.example.com") == {"push.example.com", "localhost"}
    assert allowed_host_names("a.example, B.example.:443", "https://x") == {
        "a.example",
        "b.example",
    }
    assert allowed_host_names("*", "https://x") is None


FIGURES = (
    "/api/stats",
    "/metrics",
    "/dashboard",
    "/api/demo/key",
    "/api/demo/recent",
    "/playground/",
)


@pytest.mark.parametrize("http2", [False, True], ids=["http1", "http2"])
async def test_figures_answer_only_their_own_names(tmp_path: Path, http2: bool) -> None:
    async with (
        running_service(tmp_path, demo=True) as running,
        httpx.AsyncClient(base_url=running.url, timeout=10, http1=not http2, http2=http2) as client,
    ):
        port = running.config.port
        for path in FIGURES:
            # A rebinding page: the attacker's name, pointed at this service.
            refused = await client.get(path, headers={"host": f"rebind.example:{port}"})
            assert refused.status_code == 421, (path, refused.text)
            assert refused.json()["code"] == 421 and refused.json()["errno"] == 130
            assert refused.http_version == ("HTTP/2" if http2 else "HTTP/1.1")
            for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "LOCALHOST."):
                answer = await client.get(path, headers={"host": host})
                assert answer.status_code == 200, (path, host, answer.text)
        refused = await client.post(
            "/demo/send",
            content=b"{}",
            headers={"host": f"rebind.example:{port}", "content-type": "application/json"},
        )
        assert refused.status_code == 421
        # The push API and /health stay host-agnostic (capability URLs, load balancers).
        health = await client.get("/health", headers={"host": "internal-name"})
        assert health.status_code == 200
        push = await client.post("/push/nothing", headers={"host": "internal-name", "ttl": "0"})
        assert push.status_code == 404 and push.json()["errno"] == 102


async def test_allowed_hosts_setting(tmp_path: Path) -> None:
    async with (
        running_service(tmp_path, allowed_hosts="push.example.com, admin.example") as running,
        httpx.AsyncClient(base_url=running.url, timeout=10) as client,
    ):
        for host, status in (
            ("push.example.com", 200),
            ("admin.example:443", 200),
            ("localhost", 421),  # the setting replaces the default names
            ("127.0.0.1", 200),  # an IP literal cannot come from DNS rebinding
            ("other.example", 421),
        ):
            answer = await client.get("/api/stats", headers={"host": host})
            assert answer.status_code == status, (host, answer.text)


def test_allowed_hosts_flag_is_repeatable(monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from tidings.cli import serve as serve_cli

    seen = []
    monkeypatch.setattr(serve_cli, "_announce", lambda config: seen.append(config))
    monkeypatch.setattr("tidings.service.run.serve", lambda config: None)
    flags = ["--allowed-host", "push.example.com", "--allowed-host", "admin.example"]
    result = CliRunner().invoke(serve_cli.serve, flags)
    assert result.exit_code == 0, result.output
    names = allowed_host_names(seen[0].allowed_hosts, seen[0].origin)
    assert names == frozenset({"push.example.com", "admin.example"})
