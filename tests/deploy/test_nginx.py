"""The shipped nginx site (deploy/nginx/tidings.conf) in front of a real service.

Real nginx terminates TLS with a certificate from a private CA made here; a fresh
Firefox profile trusts that CA (no insecure preferences), subscribes over `wss://`
through nginx, and its service worker decrypts a push that pywebpush sent through
`https://`. The per-address rate limit must see each client's address, which only
nginx knows, through the service's --trusted-proxy setting.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
import websockets
from pywebpush import WebPushException, webpush

from support.ci import free_port
from support.firefox import FirefoxFactory
from support.nginx import NginxProxy, nginx_binary, render_site
from support.private_ca import ServerCertificate, make_server_certificate
from support.service import RunningService, pywebpush_key, running_service
from tidings.webpush import VapidKey

pytestmark = pytest.mark.timeout(240)

NAME = "localhost"


@dataclass
class Deployment:
    """The service behind nginx: the public origin and the CA that clients trust."""

    service: RunningService
    nginx: NginxProxy
    certificate: ServerCertificate
    https_port: int
    http_port: int

    @property
    def origin(self) -> str:
        return f"https://{NAME}:{self.https_port}"

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.certificate.ca))


@contextlib.asynccontextmanager
async def deployment(tmp_path: Path, **settings: Any) -> AsyncIterator[Deployment]:
    nginx_binary()  # skip (fail in CI) before anything starts when nginx is missing
    certificate = make_server_certificate(tmp_path / "tls", [NAME, "127.0.0.1"])
    https_port, http_port = free_port(), free_port()
    settings = {
        "public_url": f"https://{NAME}:{https_port}",
        "trusted_proxies": "127.0.0.1/32",
        **settings,
    }
    async with running_service(tmp_path, **settings) as service:
        site = render_site(
            upstream_port=service.config.port,
            https_port=https_port,
            http_port=http_port,
            server_name=NAME,
            certificate=certificate.chain,
            key=certificate.key,
        )
        nginx = NginxProxy(tmp_path / "nginx", site)
        await asyncio.to_thread(nginx.start, https_port)
        try:
            yield Deployment(service, nginx, certificate, https_port, http_port)
        finally:
            await asyncio.to_thread(nginx.stop)


@contextlib.contextmanager
def ca_trusting_profile(profile: Path, ca: Path) -> Iterator[Path]:
    """A new Firefox profile whose NSS store trusts `ca` for TLS servers (certutil)."""
    profile.mkdir(parents=True, exist_ok=True)
    database = f"sql:{profile}"
    subprocess.run(["certutil", "-N", "-d", database, "--empty-password"], check=True)
    subprocess.run(
        ["certutil", "-A", "-n", "tidings-test-ca", "-t", "C,,", "-i", str(ca), "-d", database],
        check=True,
    )
    yield profile


def send_through_nginx(
    deployment: Deployment, subscription: dict[str, Any], key: VapidKey, text: str
) -> int:
    """pywebpush over https, trusting only the private CA; the status it got."""
    session = requests.Session()
    session.trust_env = False  # REQUESTS_CA_BUNDLE would otherwise replace `verify`
    session.verify = str(deployment.certificate.ca)
    try:
        response = webpush(
            subscription,
            data=text,
            vapid_private_key=pywebpush_key(key),
            vapid_claims={"sub": "mailto:ops@example.com"},
            ttl=60,
            requests_session=session,
        )
    except WebPushException as exc:
        assert exc.response is not None
        return int(exc.response.status_code)
    finally:
        session.close()
    assert not isinstance(response, str)
    return int(response.status_code)


@pytest.mark.firefox
async def test_firefox_subscribes_over_wss_through_nginx_and_receives_a_push(
    tmp_path: Path, firefox_client: FirefoxFactory
) -> None:
    key = VapidKey.generate()
    async with deployment(tmp_path) as site:
        assert site.service.service is not None
        profile = tmp_path / "firefox-profile"
        with ca_trusting_profile(profile, site.certificate.ca):
            firefox = firefox_client(
                f"wss://{NAME}:{site.https_port}/",
                profile_dir=profile,
                # Nothing insecure: wss:// with a certificate the profile trusts.
                prefs={"dom.push.testing.allowInsecureServerURL": False},
            )
            await firefox.start()
            deadline = time.monotonic() + 60
            while len(site.service.service.hub) < 1:
                assert time.monotonic() < deadline, (
                    "Firefox did not connect through nginx:\n"
                    + firefox.log_tail()
                    + site.nginx.error_log()
                )
                await asyncio.sleep(0.1)
            subscription = await firefox.subscribe(key.public_key_b64, timeout=60)
            assert subscription["endpoint"].startswith(site.origin + "/push/")
            text = "Incoming call, through nginx"
            assert await asyncio.to_thread(send_through_nginx, site, subscription, key, text) == 201
            assert await firefox.next_push(timeout=60) == text


async def _connect_from(site: Deployment, source: str) -> int:
    """Open the push WebSocket through nginx from `source`; 101 or the refusal's status."""
    try:
        async with websockets.connect(
            f"wss://{NAME}:{site.https_port}/",
            ssl=site.ssl_context(),
            local_addr=(source, 0),
            subprotocols=[websockets.Subprotocol("push-notification")],
            open_timeout=20,
        ):
            return 101
    except websockets.InvalidStatus as refused:
        return int(refused.response.status_code)


async def test_the_per_address_limit_sees_each_client_behind_nginx(tmp_path: Path) -> None:
    # Two connections a minute per address; only nginx's own address (127.0.0.1) is exempt.
    async with deployment(
        tmp_path, rate_connect_address="2/min", rate_limit_exempt="127.0.0.1/32"
    ) as site:
        assert [await _connect_from(site, "127.0.0.2") for _ in range(3)] == [101, 101, 429]
        # Another client behind the same proxy keeps its own allowance.
        assert await _connect_from(site, "127.0.0.3") == 101


async def test_without_trusting_the_proxy_every_client_is_the_proxy(tmp_path: Path) -> None:
    """The control: the same set-up minus --trusted-proxy sees only nginx's exempt address."""
    async with deployment(
        tmp_path,
        trusted_proxies="",
        rate_connect_address="2/min",
        rate_limit_exempt="127.0.0.1/32",
    ) as site:
        assert [await _connect_from(site, "127.0.0.2") for _ in range(3)] == [101, 101, 101]


async def test_plain_http_redirects_and_oversized_bodies_stop_at_nginx(tmp_path: Path) -> None:
    async with deployment(tmp_path) as site:
        async with httpx.AsyncClient(verify=site.ssl_context()) as client:
            plain = await client.get(f"http://{NAME}:{site.http_port}/health")
            assert plain.status_code == 308
            assert plain.headers["location"] == f"https://{NAME}/health"
            health = await client.get(f"{site.origin}/health")
            assert health.status_code == 200
            assert health.http_version == "HTTP/1.1"  # httpx without http2=True
        async with httpx.AsyncClient(verify=site.ssl_context(), http2=True) as client:
            health = await client.get(f"{site.origin}/health")
            assert health.status_code == 200
            assert health.http_version == "HTTP/2"  # nginx speaks HTTP/2 to clients
            big = await client.post(
                f"{site.origin}/push/whatever", content=b"x" * 65536, headers={"TTL": "60"}
            )
            assert big.status_code == 413
