"""deploy/grafana-dashboard.json: JSON that Grafana 10 imports, with a Prometheus data
source variable, whose every query names only series jobstream exports."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from django.test import Client, override_settings

from tests.scrapes import Scrape

DASHBOARD = Path(__file__).resolve().parent.parent / "deploy" / "grafana-dashboard.json"
TOKEN = "dashboard-test-token-0123456789"
WORKER_SERIES = {"jobstream_frames_published_total", "jobstream_publisher_backlog"}  # tests/e2e/test_worker_metrics.py
PANELS = (
    "Jobs by state",
    "Throughput",
    "Queue wait",
    "Run time",
    "Sockets",
    "Frames delivered",
    "Delivery lag",
    "Frames published",
    "Publisher backlog",
)


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def test_the_dashboard_asks_for_a_prometheus_data_source_and_every_panel_uses_it() -> None:
    board = dashboard()
    (variable,) = [item for item in board["templating"]["list"] if item["type"] == "datasource"]
    assert variable["query"] == "prometheus"
    source = {"type": "prometheus", "uid": f"${{{variable['name']}}}"}
    for panel in board["panels"]:
        assert panel["datasource"] == source, panel["title"]
        assert panel["targets"] and all(target["datasource"] == source for target in panel["targets"])
    assert len({panel["id"] for panel in board["panels"]}) == len(board["panels"])
    assert board["uid"] and board["schemaVersion"] >= 36  # Grafana 9 and 10 read it as is


def test_the_dashboard_has_the_panels_operators_need() -> None:
    titles = [panel["title"] for panel in dashboard()["panels"]]
    for wanted in PANELS:
        assert any(title.startswith(wanted) for title in titles), wanted


@pytest.mark.django_db
@override_settings(METRICS_TOKEN=TOKEN)
def test_every_series_a_query_names_is_one_jobstream_exports(client: Client) -> None:
    found = Scrape.parse(client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).content.decode())
    exported = {name for name, _ in found.samples} | WORKER_SERIES
    for panel in dashboard()["panels"]:
        for target in panel["targets"]:
            for series in re.findall(r"\bjobstream_\w+", target["expr"]):
                assert series in exported, (panel["title"], series)
