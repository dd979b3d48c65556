"""Web Push protocol and crypto without I/O: RFC 8188/8291 coding, VAPID, headers, subscriptions,
the JSON error body and its errno table.

Every error derives from `WebPushError`; any malformed or undecryptable body raises
`DecryptionError`, any bad VAPID token `VapidError`, any bad header `HeaderError`.
"""

from __future__ import annotations

from tidings.webpush.aesgcm import (
    AesgcmMessage,
    aesgcm_decrypt,
    aesgcm_encrypt,
    parse_header_params,
)
from tidings.webpush.b64 import b64url_decode, b64url_encode
from tidings.webpush.ece import MAX_PLAINTEXT, EceHeader, ece_decode, ece_encode, parse_ece_header
from tidings.webpush.encryption import MAX_BODY, decrypt, encrypt, encrypt_for_key
from tidings.webpush.errors import (
    DecryptionError,
    EncryptionError,
    Errno,
    ErrorBody,
    HeaderError,
    InvalidKeyError,
    InvalidSubscription,
    PayloadTooLarge,
    VapidError,
    WebPushError,
    errno_of,
    error_body,
    parse_error_body,
)
from tidings.webpush.headers import (
    MAX_TTL,
    URGENCIES,
    Urgency,
    parse_topic,
    parse_ttl,
    parse_urgency,
)
from tidings.webpush.keys import load_auth_secret, load_p256_private_key, public_key_bytes
from tidings.webpush.subscription import Subscription, load_p256_public_key
from tidings.webpush.vapid import (
    VapidHeaders,
    VapidKey,
    VerifiedVapid,
    sign_vapid,
    vapid_audience,
    verify_vapid,
)

__all__ = [
    "MAX_BODY",
    "MAX_PLAINTEXT",
    "MAX_TTL",
    "URGENCIES",
    "AesgcmMessage",
    "DecryptionError",
    "EceHeader",
    "EncryptionError",
    "Errno",
    "ErrorBody",
    "HeaderError",
    "InvalidKeyError",
    "InvalidSubscription",
    "PayloadTooLarge",
    "Subscription",
    "Urgency",
    "VapidError",
    "VapidHeaders",
    "VapidKey",
    "VerifiedVapid",
    "WebPushError",
    "aesgcm_decrypt",
    "aesgcm_encrypt",
    "b64url_decode",
    "b64url_encode",
    "decrypt",
    "ece_decode",
    "ece_encode",
    "encrypt",
    "encrypt_for_key",
    "errno_of",
    "error_body",
    "load_auth_secret",
    "load_p256_private_key",
    "load_p256_public_key",
    "parse_ece_header",
    "parse_error_body",
    "parse_header_params",
    "parse_topic",
    "parse_ttl",
    "parse_urgency",
    "public_key_bytes",
    "sign_vapid",
    "vapid_audience",
    "verify_vapid",
]
