"""Capability tokens: endpoint, message and (later) subscription URLs.

A token is `kind || key id || nonce || AES-256-GCM(payload) || tag`, base64url. Sealing
under a service key means a token routes without a database look-up, reveals nothing
(not even which user agent it names) and cannot be forged or altered: the 128-bit tag
fails on any change. The kind byte is authenticated too, so a message token never
opens as an endpoint token. Keys have ids: the current one seals, every held one
opens (key rotation).

Nonces: a message token's is 96 random bits drawn when the message is accepted
(`new_message_id`), independent of everything in the payload (the 128-bit id sealed in
it is the accept time in milliseconds and 80 random bits), and kept as the tail of
the message's id, so the Location of a push, the path pushed to the user agent and the
receipt all name the message with one token. The other tokens name long-lived
resources that must keep one URL (an endpoint is the same after a re-register), so
their nonce is a hash of the whole payload: distinct payloads never share a nonce, and
the same payload gives the same token (which reveals only that it is the same URL).
"""

from __future__ import annotations

import hashlib
import os
import secrets
import time
from enum import IntEnum

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tidings.service.ids import random_hex
from tidings.service.records import record
from tidings.webpush import b64url_decode, b64url_encode

_NONCE_BYTES = 12
_TAG_BYTES = 16
_HEADER_BYTES = 2  # kind, key id
_ID_BYTES = 16  # uaid, channel id and message id are 128-bit values
VAPID_HASH_BYTES = 16
MAX_TOKEN_CHARS = 512  # anything longer is refused before base64 decoding


class TokenKind(IntEnum):
    """What a token designates; authenticated as part of the token."""

    ENDPOINT = 1
    MESSAGE = 2
    SUBSCRIPTION = 3
    SUBSCRIPTION_SET = 4
    RECEIPT_SUBSCRIPTION = 5


ENDPOINT_CACHE_SIZE = 16_384  # opened endpoint tokens remembered (a few MB at most)


class TokenError(ValueError):
    """A token that does not open: garbage, tampered, truncated or of another service."""


def vapid_key_hash(public_key: bytes) -> bytes:
    """The digest of an application server key that a restricted endpoint carries."""
    return hashlib.sha256(public_key).digest()[:VAPID_HASH_BYTES]


@record
class EndpointRef:
    """What a push endpoint token names: a subscription, maybe restricted to a key."""

    uaid: str  # 32 lowercase hex
    channel_id: str  # canonical lowercase UUID
    vapid_hash: bytes | None


@record
class MessageRef:
    """What a push message resource token names."""

    uaid: str
    channel_id: str
    message_id: str  # 56 lowercase hex: the 128-bit id, then its token's 96-bit nonce


_CLOCK_BYTES = 6  # the id's first 48 bits: milliseconds since the epoch


def new_message_id() -> str:
    """A new message's id: its 128-bit id (48 bits of the accept time in milliseconds,
    then 80 random bits), then the 96 random bits of its token's nonce.

    Ids in accept order keep the stores' indexes keyed by message id (the messages'
    unique id, the signed pushes' statuses) appending to a few pages: random ids made
    each group commit write one B-tree page per message to the WAL.
    """
    clock = (time.time_ns() // 1_000_000).to_bytes(_CLOCK_BYTES, "big").hex()
    return clock + random_hex(_ID_BYTES - _CLOCK_BYTES + _NONCE_BYTES)


def _uuid_bytes(channel_id: str) -> bytes:
    return bytes.fromhex(channel_id.replace("-", ""))


def _uuid_text(raw: bytes) -> str:
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


class TokenSealer:
    """Seals and opens capability tokens under the service's keys."""

    def __init__(self, keys: dict[int, bytes], current: int) -> None:
        if current not in keys:
            raise ValueError("the current token key must be one of the keys")
        for key_id, key in keys.items():
            if not 1 <= key_id <= 255:
                raise ValueError("token key ids are 1 to 255")
            if len(key) != 32:
                raise ValueError("token keys are 32 bytes")
        self._current = current
        self._ciphers = {key_id: AESGCM(key) for key_id, key in keys.items()}
        self._endpoints: dict[str, EndpointRef] = {}  # opened endpoint tokens

    @staticmethod
    def new_key() -> bytes:
        """A fresh random 256-bit token key."""
        return secrets.token_bytes(32)

    def seal(self, kind: TokenKind, payload: bytes, nonce: bytes | None = None) -> str:
        """Seal `payload` as a token of `kind` under the current key.

        A caller may fix the nonce to get the same token for the same payload; it must
        then never reuse a nonce for another payload (message ids are unique).
        """
        header = bytes((kind, self._current))
        nonce = os.urandom(_NONCE_BYTES) if nonce is None else nonce[:_NONCE_BYTES]
        sealed = self._ciphers[self._current].encrypt(nonce, payload, header)
        return b64url_encode(header + nonce + sealed)

    def open(self, kind: TokenKind, token: str) -> bytes:
        """The payload of a token of `kind`; TokenError if it does not open."""
        return self._open(kind, token)[1]

    def _open(self, kind: TokenKind, token: str) -> tuple[bytes, bytes]:
        """(nonce, payload) of a token of `kind`; TokenError if it does not open."""
        if not token or len(token) > MAX_TOKEN_CHARS:
            raise TokenError("token has an impossible length")
        try:
            raw = b64url_decode(token)
        except ValueError as exc:
            raise TokenError("token is not base64url") from exc
        if b64url_encode(raw) != token:
            raise TokenError("token is not in canonical base64url")  # one spelling per URL
        if len(raw) < _HEADER_BYTES + _NONCE_BYTES + _TAG_BYTES:
            raise TokenError("token is truncated")
        header, nonce, sealed = raw[:2], raw[2:14], raw[14:]
        if header[0] != kind:
            raise TokenError("token is of another kind")
        cipher = self._ciphers.get(header[1])
        if cipher is None:
            raise TokenError("token is sealed under an unknown key")
        try:
            return nonce, cipher.decrypt(nonce, sealed, header)
        except InvalidTag:
            raise TokenError("token does not authenticate") from None

    # Endpoint tokens -------------------------------------------------------------

    def seal_endpoint(self, ref: EndpointRef) -> str:
        """The token of a push resource (the endpoint handed to the user agent)."""
        payload = bytes.fromhex(ref.uaid) + _uuid_bytes(ref.channel_id)
        if ref.vapid_hash is not None:
            payload += ref.vapid_hash
        return self.seal_stable(TokenKind.ENDPOINT, payload)

    def open_endpoint(self, token: str) -> EndpointRef:
        """The subscription a push endpoint token names; TokenError otherwise.

        Tokens that opened are remembered (bounded): an application server pushes to
        the same endpoints again and again, and opening one (base64url, AES-GCM) was a
        few microseconds of every push. Only authentic tokens enter the cache, and it
        belongs to this sealer: a key rotation builds a new one.
        """
        ref = self._endpoints.get(token)
        if ref is not None:
            return ref
        payload = self.open(TokenKind.ENDPOINT, token)
        if len(payload) not in (2 * _ID_BYTES, 2 * _ID_BYTES + VAPID_HASH_BYTES):
            raise TokenError("endpoint token has a bad payload")
        vapid_hash = payload[2 * _ID_BYTES :] or None
        ref = EndpointRef(payload[:16].hex(), _uuid_text(payload[16:32]), vapid_hash)
        if len(self._endpoints) >= ENDPOINT_CACHE_SIZE:
            self._endpoints.clear()  # cheaper than LRU bookkeeping on every push
        self._endpoints[token] = ref
        return ref

    # Message tokens --------------------------------------------------------------

    def seal_message(self, ref: MessageRef) -> str:
        """The token of a push message resource (the Location of an accepted push).

        The nonce is the one drawn for the message when it was accepted (the tail of
        its id, `new_message_id`), so the URL an application server got in Location is
        the one pushed to the user agent and named in its receipt. A 32-hex id is a
        message accepted before nonces were drawn: it keeps the token it was given then
        (nonce = the id's first 96 bits) until it expires.
        """
        raw = bytes.fromhex(ref.message_id)
        if len(raw) == _ID_BYTES + _NONCE_BYTES:
            message_id, nonce = raw[:_ID_BYTES], raw[_ID_BYTES:]
        elif len(raw) == _ID_BYTES:
            message_id, nonce = raw, raw[:_NONCE_BYTES]
        else:
            raise ValueError("a message id is 56 hex digits (32 for an older message)")
        payload = bytes.fromhex(ref.uaid) + _uuid_bytes(ref.channel_id) + message_id
        return self.seal(TokenKind.MESSAGE, payload, nonce=nonce)

    def open_message(self, token: str) -> MessageRef:
        """The message a message token names; TokenError otherwise."""
        nonce, payload = self._open(TokenKind.MESSAGE, token)
        if len(payload) != 3 * _ID_BYTES:
            raise TokenError("message token has a bad payload")
        message_id = payload[32:]
        full_id = message_id if nonce == message_id[:_NONCE_BYTES] else message_id + nonce
        return MessageRef(payload[:16].hex(), _uuid_text(payload[16:32]), full_id.hex())

    # RFC 8030 user agent and receipt resources -----------------------------------

    def seal_stable(self, kind: TokenKind, payload: bytes) -> str:
        """A token that is the same every time for the same payload (a stable URL).

        The nonce is derived from the payload, so distinct payloads never share one.
        """
        nonce = hashlib.sha256(bytes((kind,)) + payload).digest()[:_NONCE_BYTES]
        return self.seal(kind, payload, nonce=nonce)

    def seal_subscription(self, uaid: str, channel_id: str) -> str:
        """The token of a push message subscription (what a user agent monitors)."""
        payload = bytes.fromhex(uaid) + _uuid_bytes(channel_id)
        return self.seal_stable(TokenKind.SUBSCRIPTION, payload)

    def open_subscription(self, token: str) -> tuple[str, str]:
        """(uaid, channel id) of a subscription token; TokenError otherwise."""
        payload = self.open(TokenKind.SUBSCRIPTION, token)
        if len(payload) != 2 * _ID_BYTES:
            raise TokenError("subscription token has a bad payload")
        return payload[:16].hex(), _uuid_text(payload[16:])

    def seal_set(self, uaid: str) -> str:
        """The token of a subscription set (one per user agent id)."""
        return self.seal_stable(TokenKind.SUBSCRIPTION_SET, bytes.fromhex(uaid))

    def open_set(self, token: str) -> str:
        """The uaid a subscription set token names; TokenError otherwise."""
        payload = self.open(TokenKind.SUBSCRIPTION_SET, token)
        if len(payload) != _ID_BYTES:
            raise TokenError("set token has a bad payload")
        return payload.hex()

    def seal_receipt(self, receipt_id: str) -> str:
        """The token of an application server's receipt subscription."""
        return self.seal_stable(TokenKind.RECEIPT_SUBSCRIPTION, bytes.fromhex(receipt_id))

    def open_receipt(self, token: str) -> str:
        """The receipt subscription id of a token; TokenError otherwise."""
        payload = self.open(TokenKind.RECEIPT_SUBSCRIPTION, token)
        if len(payload) != _ID_BYTES:
            raise TokenError("receipt token has a bad payload")
        return payload.hex()
