"""The node's shared per-address counts (node_counts.py) under `ConnectionAdmission`."""

from __future__ import annotations

from tidings.service.http.admission import REFUSING_PER_ADDRESS, ConnectionAdmission
from tidings.service.http.node_counts import OPEN, NodeCounts


def _workers(
    table: NodeCounts, cap: int, handshakes: int | None = None
) -> list[ConnectionAdmission]:
    admissions = []
    for index in range(table.workers):
        admission = ConnectionAdmission(
            per_address=cap, max_connections=None, handshakes_per_address=handshakes
        )
        admission.node = table.column(index)
        admissions.append(admission)
    return admissions


def test_two_workers_share_one_cap_and_give_it_back() -> None:
    first, second = _workers(NodeCounts(2), cap=3)
    slots = [first.open("198.51.100.7"), second.open("198.51.100.7"), first.open("198.51.100.7")]
    assert all(slot is not None and not slot.refused for slot in slots)
    refused = second.open("198.51.100.7")
    assert refused is not None and refused.refused  # the node holds 3: the cap
    assert not second.open("198.51.100.8").refused  # type: ignore[union-attr]
    first.close(slots[0])  # type: ignore[arg-type]
    assert not second.open("198.51.100.7").refused  # type: ignore[union-attr]


def test_refusals_pending_are_bounded_node_wide() -> None:
    first, second = _workers(NodeCounts(2), cap=1)
    assert not first.open("2001:db8::1").refused  # type: ignore[union-attr]
    answers = [(first, second)[n % 2].open("2001:db8::1") for n in range(2 * REFUSING_PER_ADDRESS)]
    assert sum(slot is not None for slot in answers) == REFUSING_PER_ADDRESS


def test_tls_handshakes_are_capped_node_wide() -> None:
    first, second = _workers(NodeCounts(2), cap=100, handshakes=2)
    assert first.open("203.0.113.5", handshake=True) is not None
    held = second.open("203.0.113.5", handshake=True)
    assert held is not None
    assert first.open("203.0.113.5", handshake=True) is None
    second.handshake_done(held)
    assert first.open("203.0.113.5", handshake=True) is not None


def test_a_collision_counts_together_and_never_grows_the_table() -> None:
    """One bucket per row: every address shares it, so a flood refuses early (fail safe)."""
    table = NodeCounts(2, buckets=1)
    size = len(table.cells)
    first, second = _workers(table, cap=5)
    for n in range(5):
        assert not first.open(f"192.0.2.{n}").refused  # type: ignore[union-attr]
    assert second.open("192.0.2.200").refused  # type: ignore[union-attr]
    assert len(table.cells) == size


def test_a_reset_column_gives_back_what_its_worker_held() -> None:
    table = NodeCounts(2)
    first, second = _workers(table, cap=2)
    first.open("192.0.2.9")
    first.open("192.0.2.9")
    assert second.open("192.0.2.9").refused  # type: ignore[union-attr]
    table.reset(0)  # the parent, once worker 0 has exited
    assert second.node is not None and second.node.held(OPEN, "192.0.2.9") == 0
    assert not second.open("192.0.2.9").refused  # type: ignore[union-attr]
