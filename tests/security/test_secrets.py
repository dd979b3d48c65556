"""Secrets: key rotation, file modes, TLS, logs without secrets, VAPID never forwarded."""

from __future__ import annotations

import asyncio
import re
import signal
import ssl
import stat
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from support.service import Registration, ServiceProcess, TestAgent, running_service
from tidings.cli import main
from tidings.service.keyfile import read_keys
from tidings.webpush import VapidKey, b64url_decode, encrypt, sign_vapid


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def key_id(endpoint: str) -> int:
    """The key id byte of a sealed token (kind, key id, nonce, ...)."""
    return b64url_decode(endpoint.rsplit("/", 1)[-1])[1]


def encrypted(registration: Registration, text: str) -> bytes:
    keys = registration.subscription_info()["keys"]
    return encrypt(text.encode(), keys["p256dh"], keys["auth"])


async def push(registration: Registration, text: str, **headers: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.post(
            registration.endpoint,
            content=encrypted(registration, text),
            headers={"ttl": "600", "content-encoding": "aes128gcm", **headers},
        )


# Key rotation -------------------------------------------------------------------------------


def test_rotate_adds_a_key_that_seals_and_keeps_the_old_ones(tmp_path: Path) -> None:
    runner = CliRunner()
    secrets = tmp_path / "secrets.json"
    assert runner.invoke(main, ["keys", "token", "--out", str(secrets)]).exit_code == 0
    first, current = read_keys(secrets)
    assert current == 1
    result = runner.invoke(main, ["keys", "rotate", "--secrets", str(secrets)])
    assert result.exit_code == 0, result.output
    assert "key 2:" in result.output and "(seals and opens)" in result.output
    held, current = read_keys(secrets)
    assert current == 2 and held[1] == first[1] and len(held[2]) == 32
    assert mode(secrets) == 0o600
    # Two steps for a cluster: stage (every node learns the key), then activate.
    assert (
        runner.invoke(main, ["keys", "rotate", "--secrets", str(secrets), "--stage"]).exit_code == 0
    )
    held, current = read_keys(secrets)
    assert (sorted(held), current) == ([1, 2, 3], 2)
    result = runner.invoke(main, ["keys", "rotate", "--secrets", str(secrets), "--activate"])
    assert result.exit_code == 0, result.output
    assert read_keys(secrets)[1] == 3
    again = runner.invoke(main, ["keys", "rotate", "--secrets", str(secrets), "--activate"])
    assert again.exit_code != 0 and "already" in again.output
    for key in held.values():  # fingerprints only, never a key
        assert key.hex() not in result.output


async def test_rotation_keeps_old_endpoints_working(tmp_path: Path) -> None:
    process = ServiceProcess(tmp_path / "data")
    await asyncio.to_thread(process.start)
    try:
        agent = TestAgent(process.ws_url)
        await agent.connect()
        old = await agent.register()
        assert key_id(old.endpoint) == 1
        await agent.close()
        assert await asyncio.to_thread(process.stop) == 0
        secrets = process.data_dir / "tidings-secrets.json"
        result = CliRunner().invoke(main, ["keys", "rotate", "--secrets", str(secrets)])
        assert result.exit_code == 0, result.output
        await asyncio.to_thread(process.start)
        again = TestAgent(process.ws_url)
        await again.connect(agent.uaid)
        again.registrations = dict(agent.registrations)
        new = await again.register()
        assert key_id(new.endpoint) == 2  # the new key seals
        assert (await push(old, "old endpoint")).status_code == 201  # the old key opens
        assert (await push(new, "new endpoint")).status_code == 201
        texts = {(await again.next_notification()).plaintext for _ in range(2)}
        assert texts == {b"old endpoint", b"new endpoint"}
        await again.close()
    finally:
        await asyncio.to_thread(process.stop)


# File modes ---------------------------------------------------------------------------------


async def test_secret_files_are_owner_only(tmp_path: Path) -> None:
    runner = CliRunner()
    vapid_file, cert, key = tmp_path / "vapid.pem", tmp_path / "cert.pem", tmp_path / "key.pem"
    assert runner.invoke(main, ["keys", "generate", "--out", str(vapid_file)]).exit_code == 0
    assert (
        runner.invoke(main, ["keys", "tls", "--cert", str(cert), "--key", str(key)]).exit_code == 0
    )
    assert mode(vapid_file) == 0o600
    assert mode(key) == 0o600
    # The service's token keys and its database (user agent ids are credentials).
    async with running_service(tmp_path / "service") as running:
        agent = await running.agent()
        await agent.register()
        await agent.close()
        data = Path(running.config.db).parent
        assert mode(data / "tidings-secrets.json") == 0o600
        for name in ("tidings.db", "tidings.db-wal", "tidings.db-shm"):
            assert mode(data / name) == 0o600, name
    # The user agent's private keys live in its state file.
    from tidings.useragent.state import StateStore

    store = StateStore(tmp_path / "ua" / "state.db")
    store.set_meta("probe", "x")
    for path in (tmp_path / "ua").iterdir():
        assert mode(path) == 0o600, path.name
    store.close()


# TLS --------------------------------------------------------------------------------------


async def test_tls_listener_serves_https_and_wss(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    result = CliRunner().invoke(main, ["keys", "tls", "--cert", str(cert), "--key", str(key)])
    assert result.exit_code == 0, result.output
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # websockets trusts it through this
    trust = ssl.create_default_context(cafile=str(cert))
    async with running_service(tmp_path, tls_cert=str(cert), tls_key=str(key)) as running:
        assert running.url.startswith("https://") and running.ws_url.startswith("wss://")
        agent = await running.agent()
        registration = await agent.register()
        assert registration.endpoint.startswith("https://")
        async with httpx.AsyncClient(verify=trust, http2=True) as client:
            response = await client.post(
                registration.endpoint,
                content=encrypted(registration, "over tls"),
                headers={"ttl": "60", "content-encoding": "aes128gcm"},
            )
            assert response.status_code == 201
            assert response.http_version == "HTTP/2"  # ALPN
        assert (await agent.next_notification()).plaintext == b"over tls"
        # No cleartext on the TLS port.
        async with httpx.AsyncClient() as plain:
            with pytest.raises(httpx.HTTPError):
                await plain.get(running.url.replace("https://", "http://") + "/health")
        await agent.close()


# What leaves the service -------------------------------------------------------------------


async def test_vapid_token_and_key_never_reach_the_user_agent(tmp_path: Path) -> None:
    key = VapidKey.generate()
    async with running_service(tmp_path) as running:
        agent = await running.agent()
        registration = await agent.register(key.public_key_b64)
        signed = sign_vapid(key, running.url, "mailto:ops@example.net")
        response = await push(registration, "signed", authorization=signed.authorization)
        assert response.status_code == 201
        frame = (await agent.next_notification()).frame
        # Legacy aesgcm with the key in Crypto-Key (WebPush scheme).
        async with httpx.AsyncClient() as client:
            response = await client.post(
                registration.endpoint,
                content=b"x" * 64,
                headers={
                    "ttl": "60",
                    "content-encoding": "aesgcm",
                    "encryption": "salt=AAAAAAAAAAAAAAAAAAAAAA",
                    "crypto-key": f"dh=BBBB;p256ecdsa={key.public_key_b64}",
                    "authorization": f"WebPush {signed.token}",
                },
            )
        assert response.status_code == 201, response.text
        legacy = await agent.expect("notification")
        for document in (frame, legacy):
            text = str(document)
            assert signed.token not in text
            assert key.public_key_b64 not in text
            assert "p256ecdsa" not in text and "authorization" not in text.lower()
            assert "ttl" not in {k.lower() for k in document.get("headers", {})}
        assert legacy["headers"]["crypto_key"] == "dh=BBBB"
        await agent.close()


async def test_logs_hold_no_secrets(tmp_path: Path) -> None:
    key = VapidKey.generate()
    process = ServiceProcess(tmp_path / "data", args=["--log-level", "debug"])
    await asyncio.to_thread(process.start)
    secrets_seen: list[str] = []
    try:
        agent = TestAgent(process.ws_url)
        await agent.connect()
        registration = await agent.register(key.public_key_b64)
        signed = sign_vapid(key, process.url, "mailto:ops@example.net")
        accepted = await push(registration, "log me not", authorization=signed.authorization)
        assert accepted.status_code == 201
        await agent.next_notification()
        await agent.close()
        stored = await push(registration, "stored", authorization=signed.authorization)
        async with httpx.AsyncClient() as client:
            assert (await client.delete(stored.headers["location"])).status_code == 204
            subscribed = await client.post(process.url + "/subscribe")
            bad = await client.post(registration.endpoint + "x", headers={"ttl": "1"})
            assert bad.status_code == 404
        secrets_seen = [
            registration.endpoint.rsplit("/", 1)[-1],
            accepted.headers["location"].rsplit("/", 1)[-1],
            stored.headers["location"].rsplit("/", 1)[-1],
            subscribed.headers["location"].rsplit("/", 1)[-1],
            signed.token,
            str(agent.uaid),
        ]
        secrets_seen += re.findall(r"<[^>]*/([A-Za-z0-9_-]{40,})>", subscribed.headers["link"])
    finally:
        assert await asyncio.to_thread(process.stop, signal.SIGTERM) == 0
    log = process.log_path.read_text()
    assert "POST /push/" in log  # the access log was on
    token_file = (process.data_dir / "tidings-secrets.json").read_text()
    keys = re.findall(r'"\d+": "([^"]+)"', token_file)
    for secret in [*secrets_seen, *keys]:
        assert secret and secret not in log, f"{secret[:12]}... is in the log"
