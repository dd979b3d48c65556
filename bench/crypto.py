"""Crypto throughput of tidings.webpush against http_ece and RFC 8291 written directly.

Run: .venv/bin/python bench/crypto.py [--seconds 3]. Single process, one core,
time.perf_counter; each line is messages (or operations) per second.
"""

from __future__ import annotations

import argparse
import os
import platform
import struct
import sys
import time
from collections.abc import Callable
from itertools import cycle

import cryptography
import http_ece
from cryptography.hazmat.primitives import hashes, hmac, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from tidings.webpush import VapidKey, encrypt, sign_vapid, verify_vapid
from tidings.webpush.keys import _load_public

CURVE = ec.SECP256R1()
X962 = serialization.Encoding.X962
UNCOMPRESSED = serialization.PublicFormat.UncompressedPoint
PAYLOAD = os.urandom(100)
RECIPIENTS = 2000  # more than the public-key cache (1024): every send is a cache miss


def make_recipients(n: int) -> list[tuple[bytes, bytes]]:
    """n user agents: (65-byte p256dh, 16-byte auth)."""
    return [
        (
            ec.generate_private_key(CURVE).public_key().public_bytes(X962, UNCOMPRESSED),
            os.urandom(16),
        )
        for _ in range(n)
    ]


def direct_hkdf(data: bytes, p256dh: bytes, auth: bytes) -> bytes:
    """RFC 8291 straight on cryptography, HKDF objects as the RFC reads."""
    ua_key = ec.EllipticCurvePublicKey.from_encoded_point(CURVE, p256dh)
    private_key = ec.generate_private_key(CURVE)
    as_public = private_key.public_key().public_bytes(X962, UNCOMPRESSED)
    secret = private_key.exchange(ec.ECDH(), ua_key)
    salt = os.urandom(16)
    info = b"WebPush: info\x00" + p256dh + as_public
    ikm = HKDF(hashes.SHA256(), 32, auth, info).derive(secret)
    cek = HKDF(hashes.SHA256(), 16, salt, b"Content-Encoding: aes128gcm\x00").derive(ikm)
    nonce = HKDF(hashes.SHA256(), 12, salt, b"Content-Encoding: nonce\x00").derive(ikm)
    body = AESGCM(cek).encrypt(nonce, data + b"\x02", None)
    return salt + struct.pack(">IB", 4096, 65) + as_public + body


_SHA256 = hashes.SHA256()


def _hmac(key: bytes, msg: bytes) -> bytes:
    mac = hmac.HMAC(key, _SHA256)
    mac.update(msg)
    return mac.finalize()


def direct_hmac(data: bytes, p256dh: bytes, auth: bytes) -> bytes:
    """RFC 8291 straight on cryptography, each one-block HKDF as bare HMACs (the floor)."""
    ua_key = ec.EllipticCurvePublicKey.from_encoded_point(CURVE, p256dh)
    private_key = ec.generate_private_key(CURVE)
    as_public = private_key.public_key().public_bytes(X962, UNCOMPRESSED)
    secret = private_key.exchange(ec.ECDH(), ua_key)
    salt = os.urandom(16)
    ikm = _hmac(_hmac(auth, secret), b"WebPush: info\x00" + p256dh + as_public + b"\x01")
    prk = _hmac(salt, ikm)
    cek = _hmac(prk, b"Content-Encoding: aes128gcm\x00\x01")[:16]
    nonce = _hmac(prk, b"Content-Encoding: nonce\x00\x01")[:12]
    body = AESGCM(cek).encrypt(nonce, data + b"\x02", None)
    return salt + struct.pack(">IB", 4096, 65) + as_public + body


def rate(fn: Callable[[], object], seconds: float) -> float:
    """Calls per second of fn over about `seconds`, after a short warm-up."""
    for _ in range(50):
        fn()
    count = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(100):
            fn()
        count += 100
        now = time.perf_counter()
        if now >= deadline:
            return count / (now - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=3.0, help="time per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved encrypt rounds")
    args = parser.parse_args()
    seconds: float = args.seconds
    rounds: int = args.rounds

    recipients = make_recipients(RECIPIENTS)
    print(
        f"python {platform.python_version()}, cryptography {cryptography.__version__}, "
        f"{os.cpu_count()} CPUs, {seconds:g} s per line, {len(PAYLOAD)}-byte payload, "
        f"{RECIPIENTS} recipients cycled, best of {rounds} interleaved rounds for encrypt"
    )

    def per_recipient(fn: Callable[[bytes, bytes, bytes], object]) -> Callable[[], object]:
        it = cycle(recipients)

        def step() -> object:
            p256dh, auth = next(it)
            return fn(PAYLOAD, p256dh, auth)

        return step

    def tidings_encrypt(data: bytes, p256dh: bytes, auth: bytes) -> bytes:
        return encrypt(data, p256dh, auth)

    def http_ece_encrypt(data: bytes, p256dh: bytes, auth: bytes) -> bytes:
        key = ec.generate_private_key(CURVE)
        return http_ece.encrypt(  # type: ignore[no-any-return]
            data, private_key=key, dh=p256dh, auth_secret=auth, version="aes128gcm"
        )

    results: dict[str, float] = {}

    def report(name: str, value: float) -> None:
        results[name] = value
        print(f"{name:<44} {value:>10,.0f} /s")
        sys.stdout.flush()

    # Interleave the three encryptors for a few rounds and keep the best of each, so
    # that a noisy neighbour on the machine does not decide the ratio.
    names = (
        "direct RFC 8291, cryptography HKDF",
        "direct RFC 8291, cryptography HMAC",
        "tidings encrypt",
    )
    fns = (direct_hkdf, direct_hmac, tidings_encrypt)
    for _ in range(rounds):
        for name, fn in zip(names, fns, strict=True):
            _load_public.cache_clear()
            value = rate(per_recipient(fn), seconds)
            results[name] = max(results.get(name, 0.0), value)
    for name in names:
        report(name, results[name])
    report("http_ece.encrypt (aes128gcm)", rate(per_recipient(http_ece_encrypt), seconds))
    p256dh0, auth0 = recipients[0]
    report(
        "tidings encrypt, same recipient (cache hit)",
        rate(lambda: encrypt(PAYLOAD, p256dh0, auth0), seconds),
    )

    def floor() -> bytes:
        peer = ec.EllipticCurvePublicKey.from_encoded_point(CURVE, p256dh0)
        return ec.generate_private_key(CURVE).exchange(ec.ECDH(), peer)

    report("floor: P-256 keygen + ECDH", rate(floor, seconds))

    key = VapidKey.generate()
    endpoint = "https://push.example.net/wpush/v2/abc"
    report(
        "VAPID sign",
        rate(lambda: sign_vapid(key, endpoint, "mailto:ops@example.com"), seconds),
    )
    header = sign_vapid(key, endpoint, "mailto:ops@example.com").authorization
    report(
        "VAPID verify",
        rate(lambda: verify_vapid(header, audience="https://push.example.net"), seconds),
    )

    ours = results["tidings encrypt"]
    print(
        f"ratio tidings / direct (HKDF): {ours / results['direct RFC 8291, cryptography HKDF']:.1%}"
    )
    print(
        f"ratio tidings / direct (HMAC): {ours / results['direct RFC 8291, cryptography HMAC']:.1%}"
    )
    print(f"ratio tidings / http_ece:      {ours / results['http_ece.encrypt (aes128gcm)']:.1%}")


if __name__ == "__main__":
    main()
