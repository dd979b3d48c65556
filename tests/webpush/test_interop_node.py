"""Interop with the npm web-push package (node), both directions, via tests/node/webpush-crypto.js.

Skipped when node or tests/node/node_modules is missing, except under CI where that fails.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from support.ci import require
from tidings.webpush import (
    VapidKey,
    aesgcm_decrypt,
    aesgcm_encrypt,
    b64url_decode,
    b64url_encode,
    decrypt,
    encrypt,
    sign_vapid,
    verify_vapid,
)
from webpush.helpers import UserAgentKeys, make_ua

pytestmark = pytest.mark.node

NODE_DIR = Path(__file__).resolve().parents[1] / "node"
SCRIPT = NODE_DIR / "webpush-crypto.js"
AUD = "https://fcm.googleapis.com"
ENDPOINT = AUD + "/fcm/send/abc:def"


def run_node(ops: list[dict[str, Any]]) -> list[Any]:
    """Run the operations in one node process; return each result (failing on node errors)."""
    node = shutil.which("node")
    require(node is not None, "node")
    require((NODE_DIR / "node_modules" / "web-push").is_dir(), "tests/node/node_modules (npm ci)")
    assert node is not None
    proc = subprocess.run(
        [node, str(SCRIPT)],
        input=json.dumps(ops),
        capture_output=True,
        text=True,
        cwd=NODE_DIR,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    answers = json.loads(proc.stdout)
    for answer in answers:
        assert answer["ok"], answer["error"]
    return [answer["result"] for answer in answers]


PAYLOADS = [b"hello from node", bytes(range(256)), b"n" * 3993]


class TestNodeEncryptsTidingsDecrypts:
    def test_aes128gcm(self) -> None:
        uas = [make_ua() for _ in PAYLOADS]
        results = run_node(
            [
                {
                    "op": "encrypt",
                    "p256dh": ua.public_b64,
                    "auth": ua.auth_b64,
                    "payload": b64url_encode(payload),
                    "encoding": "aes128gcm",
                }
                for ua, payload in zip(uas, PAYLOADS, strict=True)
            ]
        )
        for ua, payload, result in zip(uas, PAYLOADS, results, strict=True):
            body = b64url_decode(result["body"])
            assert decrypt(body, ua.private_key, ua.auth) == payload

    def test_aesgcm(self) -> None:
        uas = [make_ua() for _ in PAYLOADS]
        results = run_node(
            [
                {
                    "op": "encrypt",
                    "p256dh": ua.public_b64,
                    "auth": ua.auth_b64,
                    "payload": b64url_encode(payload),
                    "encoding": "aesgcm",
                }
                for ua, payload in zip(uas, PAYLOADS, strict=True)
            ]
        )
        for ua, payload, result in zip(uas, PAYLOADS, results, strict=True):
            plain = aesgcm_decrypt(
                b64url_decode(result["body"]),
                ua.private_key,
                ua.auth,
                encryption=f"salt={result['salt']}",
                crypto_key=f"dh={result['localPublicKey']}",
            )
            assert plain == payload


class TestTidingsEncryptsNodeDecrypts:
    def test_aes128gcm_and_aesgcm(self, ua: UserAgentKeys) -> None:
        private = b64url_encode(ua.private_raw)
        ops: list[dict[str, Any]] = []
        for payload in PAYLOADS:
            body = encrypt(payload, ua.public, ua.auth)
            ops.append(
                {
                    "op": "decrypt",
                    "encoding": "aes128gcm",
                    "body": b64url_encode(body),
                    "privateKey": private,
                    "auth": ua.auth_b64,
                }
            )
            msg = aesgcm_encrypt(payload[:4078], ua.public, ua.auth)
            ops.append(
                {
                    "op": "decrypt",
                    "encoding": "aesgcm",
                    "body": b64url_encode(msg.body),
                    "privateKey": private,
                    "auth": ua.auth_b64,
                    "salt": b64url_encode(msg.salt),
                    "dh": b64url_encode(msg.sender_public_key),
                }
            )
        results = run_node(ops)
        expected = [p for payload in PAYLOADS for p in (payload, payload[:4078])]
        assert [b64url_decode(r["plaintext"]) for r in results] == expected


class TestVapid:
    def test_node_headers_verify_with_tidings(self) -> None:
        keys = run_node([{"op": "generateVapidKeys"}])[0]
        exp = int(time.time()) + 3600
        common = {
            "op": "vapidHeaders",
            "audience": AUD,
            "subject": "mailto:ops@example.com",
            "publicKey": keys["publicKey"],
            "privateKey": keys["privateKey"],
            "expiration": exp,
        }
        rfc, legacy = run_node(
            [{**common, "encoding": "aes128gcm"}, {**common, "encoding": "aesgcm"}]
        )
        result = verify_vapid(rfc["Authorization"], audience=ENDPOINT)
        assert result.expires_at == exp
        assert result.public_key == b64url_decode(keys["publicKey"])
        verify_vapid(legacy["Authorization"], audience=AUD, crypto_key=legacy["Crypto-Key"])

    def test_node_keys_load_in_tidings(self) -> None:
        keys = run_node([{"op": "generateVapidKeys"}])[0]
        assert VapidKey.from_string(keys["privateKey"]).public_key_b64 == keys["publicKey"]

    def test_tidings_tokens_verify_with_node_crypto(self) -> None:
        key = VapidKey.generate()
        headers = sign_vapid(key, ENDPOINT, "mailto:ops@example.com")
        tampered = headers.token[:-4] + ("AAAA" if not headers.token.endswith("AAAA") else "BBBB")
        good, bad = run_node(
            [
                {"op": "verifyJwt", "token": headers.token, "publicKey": headers.public_key},
                {"op": "verifyJwt", "token": tampered, "publicKey": headers.public_key},
            ]
        )
        assert good["valid"] is True
        assert good["header"] == {"typ": "JWT", "alg": "ES256"}
        assert good["claims"]["aud"] == AUD
        assert bad["valid"] is False

    def test_tidings_key_signs_for_node(self) -> None:
        key = VapidKey.generate()
        (node_headers,) = run_node(
            [
                {
                    "op": "vapidHeaders",
                    "audience": AUD,
                    "subject": "mailto:ops@example.com",
                    "publicKey": key.public_key_b64,
                    "privateKey": b64url_encode(key.private_bytes()),
                    "encoding": "aes128gcm",
                }
            ]
        )
        assert verify_vapid(node_headers["Authorization"], audience=AUD).public_key == (
            key.public_key_bytes
        )
