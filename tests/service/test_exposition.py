"""Plain counts exposed as Prometheus metrics: the same text the client library's own
Counter and Histogram would give for the same observations."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from tidings.service.exposition import LabelledCounter, LatencyHistogram, PlainCollector

BOUNDS = (0.001, 0.01, 0.1, 1.0)
OBSERVED = (0.0, 0.001, 0.0010001, 0.05, 0.1, 7.5, 1e9)  # bounds themselves included


def samples(registry: CollectorRegistry) -> set[str]:
    """The exposition's sample lines, without `_created` (times differ) and comments."""
    text = generate_latest(registry).decode()
    return {
        line for line in text.splitlines() if line and "_created" not in line and line[0] != "#"
    }


def test_histogram_buckets_are_cumulative_and_include_their_bound() -> None:
    histogram = LatencyHistogram(BOUNDS)
    for value in OBSERVED:
        histogram.observe(value)
    assert histogram.cumulative() == [
        ("0.001", 2.0),  # 0 and exactly 0.001: `le` means at or below
        ("0.01", 3.0),
        ("0.1", 5.0),
        ("1.0", 5.0),
        ("+Inf", 7.0),
    ]
    assert histogram.total == sum(OBSERVED)


def test_exposition_matches_the_client_library() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    codes: LabelledCounter[int] = LabelledCounter()
    latency = {"store": LatencyHistogram(BOUNDS), "delete": LatencyHistogram(BOUNDS)}
    deliveries = 0
    ours.register(
        PlainCollector(
            counters=[("t_codes", "codes", "code", codes)],
            totals=[("t_deliveries", "deliveries", lambda: deliveries, 0.0)],
            histograms=[("t_latency_seconds", "latency", "operation", lambda: latency)],
        )
    )
    their_codes = Counter("t_codes", "codes", ["code"], registry=theirs)
    their_deliveries = Counter("t_deliveries", "deliveries", registry=theirs)
    their_latency = Histogram(
        "t_latency_seconds", "latency", ["operation"], buckets=BOUNDS, registry=theirs
    )
    for code in (201, 201, 410, 429):
        codes.add(code)
        their_codes.labels(str(code)).inc()
    for value in OBSERVED:
        latency["store"].observe(value)
        their_latency.labels("store").observe(value)
    latency["delete"].observe(0.5)
    their_latency.labels("delete").observe(0.5)
    deliveries = 3
    their_deliveries.inc(3)
    assert samples(ours) == samples(theirs)
    assert 't_codes_total{code="201"} 2.0' in samples(ours)
    assert codes.created.keys() == {201, 410, 429}  # `_created` from the first count
