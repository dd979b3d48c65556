"""From a delivered message to an ack code, without sockets.

`open_message` decrypts a delivery with its subscription's keys (RFC 8291 `aes128gcm`,
or the legacy `aesgcm` with the headers the service relayed). `DeliveryTracker`
decides, for each delivery, whether it is new, a duplicate still being handled, or a
duplicate already handled (to be acked again with the code it got). The user agent
wires these to the transport and to the handlers.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from cryptography.hazmat.primitives.asymmetric import ec

from tidings.useragent.protocol import AckCode
from tidings.useragent.state import StateStore
from tidings.useragent.transport import Delivery
from tidings.webpush import DecryptionError, aesgcm_decrypt, decrypt

__all__ = ["SUPPORTED_CONTENT_ENCODINGS", "DeliveryTracker", "Verdict", "open_message"]

SUPPORTED_CONTENT_ENCODINGS = ("aes128gcm", "aesgcm")
"""What `PushManager.supported_content_encodings` reports, newest first."""


def open_message(
    delivery: Delivery, private_key: ec.EllipticCurvePrivateKey, auth: bytes
) -> bytes | None:
    """The plaintext of a delivery, None when it has no body; DecryptionError otherwise."""
    if not delivery.body:
        return None
    encoding = delivery.headers.get("encoding", "aes128gcm").strip().lower()
    if encoding == "aes128gcm":
        return decrypt(delivery.body, private_key, auth)
    if encoding == "aesgcm":
        return aesgcm_decrypt(
            delivery.body,
            private_key,
            auth,
            encryption=delivery.headers.get("encryption", ""),
            crypto_key=delivery.headers.get("crypto_key", ""),
        )
    raise DecryptionError(f"unsupported content encoding {encoding[:40]!r}")


class Verdict(Enum):
    """What to do with a delivery."""

    NEW = "new"  # decrypt and fire the event
    IN_PROGRESS = "in-progress"  # its event is running: it will be acked when done
    HANDLED = "handled"  # seen before: ack again with the recorded code, fire nothing


@dataclass(frozen=True, slots=True)
class Decision:
    """A verdict and, for HANDLED, the code to ack with."""

    verdict: Verdict
    code: int = AckCode.DELIVERED


class DeliveryTracker:
    """Fires each message id once, across redeliveries and restarts (ids kept in state)."""

    def __init__(self, state: StateStore) -> None:
        self._state = state
        self._in_progress: set[str] = set()

    def classify(self, message_id: str) -> Decision:
        """Classify a delivery; a NEW one is marked in progress until `finish`."""
        if message_id in self._in_progress:
            return Decision(Verdict.IN_PROGRESS)
        code = self._state.seen(message_id)
        if code is not None:
            return Decision(Verdict.HANDLED, code)
        self._in_progress.add(message_id)
        return Decision(Verdict.NEW)

    def finish(self, message_id: str, code: int) -> None:
        """The event of `message_id` is over with `code`: remember it."""
        self._state.mark_seen(message_id, code)
        self._in_progress.discard(message_id)

    def abandon(self, message_id: str) -> None:
        """The event was not run after all (held, or cancelled): forget it was started."""
        self._in_progress.discard(message_id)

    def __len__(self) -> int:
        return len(self._in_progress)
