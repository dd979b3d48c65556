"""Pooled random ids: the right length, never repeated, not shared with a forked child."""

from __future__ import annotations

import os

from tidings.service.ids import random_hex


def test_random_hex_has_the_asked_length_and_is_hex() -> None:
    for nbytes in (1, 8, 16, 5000):
        value = random_hex(nbytes)
        assert len(value) == 2 * nbytes
        int(value, 16)


def test_ids_do_not_repeat_across_pool_refills() -> None:
    ids = [random_hex(16) for _ in range(2000)]  # ~8 refills of the 4 KiB pool
    assert len(set(ids)) == len(ids)


def test_a_forked_child_draws_fresh_bytes() -> None:
    random_hex(16)  # the parent's pool now holds unread bytes
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next id and leave at once
        os.close(read_end)
        os.write(write_end, random_hex(16).encode())
        os._exit(0)
    os.close(write_end)
    child_id = os.read(read_end, 64).decode()
    os.close(read_end)
    os.waitpid(pid, 0)
    assert len(child_id) == 32
    assert child_id != random_hex(16)
