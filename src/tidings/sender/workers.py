"""Encryption in worker processes, so a fan-out uses more than one core.

RFC 8291 costs an ECDH and a key generation per message, which dominates a fan-out's
CPU time; HTTP work stays in the event loop's process. Chunks amortise the IPC cost.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor

from tidings.webpush import WebPushError, aesgcm_encrypt, encrypt

__all__ = ["EncryptedItem", "encrypt_chunk", "make_pool"]

EncryptedItem = tuple[bytes, dict[str, str]] | str
"""The body and its coding headers, or the error text when encryption failed."""


def encrypt_chunk(
    items: list[tuple[bytes, bytes, bytes]], content_encoding: str
) -> list[EncryptedItem]:
    """Encrypt (p256dh, auth, plaintext) triples; runs in a worker process."""
    out: list[EncryptedItem] = []
    salts = os.urandom(16 * len(items)) if content_encoding == "aes128gcm" else b""  # at once
    for at, (p256dh, auth, plaintext) in enumerate(items):
        try:
            if content_encoding == "aes128gcm":
                salt = salts[16 * at : 16 * at + 16]
                body = encrypt(plaintext, p256dh, auth, salt=salt)
                out.append((body, {"Content-Encoding": "aes128gcm"}))
            else:
                message = aesgcm_encrypt(plaintext, p256dh, auth)
                out.append((message.body, dict(message.headers)))
        except (WebPushError, ValueError) as exc:
            out.append(f"cannot encrypt for this subscription: {exc}")
    return out


def _ready() -> int:
    return os.getpid()


def make_pool(workers: int) -> ProcessPoolExecutor:
    """A process pool of `workers` encryptors (forkserver on POSIX: no forked event loop)."""
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=context)
    for future in [pool.submit(_ready) for _ in range(workers)]:
        future.result()  # start them now, not during the first fan-out
    return pool
