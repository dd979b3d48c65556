"""The client side of WebSocket frames, bare, for benchmark clients in other processes.

Load generators must cost as little CPU as they can, since they share the machine with
the service they measure: masked text frames out, unmasked frames in, nothing else.
Imported by the client code the benchmarks run with `python -c` (see `client_prelude`).
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

HANDSHAKE = (
    "GET / HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def frame(text: str) -> bytes:
    """One masked text frame (as a client must send)."""
    payload = text.encode()
    mask = os.urandom(4)
    n = len(payload)
    # FIN + text opcode; the mask bit with a 7-bit length, or 126 and a 16-bit length.
    head = struct.pack("!BB", 0x81, 0x80 | n) if n < 126 else struct.pack("!BBH", 0x81, 0xFE, n)
    keystream = int.from_bytes(mask * (n // 4 + 1), "little") & ((1 << (8 * n)) - 1)
    body = (int.from_bytes(payload, "little") ^ keystream).to_bytes(n, "little")
    return head + mask + body


def frames(buf: bytes) -> tuple[list[bytes], bytes]:
    """Complete server frames' payloads at the start of `buf`, and what is left."""
    out: list[bytes] = []
    while len(buf) >= 2:
        n = buf[1] & 0x7F
        off = 2
        if n == 126:
            if len(buf) < 4:
                break
            n = struct.unpack("!H", buf[2:4])[0]
            off = 4
        if len(buf) < off + n:
            break
        out.append(buf[off : off + n])
        buf = buf[off + n :]
    return out, buf


def client_prelude() -> str:
    """Code that makes this module importable from a `python -c` benchmark client."""
    return f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
