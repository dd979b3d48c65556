"""Storage engines behind the `Store` interface, chosen from a URL."""

from __future__ import annotations

from pathlib import Path

from tidings.service.store.base import (
    MessageQuota,
    MessageStatus,
    Receipt,
    Store,
    StoredMessage,
    StoreError,
    StoreFull,
    StoreUnavailable,
    SubscriptionGone,
    SubscriptionRecord,
    TooManyMessages,
    TooManySubscriptions,
)

__all__ = [
    "MessageQuota",
    "MessageStatus",
    "Receipt",
    "Store",
    "StoreError",
    "StoreFull",
    "StoreUnavailable",
    "StoredMessage",
    "SubscriptionGone",
    "SubscriptionRecord",
    "TooManyMessages",
    "TooManySubscriptions",
    "open_store",
    "sqlite_path",
]


def open_store(url: str, *, synchronous: str = "normal") -> Store:
    """A store for `url`: `sqlite:///path`, a plain path, or `postgresql://...`."""
    if url.startswith(("postgresql://", "postgres://")):
        from tidings.service.store.postgres import store_from_url

        return store_from_url(url)
    from tidings.service.store.sqlite import SQLiteStore

    return SQLiteStore(sqlite_path(url), synchronous=synchronous)


def sqlite_path(url: str) -> Path:
    """The file of an SQLite store URL: sqlite:///PATH, sqlite:PATH or a plain path."""
    # As in SQLAlchemy: sqlite:///relative/path and sqlite:////absolute/path.
    if url.startswith("sqlite:///"):
        return Path(url.removeprefix("sqlite:///"))
    return Path(url.removeprefix("sqlite:"))
