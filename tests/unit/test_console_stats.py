"""The console's stats page: rows per agent and version from the rollups, drift flags, and
charts over time drawn as inline SVG."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

from fastapi.testclient import TestClient

from tests.unit.run_records import make_run
from tether import client
from tether.api import create_app
from tether.config import Settings
from tether.console import stats_view
from tether.escalation import operators
from tether.runtime import Runtime
from tether.store.state import RunStatus


def _signed_in(rt: Runtime, token: str) -> TestClient:
    browser = TestClient(create_app(rt), follow_redirects=False)
    form = re.search(r'name="csrf" value="([^"]+)"', browser.get("/console/sign-in").text)
    assert form is not None
    signed = browser.post(
        "/console/sign-in", data={"csrf": form[1], "token": token, "next": "/console/"}
    )
    assert signed.status_code == 303
    return browser


def test_the_stats_page_shows_versions_drift_and_charts(redis_url: str, tmp_path: Path) -> None:
    token, key = operators.new_token()
    (tmp_path / "operators.json").write_text(
        json.dumps({"operators": [{"name": "vic", "key_sha256": key, "role": "viewer"}]})
    )
    rt = Runtime(Settings(redis_url=redis_url, operators_file=str(tmp_path / "operators.json")))
    now = datetime.now(UTC)
    for i in range(4):  # the hour before: two steps a run
        make_run(rt.store, f"b{i}", created=now - timedelta(minutes=90), steps=2, latency_s=3)
    for i in range(3):  # this hour: v1 as before, v2 takes four steps and fails once
        make_run(rt.store, f"v1-{i}", created=now - timedelta(minutes=40), steps=2, latency_s=2)
        make_run(
            rt.store,
            f"v2-{i}",
            created=now - timedelta(minutes=20),
            steps=4,
            cost_usd=0.01,
            latency_s=8,
            version="v2",
            status=RunStatus.failed if i == 0 else RunStatus.succeeded,
        )
    client.feedback(make_run(rt.store, "liked", created=now, steps=2), 1, by="ana", runtime=rt)

    with _signed_in(rt, token) as browser:
        page = browser.get("/console/stats", params={"since": "1h"})

    assert page.status_code == 200, page.text
    html = page.text
    rows = re.findall(r'<tr data-agent="([^"]+)"(?: data-version="([^"]+)")?>', html)
    assert rows == [("all agents", ""), ("calc", ""), ("calc", "v1"), ("calc", "v2")]
    calc = html.split('<tr data-agent="calc">')[1].split("</tr>")[0]
    assert ">7 <small>(0 in flight)" in calc and "steps" in calc.split("drift")[-1]
    assert "<small>6/7</small>" in calc  # v2 failed once
    charts = html.split('<section class="charts" data-agent="calc">')[1].split("</section>")[0]
    assert charts.count('<svg class="chart"') == 5
    assert "calc v1" in charts and "calc v2" in charts
    assert "<polyline" in charts or "<circle" in charts
    assert 'aria-label="feedback, mean score"' in charts


def test_chart_steps_are_about_24_whole_units() -> None:
    assert stats_view.step_for(timedelta(hours=1)) == 120
    assert stats_view.step_for(timedelta(hours=24)) == 3600
    assert stats_view.step_for(timedelta(days=7)) == 7 * 3600
