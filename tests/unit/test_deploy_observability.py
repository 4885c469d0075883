"""The alert rules and the Grafana dashboard in deploy/ query only what the services export.

What is exported is read from the code, never listed here: the collectors that
tether.observability.metrics registers in prometheus_client's default registry (their names,
types and label names), and the gauges its Redis collector yields against the
test Redis. Every expression is parsed as PromQL (promql-parser); each metric it
selects must be one of those series, and every label it filters on or groups
by must be one of that metric's labels.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml
from prometheus_client import REGISTRY

from tether.observability import metrics
from tether.runtime import Runtime

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "tether.json"

# The series each metric type exposes, by suffix of its family name.
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
# Grafana's interval variables are not PromQL; any duration stands in for them when parsing.
GRAFANA_DURATIONS = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "6h"}
DURATION = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")
LABEL_VALUES = re.compile(r"^label_values\((?P<selector>[^,]+),\s*(?P<label>\w+)\)$")
SEVERITIES = {"info", "warning", "critical"}

Exported = dict[str, frozenset[str]]


# what the services export ---------------------------------------------------------


def _families(collector: Any) -> Iterator[tuple[str, str, frozenset[str]]]:
    """(family name, type, label names) of a registered collector."""
    labels = frozenset(getattr(collector, "_labelnames", ()))
    for family in collector.describe():
        yield family.name, family.type, labels


def exported_series(runtime: Runtime) -> Exported:
    """Series name -> label names, from the registry and the Redis collector."""
    series: Exported = {}

    def add(name: str, kind: str, labels: frozenset[str]) -> None:
        for suffix in SUFFIXES[kind]:
            series[name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())

    for collector, names in list(REGISTRY._collector_to_names.items()):
        if any(name.startswith("tether_") for name in names):
            for name, kind, labels in _families(collector):
                add(name, kind, labels)
    for family in metrics.RedisStateCollector(runtime.store.client).collect():
        # Its declared labels too: a family with no samples yet (no feedback) still has them.
        declared = getattr(family, "_labelnames", ())
        labels = frozenset(label for sample in family.samples for label in sample.labels)
        labels |= frozenset(declared)
        add(family.name, family.type, labels)
    return series


@pytest.fixture
def exported(runtime: Runtime) -> Exported:
    series = exported_series(runtime)
    # The reading itself is checked, so an empty or half-read registry cannot pass everything.
    assert series["tether_runs_finished_total"] == {"agent", "version", "status"}
    assert series["tether_run_steps_bucket"] == {"agent", "version", "status", "le"}
    assert series["tether_queue_depth"] == {"queue"}
    assert series["tether_feedback_total"] == {"agent", "version", "score"}
    assert series["tether_escalation_oldest_pending_age_seconds"] == frozenset()
    assert "tether_run_steps" not in series and "tether_queue_depth_total" not in series
    return series


# what a query selects -------------------------------------------------------------


def parse(expr: str) -> promql_parser.Expr:
    for variable, duration in GRAFANA_DURATIONS.items():
        expr = expr.replace(variable, duration)
    return promql_parser.parse(expr)


def selectors(node: promql_parser.Expr) -> list[promql_parser.VectorSelector]:
    found: list[promql_parser.VectorSelector] = []

    def visit(n: Any) -> None:
        if isinstance(n, promql_parser.VectorSelector):
            found.append(n)

    promql_parser.walk(node, visit)
    return found


def metric_name(selector: promql_parser.VectorSelector) -> str:
    if selector.name:
        return str(selector.name)
    named = [m.value for m in selector.matchers.matchers if m.name == "__name__"]
    assert len(named) == 1, f"selector without one metric name: {selector}"
    return str(named[0])


def query_problems(expr: str, exported: Exported) -> list[str]:
    """Why ``expr`` would not query what the services export; empty when it does."""
    tree = parse(expr)
    problems = []
    names = set()
    for selector in selectors(tree):
        name = metric_name(selector)
        names.add(name)
        if name not in exported:
            problems.append(f"{name} is not exported")
            continue
        for matcher in selector.matchers.matchers:
            if matcher.name != "__name__" and matcher.name not in exported[name]:
                problems.append(f"{name} has no label {matcher.name!r}")

    def check_grouping(n: Any) -> None:
        if isinstance(n, promql_parser.AggregateExpr) and n.modifier is not None:
            for selector in selectors(n.expr):
                name = metric_name(selector)
                missing = set(n.modifier.labels) - exported.get(name, frozenset(n.modifier.labels))
                if missing:
                    problems.append(f"{name} has no label(s) {sorted(missing)} to group by")

    promql_parser.walk(tree, check_grouping)
    # A second, independent reading: every tether_ identifier in the text was seen as a metric.
    assert set(re.findall(r"\btether_\w+", expr)) == names, expr
    return problems


def base_name(series: str) -> str:
    return re.sub(r"_(bucket|sum|count|total)$", "", series)


# the rule file ----------------------------------------------------------------------


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    assert set(doc) == {"groups"}
    found = []
    for group in doc["groups"]:
        assert group["name"] and group["rules"], group
        found += group["rules"]
    return found


def test_every_alert_rule_is_complete() -> None:
    alerts = rules()
    names = [rule["alert"] for rule in alerts]
    assert len(names) == len(set(names)) >= 8
    for rule in alerts:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations", "keep_firing_for"}
        assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", rule["alert"]), rule["alert"]
        assert DURATION.match(rule["for"]), f"{rule['alert']}: for {rule['for']!r}"
        assert rule["labels"]["severity"] in SEVERITIES, rule["alert"]
        assert rule["annotations"]["summary"].strip(), rule["alert"]
        assert len(rule["annotations"]["description"]) > 80, rule["alert"]
        parse(rule["expr"])


def test_every_alert_queries_exported_metrics_and_labels(exported: Exported) -> None:
    problems = {rule["alert"]: query_problems(rule["expr"], exported) for rule in rules()}
    assert {alert: found for alert, found in problems.items() if found} == {}


def test_the_alerts_cover_what_operators_must_hear_about() -> None:
    by_metric: dict[str, set[str]] = {}
    for rule in rules():
        for selector in selectors(parse(rule["expr"])):
            by_metric.setdefault(base_name(metric_name(selector)), set()).add(rule["alert"])
    for metric in (
        "tether_runs_finished",  # success rate
        "tether_run_steps",  # steps per run drifting
        "tether_model_cost_usd",  # cost per run drifting
        "tether_escalation_oldest_pending_age_seconds",
        "tether_queue_depth",
        "tether_queue_oldest_message_age_seconds",
        "tether_dead_letters",
    ):
        assert metric in by_metric, metric
    drifting = [r for r in rules() if "Drifting" in r["alert"]]
    assert len(drifting) == 2 and all("offset 1d" in r["expr"] for r in drifting)


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_promtool_accepts_the_rules() -> None:
    done = subprocess.run(
        ["promtool", "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


# the dashboard -----------------------------------------------------------------------


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels() -> list[dict[str, Any]]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def targets() -> list[tuple[str, str]]:
    """(panel title, expression) of every query."""
    return [(p["title"], t["expr"]) for p in panels() for t in p["targets"]]


def test_the_dashboard_is_templated_on_datasource_agent_and_version(exported: Exported) -> None:
    board = dashboard()
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert set(variables) == {"datasource", "agent", "version"}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("agent", "version"):
        query = variables[name]["query"]["query"]
        found = LABEL_VALUES.match(query)
        assert found and found["label"] == name, query
        assert query_problems(found["selector"], exported) == []
        assert name in exported[metric_name(selectors(parse(found["selector"]))[0])]

    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels():
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]


def test_every_panel_queries_exported_metrics_and_labels(exported: Exported) -> None:
    problems = {
        f"{title}: {expr}": found
        for title, expr in targets()
        if (found := query_problems(expr, exported))
    }
    assert problems == {}


def test_the_dashboard_shows_every_figure_the_issue_asks_for() -> None:
    shown = {
        base_name(metric_name(selector))
        for _, expr in targets()
        for selector in selectors(parse(expr))
    }
    assert shown >= {
        "tether_runs_started",
        "tether_runs_finished",
        "tether_run_steps",
        "tether_run_tool_calls",
        "tether_run_duration_seconds",
        "tether_model_tokens",
        "tether_model_cost_usd",
        "tether_model_latency_seconds",
        "tether_tool_latency_seconds",
        "tether_queue_wait_seconds",
        "tether_errors",
        "tether_budget_exhausted",
        "tether_escalations_opened",
        "tether_escalations_pending",
        "tether_escalation_oldest_pending_age_seconds",
        "tether_queue_depth",
        "tether_queue_oldest_message_age_seconds",
        "tether_dead_letters",
    }
    quantiles = {expr.split(",")[0] for _, expr in targets() if "histogram_quantile" in expr}
    assert quantiles == {f"histogram_quantile({q}" for q in ("0.5", "0.95", "0.99")}


def test_a_query_on_something_not_exported_is_caught(exported: Exported) -> None:
    # The checks themselves: each kind of mistake is reported.
    assert query_problems(
        'sum by (queue) (rate(tether_runs_finished_total{x="1"}[5m]))', exported
    ) == [
        "tether_runs_finished_total has no label 'x'",
        "tether_runs_finished_total has no label(s) ['queue'] to group by",
    ]
    assert query_problems("rate(tether_runs_finished[5m])", exported) == [
        "tether_runs_finished is not exported"
    ]
    assert (
        query_problems(
            "histogram_quantile(0.9, sum by (le) (rate(tether_queue_wait_seconds_bucket[5m])))",
            exported,
        )
        == []
    )
    assert query_problems("sum by (le) (tether_queue_wait_seconds_count)", exported) == [
        "tether_queue_wait_seconds_count has no label(s) ['le'] to group by"
    ]
