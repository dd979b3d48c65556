"""The fault campaign's checker (bench/faults/checker.py) on histories written by hand:
each promise it guards, broken once, is reported; kept, it is not."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench" / "faults"))

from checker import check, judge_saved

HEALED = 100.0


def push(
    mid: str, t: float, ttl: int = 600, topic: str | None = None, agent: str = "a"
) -> list[dict[str, Any]]:
    sent = {"kind": "push", "t": t, "id": mid, "agent": agent, "channel": "c", "ttl": ttl}
    answer = {"kind": "answer", "t": t + 0.01, "id": mid, "status": 201, "location": "/m/x"}
    return [{**sent, "topic": topic, "node": "n1"}, answer]


def delivered(mid: str, t: float, agent: str = "a", channel: str = "c") -> dict[str, Any]:
    return {"kind": "delivered", "t": t, "id": mid, "agent": agent, "channel": channel}


def kinds(events: list[dict[str, Any]]) -> dict[str, list[str]]:
    return {k: v for k, v in check(events, HEALED).violations.items() if v}


def test_a_clean_history_passes_and_duplicates_are_only_counted() -> None:
    events = [*push("m1", 10), delivered("m1", 11), delivered("m1", 12)]
    verdict = check(events, HEALED)
    assert verdict.ok and verdict.accepted == 1 and verdict.duplicated == 1


def test_an_accepted_message_that_never_arrives_is_lost() -> None:
    assert kinds(push("m1", 10)) == {"lost": ["m1"]}


def test_a_message_whose_ttl_ended_before_the_cluster_recovered_may_be_lost() -> None:
    assert kinds(push("m1", 10, ttl=5)) == {}  # expired at 15, healed at 100
    assert kinds(push("m2", 95, ttl=12)) == {}  # expired within the recovery time


def test_deleted_and_replaced_messages_need_not_arrive() -> None:
    deleted = [*push("m1", 10), {"kind": "deleted", "t": 11, "id": "m1", "status": 204}]
    replaced = [*push("m1", 10, topic="t"), *push("m2", 20, topic="t"), delivered("m2", 21)]
    assert kinds(deleted) == {} and kinds(replaced) == {}


def test_wrong_agent_late_obsolete_after_delete_and_undecryptable_are_reported() -> None:
    assert kinds([*push("m1", 10), delivered("m1", 11, agent="b")]) == {"misrouted": ["m1"]}
    assert kinds([*push("m1", 10, ttl=5), delivered("m1", 20)]) == {"late": ["m1"]}
    obsolete = [*push("m1", 10, topic="t"), *push("m2", 20, topic="t"), delivered("m1", 30)]
    assert kinds([*obsolete, delivered("m2", 31)]) == {"obsolete": ["m1"]}
    after = [*push("m1", 10), {"kind": "deleted", "t": 11, "id": "m1", "status": 204}]
    assert kinds([*after, delivered("m1", 20)]) == {"after delete": ["m1"]}
    garbled = [
        *push("m1", 10),
        delivered("m1", 11),
        {"kind": "delivered", "t": 12, "id": None, "version": "v"},
    ]
    assert kinds(garbled) == {"undecryptable": ["v"]}


def test_a_late_frame_is_in_flight_only_through_a_node_whose_link_was_bad() -> None:
    after = [*push("m1", 10), {"kind": "deleted", "t": 11, "id": "m1", "status": 204}]
    through_n1 = {**delivered("m1", 14), "node": "n1"}
    slow_n1 = [("n1", 9.0, 13.0)]
    verdict = check([*after, through_n1], HEALED, link_faults=slow_n1)
    assert verdict.ok and len(verdict.in_flight) == 1
    # Another node's bad link, or a delivery long after the link was mended, is no excuse.
    for faults in ([("n2", 9.0, 13.0)], [("n1", 1.0, 2.0)]):
        verdict = check([*after, through_n1], HEALED, link_faults=faults)
        assert dict(verdict.violations) == {"after delete": ["m1"]}
    obsolete = [*push("m1", 10, topic="t"), *push("m2", 11, topic="t")]
    verdict = check([*obsolete, through_n1, delivered("m2", 12)], HEALED, link_faults=slow_n1)
    assert verdict.ok and len(verdict.in_flight) == 1


def receipt_push(mid: str, t: float, subscription: str = "/r/1") -> list[dict[str, Any]]:
    sent, answer = push(mid, t)
    path = f"/m/{mid}"
    return [sent, {**answer, "status": 202, "location": path, "receipts": subscription}]


def test_an_acknowledged_message_needs_its_receipt() -> None:
    monitored = {"kind": "receipts-monitored", "t": 1, "subscription": "/r/1"}
    acked = [delivered("m1", 11), {"kind": "acked", "t": 11.1, "id": "m1", "agent": "a"}]
    ending = {"kind": "end", "t": 60}
    receipt = {"kind": "receipt", "t": 13, "path": "/m/m1", "status": 204}
    verdict = check([monitored, *receipt_push("m1", 10), *acked, receipt, ending], HEALED)
    assert verdict.ok and verdict.receipts_due == verdict.receipts_emitted == 1
    missing = check([monitored, *receipt_push("m1", 10), *acked, ending], HEALED)
    assert dict(missing.violations) == {"receipt missing": ["m1"]}
    # Not due: another (unmonitored) receipt subscription, an acknowledgement in the last
    # seconds, a message its sender deleted, one a newer push of its Topic replaced.
    other = check([monitored, *receipt_push("m1", 10, "/r/2"), *acked, ending], HEALED)
    at_the_end = check([monitored, *receipt_push("m1", 10), *acked, {**ending, "t": 12}], HEALED)
    deleted = {"kind": "deleted", "t": 10.5, "id": "m1", "status": 204}
    cancelled = check([monitored, *receipt_push("m1", 10), deleted, *acked, ending], HEALED)
    topic = receipt_push("m1", 10)
    topic[0] = {**topic[0], "topic": "t"}
    newer = push("m2", 12, topic="t")
    replaced = check([monitored, *topic, *acked, *newer, delivered("m2", 13), ending], HEALED)
    assert all(v.ok and v.receipts_due == 0 for v in (other, at_the_end, cancelled, replaced))


def test_a_saved_run_is_judged_again_with_its_link_faults_and_healing(tmp_path: Path) -> None:
    after = [*push("m1", 10), {"kind": "deleted", "t": 11, "id": "m1", "status": 204}]
    events = [*after, {**delivered("m1", 14), "node": "n1"}, {"kind": "healed", "t": 50, "at": 20}]
    (tmp_path / "history.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    assert dict(judge_saved(str(tmp_path)).violations) == {"after delete": ["m1"]}
    link = {"kind": "link-fault", "t": 50, "node": "n1", "start": 9.0, "until": 13.0}
    (tmp_path / "history.jsonl").write_text("".join(json.dumps(e) + "\n" for e in [*events, link]))
    assert judge_saved(str(tmp_path)).in_flight == ["m1"]
    # The healing time comes from the history: healed at 20, m2 (TTL 60) is lost.
    lost = [*push("m2", 10, ttl=60), {"kind": "healed", "t": 50, "at": 20}]
    (tmp_path / "history.jsonl").write_text("".join(json.dumps(e) + "\n" for e in lost))
    assert dict(judge_saved(str(tmp_path)).violations) == {"lost": ["m2"]}


def test_a_frame_written_before_the_ttl_ended_may_land_late_through_a_bad_link() -> None:
    events = [*push("m1", 10, ttl=4), {**delivered("m1", 17), "node": "n1"}]
    assert dict(check(events, HEALED).violations) == {"late": ["m1"]}
    verdict = check(events, HEALED, link_faults=[("n1", 12.0, 15.0)])
    assert verdict.ok and verdict.in_flight == ["m1"]


def test_a_ttl_0_push_with_the_topic_replaces_the_stored_one() -> None:
    events = [*push("m1", 10, topic="t"), *push("m2", 11, ttl=0, topic="t"), delivered("m1", 20)]
    assert kinds(events) == {"obsolete": ["m1"]}
    assert kinds([*push("m1", 10, topic="t"), *push("m2", 11, ttl=0, topic="t")]) == {}


def test_a_delete_without_a_definite_answer_may_have_been_applied() -> None:
    for status in (503, None):
        events = [*push("m1", 10), {"kind": "deleted", "t": 11, "id": "m1", "status": status}]
        assert kinds(events) == {}
    refused = [*push("m1", 10), {"kind": "deleted", "t": 11, "id": "m1", "status": 404}]
    assert kinds(refused) == {"lost": ["m1"]}
    # A 202: deleted, but a copy a node already held may still go out (docs/reliability.md).
    warned = [*push("m1", 10), {"kind": "deleted", "t": 11, "id": "m1", "status": 202}]
    assert kinds([*warned, delivered("m1", 20)]) == {}


def test_an_acknowledgement_during_the_faults_needs_a_receipt_only_while_the_ttl_lasts() -> None:
    monitored = {"kind": "receipts-monitored", "t": 1, "subscription": "/r/1"}
    sent, answer = receipt_push("m1", 10)
    acked = [delivered("m1", 11), {"kind": "acked", "t": 11.1, "id": "m1", "agent": "a"}]
    ending = {"kind": "end", "t": 200}
    short = [monitored, {**sent, "ttl": 4}, answer, *acked, ending]
    assert check(short, HEALED).receipts_due == 0  # its TTL ended long before healing
    long = [monitored, sent, answer, *acked, ending]
    assert dict(check(long, HEALED).violations) == {"receipt missing": ["m1"]}
