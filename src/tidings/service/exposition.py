"""Counts kept as plain numbers on the hot paths, turned into Prometheus metrics only
when `/metrics` is read.

The Prometheus client's own `Counter` and `Histogram` take a lock on every increment
and update a histogram's series one by one; on the push path (three hooks and two
timed store calls per message) that came to about an eighth of the service's CPU per
push (BENCHMARKS.md). Here an increment is a dict or list addition and an observation
one `bisect`; the exposition is the same text, built at scrape time by `PlainCollector`.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Generic, TypeVar

from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

#: How the client library writes `le` values ("+Inf", "0.005"), typed for our use.
_bucket_label: Callable[[float], str] = floatToGoString


class LatencyHistogram:
    """Bucket counts and a sum; `le` buckets as Prometheus defines them."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one: above every bound
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        # bisect_left: the first bound >= seconds, the bucket `le` that bound.
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.total += seconds

    def cumulative(self) -> list[tuple[str, float]]:
        """(le, observations at or below it), ending with +Inf: the exposition's form."""
        buckets: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            buckets.append((_bucket_label(bound), float(running)))
        return buckets


Label = TypeVar("Label", int, str)


class LabelledCounter(Generic[Label]):
    """A counter by one label, with when each label was first counted."""

    __slots__ = ("counts", "created")

    def __init__(self) -> None:
        self.counts: dict[Label, int] = {}
        self.created: dict[Label, float] = {}

    def add(self, label: Label) -> None:
        count = self.counts.get(label)
        if count is None:
            self.created[label] = time.time()
            count = 0
        self.counts[label] = count + 1


CounterSpec = tuple[str, str, str, LabelledCounter[Any]]  # name, help, label name, counts
HistogramSpec = tuple[str, str, str, Callable[[], dict[str, LatencyHistogram]]]


class PlainCollector(Collector):
    """Reads plain counts into metric families at scrape time."""

    def __init__(
        self,
        *,
        counters: Sequence[CounterSpec] = (),
        totals: Sequence[tuple[str, str, Callable[[], int], float]] = (),
        histograms: Sequence[HistogramSpec] = (),
    ) -> None:
        self._counters = counters
        self._totals = totals  # unlabelled counters: name, help, read, created
        self._histograms = histograms  # by label value; "" for an unlabelled one

    def collect(self) -> Iterator[Metric]:
        for name, documentation, label, counter in self._counters:
            family = CounterMetricFamily(name, documentation, labels=[label])
            for value, count in sorted(counter.counts.items()):
                family.add_metric([str(value)], count, created=counter.created[value])
            yield family
        for name, documentation, read, created in self._totals:
            family = CounterMetricFamily(name, documentation, labels=[])
            family.add_metric([], read(), created=created)
            yield family
        for name, documentation, label, histograms in self._histograms:
            series = histograms()
            labels = [label] if label else []
            hist = HistogramMetricFamily(name, documentation, labels=labels)
            for value, histogram in sorted(series.items()):
                hist.add_metric([value] if label else [], histogram.cumulative(), histogram.total)
            yield hist
