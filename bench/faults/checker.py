"""The campaign's judge: reads a history, knows nothing of the service's code.

Promises checked (docs/reliability.md):
- lost: a push answered 201/202 with TTL > 0, not deleted by its sender (nor maybe
  deleted: a DELETE answered 503 or not at all may have been applied) and not made
  obsolete by a later push with the same Topic, that never reached its user agent,
  although its TTL ran past the moment the cluster healed plus a recovery time (a user
  agent notices a dead connection only when a ping goes unanswered, then reconnects);
- misrouted: a message that reached another user agent or channel than it was sent to;
- late: a message delivered after its TTL (a second of slack for clocks and transit);
- obsolete: a message delivered after a newer one with its Topic was accepted (the same
  slack: one already on the wire may still land);
- after delete: a message delivered after its sender's DELETE was answered 204 (the
  same slack; a 202 says the delete was made but a node's copy may still go out);
- in flight (counted, allowed): a delivery that would be late, obsolete or after delete
  but came through a node whose link to the user agents was slow, lossy or cut between
  the TTL's end (the replacement, the DELETE) and the delivery, at most LINK_DRAIN
  seconds after that fault was lifted: the node wrote the frame before, and TCP
  delivered it late (a connection that holds a copy unsent drops it, docs/reliability.md);
- receipt missing: a push that asked for a receipt on the monitored receipt
  subscription, answered 202, acknowledged by its user agent, neither deleted by its
  sender nor replaced by a newer push of its Topic (RFC 8030 section 5.4 suppresses a
  replaced message's receipt, and an acknowledgement the node could not record, its
  store unreachable, loses to the replacement), whose receipt never came (unless its
  last acknowledgement was within RECEIPT_GRACE seconds of the end, when an
  acknowledgement may still be on its way, or came before healing less than
  REDELIVERY seconds before the TTL's end: an acknowledgement the store could not take
  is taken on a later delivery only while the TTL lasts);
- undecryptable: a body the user agent could not decrypt;
- duplicated (counted, allowed: Web Push is at least once) and TTL-0 pushes that were
  delivered or not (counted, allowed either way).
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

SLACK = 1.0
LINK_DRAIN = 10.0  # a TCP backlog after a black hole: retransmissions back off to seconds
RECEIPT_GRACE = 5.0  # acknowledgements are batched, receipt monitors poll every 2 s
# Seconds within which a message whose acknowledgement was lost is delivered again: a
# user agent moves to another connection within 30 s (workload.stay_for), doubled.
REDELIVERY = 60.0

#: (node origin, from, until): when a node's link to the user agents was slow, lossy or
#: cut (times since the epoch, like the history's). A paused node is not among them: what
#: it wrote before the pause is in the kernel, which sends it meanwhile.
LinkFault = tuple[str, float, float]


@dataclass
class Verdict:
    accepted: int = 0
    delivered: int = 0
    duplicated: int = 0
    in_flight: list[str] = field(default_factory=list)  # message ids, allowed
    receipts_due: int = 0
    receipts_emitted: int = 0
    violations: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    @property
    def ok(self) -> bool:
        return not any(self.violations.values())

    def table(self) -> str:
        kinds = ("lost", "misrouted", "late", "obsolete", "after delete", "receipt missing",
                 "undecryptable")  # fmt: skip
        rows = [("pushes accepted", self.accepted), ("delivered (distinct)", self.delivered),
                ("duplicated deliveries", self.duplicated),
                ("in flight on a bad link", len(self.in_flight)),
                ("receipts due", self.receipts_due),
                ("receipts emitted (due)", self.receipts_emitted)]  # fmt: skip
        rows += [(kind, len(self.violations.get(kind, []))) for kind in kinds]
        width = max(len(name) for name, _ in rows)
        return "\n".join(f"{name:<{width}}  {value:>8}" for name, value in rows)


def in_flight(delivery: dict[str, Any], since: float, link_faults: list[LinkFault]) -> bool:
    """True when `delivery` came through a node whose link was bad after `since`."""
    return any(
        node == delivery.get("node") and start <= delivery["t"] <= until + LINK_DRAIN
        and until + LINK_DRAIN >= since
        for node, start, until in link_faults
    )  # fmt: skip


def check(
    events: list[dict[str, Any]],
    healed_at: float,
    recovery: float = 10.0,
    link_faults: list[LinkFault] | None = None,
) -> Verdict:
    """Judge `events` (History.events); `healed_at` is when the last fault was lifted,
    `recovery` the seconds after it that a message may still be lost in."""
    link_faults = link_faults or []
    verdict = Verdict()
    monitored: set[str] = set()
    receipts: set[str] = set()  # message paths with a 2xx receipt
    last_ack: dict[str, float] = {}
    end = max((event["t"] for event in events), default=0.0)
    pushes: dict[str, dict[str, Any]] = {}
    answers: dict[str, dict[str, Any]] = {}
    deletes: dict[str, float] = {}
    maybe_deleted: set[str] = set()  # a DELETE without a 204 or 404 (202, 503, none)
    deliveries: dict[str, list[dict[str, Any]]] = defaultdict(list)
    accepted_by_topic: dict[tuple[str, str], list[tuple[float, str]]] = defaultdict(list)
    for event in events:
        kind = event["kind"]
        if kind == "push":
            pushes[event["id"]] = event
        elif kind == "answer":
            answers[event["id"]] = event
            push = pushes.get(event["id"])
            # A TTL-0 push, never stored, replaces the stored one of its Topic all the
            # same (RFC 8030 section 5.4; Store.replace_topic).
            if push and event["status"] in (201, 202) and push.get("topic"):
                key = (push["channel"], push["topic"])
                accepted_by_topic[key].append((event["t"], event["id"]))
        elif kind == "deleted" and event["status"] == 204:
            deletes[event["id"]] = event["t"]
        elif kind == "deleted" and event["status"] != 404:
            maybe_deleted.add(event["id"])
        elif kind == "delivered":
            if event.get("id") is None:
                verdict.violations["undecryptable"].append(str(event.get("version")))
            else:
                deliveries[event["id"]].append(event)
        elif kind == "undecryptable":
            verdict.violations["undecryptable"].append(event.get("error", ""))
        elif kind == "acked" and event.get("id") is not None:
            last_ack[event["id"]] = event["t"]
        elif kind == "receipts-monitored":
            monitored.add(event["subscription"])
        elif kind == "receipt" and 200 <= event["status"] < 300:
            receipts.add(event["path"])

    for message_id, push in pushes.items():
        answer = answers.get(message_id)
        got = deliveries.get(message_id, [])
        if got:
            verdict.delivered += 1
            verdict.duplicated += len(got) - 1
        for delivery in got:
            if delivery["agent"] != push["agent"] or delivery["channel"] != push["channel"]:
                verdict.violations["misrouted"].append(message_id)
            if answer is not None and push["ttl"] > 0:
                expires = answer["t"] + push["ttl"]
                if delivery["t"] > expires + SLACK:
                    if in_flight(delivery, expires, link_faults):
                        verdict.in_flight.append(message_id)
                    else:
                        verdict.violations["late"].append(message_id)
            deleted_at = deletes.get(message_id)
            if deleted_at is not None and delivery["t"] > deleted_at + SLACK:
                if in_flight(delivery, deleted_at, link_faults):
                    verdict.in_flight.append(message_id)
                else:
                    verdict.violations["after delete"].append(message_id)
            if push.get("topic"):
                newer = [
                    at for at, other in accepted_by_topic[(push["channel"], push["topic"])]
                    if other != message_id and answer is not None and at > answer["t"]
                ]  # fmt: skip
                if newer and delivery["t"] > min(newer) + SLACK:
                    if in_flight(delivery, min(newer), link_faults):
                        verdict.in_flight.append(message_id)
                    else:
                        verdict.violations["obsolete"].append(message_id)
        if answer is None or answer["status"] not in (201, 202) or push["ttl"] == 0:
            continue
        verdict.accepted += 1
        acked_at = last_ack.get(message_id)
        replaced = bool(push.get("topic")) and any(
            at > answer["t"] and other != message_id
            for at, other in accepted_by_topic[(push["channel"], push["topic"])]
        )
        if (
            answer["status"] == 202 and answer.get("receipts") in monitored
            and acked_at is not None and message_id not in deletes and not replaced
            and message_id not in maybe_deleted and acked_at < end - RECEIPT_GRACE
            # An acknowledgement the store could not take during the faults is taken
            # again on a later delivery, if the TTL leaves time for one.
            and (acked_at > healed_at or answer["t"] + push["ttl"] > acked_at + REDELIVERY)
        ):  # fmt: skip
            verdict.receipts_due += 1
            if answer.get("location") in receipts:
                verdict.receipts_emitted += 1
            else:
                verdict.violations["receipt missing"].append(message_id)
        if got or message_id in deletes or message_id in maybe_deleted:
            continue
        if replaced:
            continue  # the newer one stands for it
        if answer["t"] + push["ttl"] > healed_at + recovery:
            verdict.violations["lost"].append(message_id)
    return verdict


def judge_saved(out: str, recovery: float = 10.0) -> Verdict:
    """Judge a saved run again: its `history.jsonl` (with the campaign's link-fault and
    healed events)."""
    with open(f"{out}/history.jsonl") as lines:
        events = [json.loads(line) for line in lines]
    healed_at = next(event["at"] for event in events if event["kind"] == "healed")
    link_faults = [
        (event["node"], event["start"], event["until"])
        for event in events
        if event["kind"] == "link-fault"
    ]
    return check(events, healed_at, recovery, link_faults)


if __name__ == "__main__":  # checker.py <out directory of a campaign>
    verdict = judge_saved(sys.argv[1])
    print(verdict.table())
    for kind, ids in verdict.violations.items():
        print(f"{kind}: {', '.join(ids[:20])}")
    sys.exit(0 if verdict.ok else 1)
