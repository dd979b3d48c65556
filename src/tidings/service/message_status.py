"""A push message's status, read by the sender that signed it (GET of `/m/<token>`)."""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Mapping

from tidings.service.errors import Errno, ServiceError
from tidings.service.service_base import ServiceBase, store_unavailable
from tidings.service.store import MessageStatus, StoreUnavailable
from tidings.service.store.base import DELIVERED, EXPIRED, FINAL_STATES, STORED
from tidings.service.tokens import TokenError

__all__ = ["MessageStatusReader", "status_document"]

log = logging.getLogger("tidings.service")


def status_document(status: MessageStatus, now: float) -> dict[str, object]:
    """The JSON answer to a message status GET: times are epoch seconds (UTC, to the
    millisecond), null for the steps not reached. A stored or delivered message past
    its expiry (not yet swept, or removed with its subscription) reads as expired."""
    state = status.state
    final_at = status.final_at
    if state in (STORED, DELIVERED) and status.ttl and status.expires_at <= now:
        state, final_at = EXPIRED, status.expires_at
    final: dict[str, float | None] = dict.fromkeys(FINAL_STATES)
    if state in FINAL_STATES:
        final[state] = final_at
    document: dict[str, object] = {
        "message": status.message_id,
        "state": state,
        "delivered_via": status.delivered_via,
        "ttl": status.ttl,
        "created_at": status.created_at,
        "stored_at": status.created_at if status.ttl else None,
        "delivered_at": status.delivered_at,
        "acknowledged_at": final["acknowledged"],
        "expired_at": final["expired"],
        "deleted_at": final["deleted"],
        "replaced_at": final["replaced"],
        "expires_at": status.expires_at,
    }
    return {
        name: round(value, 3) if isinstance(value, float) else value
        for name, value in document.items()
    }


class MessageStatusReader(ServiceBase):
    """The push service's answer to a status GET (see `PushService`)."""

    async def message_status(self, token: str, headers: Mapping[str, str]) -> dict[str, object]:
        """GET of a push message resource: its status, for the sender that signed it.

        Needs a VAPID token (the same checks as a push: audience, expiry, signature) of
        the key that signed the push: 401 without one, 403 with another key's; 404 for
        an unsigned push's or a forgotten status (docs/rfc8030.md, "Message status").
        """
        try:
            ref = self.sealer.open_message(token)
        except TokenError:
            raise ServiceError(404, Errno.INVALID_TOKEN, "no such push message") from None
        checked = self.vapid.check_signed(headers, None)
        if checked is None:
            raise ServiceError(
                401,
                Errno.VAPID_MISSING,
                "a message status is for the sender of a VAPID-signed push: sign the GET "
                "with the key that signed the push (Authorization: vapid t=..., k=...); "
                "unsigned pushes have no status",
                headers={"www-authenticate": "vapid"},
            )
        try:
            status = await self.store.get_message_status(ref.uaid, ref.message_id)
        except StoreUnavailable as exc:
            raise store_unavailable(exc) from None
        if status is None:
            raise ServiceError(
                404,
                Errno.NOT_FOUND,
                "no status for this push message: it was not VAPID-signed, or its status "
                "was forgotten (message_status_retention after it ended)",
            )
        if not hmac.compare_digest(status.vapid_hash, checked[1]):
            raise ServiceError(
                403,
                Errno.VAPID_KEY_MISMATCH,
                "only the key that signed the push may read its status",
            )
        return status_document(status, time.time())
