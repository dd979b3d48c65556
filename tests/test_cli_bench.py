"""`tidings bench` against a real service: every push accepted and delivered, latencies measured."""

from __future__ import annotations

import asyncio
from pathlib import Path

from click.testing import CliRunner

from support.service import ServiceProcess
from tidings.cli import main
from tidings.loadcheck import run_bench


def test_bench_reports_throughput_and_latency(tmp_path: Path) -> None:
    # The per-subscription limit (600/min) would refuse most of a burst to 5 subscriptions.
    (tmp_path / "tidings.toml").write_text('rate_push_subscription = "off"\n')
    args = ["--log-level", "warning", "--config", str(tmp_path / "tidings.toml")]
    service = ServiceProcess(tmp_path / "service", args=args)
    service.start()
    try:
        report = asyncio.run(
            run_bench(service.url, agents=5, duration=0.5, rates=(50.0,), concurrency=4)
        )
        assert report.accepted > 0 and report.rejected == 0
        assert report.delivered == report.accepted
        (rate,) = report.rates
        assert rate.sent == 25 and rate.delivered == 25
        assert len(rate.latencies_ms) == 25 and 0 < rate.quantile(0.5) < 5000

        result = CliRunner().invoke(
            main,
            ["bench", "--service", service.url, "--agents", "3", "--duration", "0.5",
             "--rate", "20"],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        assert "accepted/s" in result.output and "p99 ms" in result.output
    finally:
        service.stop()
