"""The SQLite state file: owner-only, and everything survives a reopen."""

from __future__ import annotations

import stat
from pathlib import Path

from tidings.useragent.state import StateStore, StoredSubscription


def subscription(scope: str, handle: str) -> StoredSubscription:
    return StoredSubscription(
        scope, handle, f"http://push/{handle}", b"k" * 32, b"a" * 16, None, True, None, 1.0
    )


def test_state_file_is_owner_only_even_with_a_lax_umask(tmp_path: Path) -> None:
    import os

    old = os.umask(0)
    try:
        store = StateStore(tmp_path / "dir")
        store.put_registration("s")
        store.put_subscription(subscription("s", "h"))
    finally:
        os.umask(old)
    for path in (tmp_path / "dir").iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE((tmp_path / "dir").stat().st_mode) == 0o700
    store.close()


def test_state_survives_reopen(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "ua.db")
    store.uaid = "u1"
    store.put_registration("a", "cat")
    store.ensure_registration("a")  # keeps the command
    store.ensure_registration("b")
    store.put_subscription(subscription("a", "h1"))
    store.mark_seen("m1", 100)
    store.close()
    store = StateStore(tmp_path / "ua.db")
    assert store.uaid == "u1"
    assert [(r.scope, r.exec_command) for r in store.registrations()] == [
        ("a", "cat"),
        ("b", None),
    ]
    assert store.subscription_by_handle("h1") == subscription("a", "h1")
    assert store.seen("m1") == 100 and store.seen("m2") is None
    store.delete_registration("a")  # cascades to its subscription
    assert store.get_subscription("a") is None
    assert store.prune_seen(older_than=-1) == 1
    store.close()
