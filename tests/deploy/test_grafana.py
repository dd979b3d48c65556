"""deploy/grafana/tidings-dashboard.json: importable, and every metric it draws exists."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx

from support.service import running_service

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "tidings-dashboard.json"
METRIC = re.compile(r"\b((?:tidings|process)_[a-z_]+)")


def _dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def _expressions(dashboard: dict[str, Any]) -> list[str]:
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def test_the_dashboard_is_importable_with_any_prometheus_data_source() -> None:
    dashboard = _dashboard()
    assert [source["name"] for source in dashboard["__inputs"]] == ["DS_PROMETHEUS"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        assert panel["targets"], panel["title"]
        assert set(panel["gridPos"]) == {"x", "y", "w", "h"}
    # Every query follows the job and instance pickers.
    for expression in _expressions(dashboard):
        for name in METRIC.findall(expression):
            assert f'{name}{{job=~"$job", instance=~"$instance"' in expression, expression


async def test_every_metric_the_dashboard_draws_is_exposed(tmp_path: Path) -> None:
    async with running_service(tmp_path) as service:
        agent = await service.agent()
        registration = await agent.register()
        async with httpx.AsyncClient() as client:
            pushed = await client.post(registration.endpoint, headers={"TTL": "60"})
            assert pushed.status_code == 201
            await agent.next_notification()
            exposition = (await client.get(f"{service.url}/metrics")).text
        await agent.close()
    exposed = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            exposed.add(line.split()[2])
        elif line and not line.startswith("#"):
            exposed.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    drawn = {name for expr in _expressions(_dashboard()) for name in METRIC.findall(expr)}
    assert drawn, "the dashboard draws nothing"
    assert sorted(drawn - exposed) == []
