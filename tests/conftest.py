"""Shared test set-up: support modules under tests/support are pytest plugins.

Hypothesis runs without its per-example deadline and its too-slow health check: both
measure time, and on a shared, loaded machine a slow example is not a wrong one (a
property test failed so once, passing again with the same seed). Timing is bench/'s.
"""

from hypothesis import HealthCheck, settings

settings.register_profile("tidings", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("tidings")

pytest_plugins: list[str] = ["support.firefox", "support.service", "support.node"]
