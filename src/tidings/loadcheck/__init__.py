"""`tidings bench`: a short throughput and latency check against a running service.

Operators point it at their own deployment: it connects user agents over the Firefox
WebSocket protocol, subscribes them with a fresh VAPID key, then (1) pushes as fast as
it can for a while and counts accepted and delivered messages, and (2) pushes at fixed
rates and measures the time from the POST to the user agent's receipt.
"""

from tidings.loadcheck.run import BenchReport, RateResult, run_bench

__all__ = ["BenchReport", "RateResult", "run_bench"]
